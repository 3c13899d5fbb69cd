"""The recipe's levers (issue 25), each against the default, on corpora built here.

    .venv/bin/python bench/bench_levers.py [--workdir DIR] [--only REGIME[,REGIME]]

Regimes (nothing downloaded; the fine-tuning text is not tunewell-base's pretraining text):
  short    README paragraphs of the installed Python packages (bench_false_alarms.readme_corpus:
           paragraphs of 12+ words), tunewell-base, block 256
  long     whole package READMEs of 200+ words, tunewell-base, block 256
  sample   the main job (configs/local.py): tunewell-base on data/sample
  task     the task sample (configs/task.py: a tiny GPT-2 from scratch on data/task), where
           packing is measured against the default padded rows
Levers: data.packed_attention=document (packed documents attend only to themselves), and
optim.learning_rate=auto (a range test picks the peak rate) against the derived rule.
Every run uses the derived defaults otherwise; figures are validation (what selected the
export) and test (data.test_fraction's 5%, nothing selected on it) of the exported model,
with the test's 95% interval, and training tokens. A finished run (its report.json) is
reused by a later launch. Writes bench/levers.json and bench/levers.md.
"""

import argparse
import json
import os
import subprocess
import sys
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, BENCH)
sys.path.insert(0, ROOT)

BASE = "data/pretrained/tunewell-base"


def long_readmes(min_words: int = 200) -> list[str]:
    from importlib import metadata

    docs = []
    for dist in metadata.distributions():
        body = dist.metadata.get_payload() if hasattr(dist.metadata, "get_payload") else ""
        body = (body or dist.metadata.get("Description", "") or "").strip()
        if len(body.split()) >= min_words:
            docs.append(body)
    return sorted(set(docs))  # one copy of a README installed twice


def write_jsonl(path: str, docs: list[str]) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        for doc in docs:
            f.write(json.dumps({"text": doc}) + "\n")
    return path


def regimes(workdir: str) -> dict:
    """name -> (config file, overrides common to its runs, {setting: extra overrides})."""
    from bench_false_alarms import readme_corpus

    corpora = os.path.join(workdir, "corpora")
    short = os.path.join(corpora, "short.jsonl")
    long = os.path.join(corpora, "long.jsonl")
    if not os.path.exists(short):
        write_jsonl(short, sorted(set(readme_corpus())))
    if not os.path.exists(long):
        write_jsonl(long, long_readmes())
    on_base = {"model.name_or_path": BASE, "data.block_size": 256, "eval.review_examples": 0, "eval.num_prompts": 1}
    levers = {"default": {}, "document_attention": {"data.packed_attention": "document"},
              "learning_rate_auto": {"optim.learning_rate": "auto"}}
    return {
        "short": ("configs/default.py", {**on_base, "data.train_files": short}, levers),
        "long": ("configs/default.py", {**on_base, "data.train_files": long}, levers),
        "sample": ("configs/local.py", {"eval.review_examples": 0}, levers),
        "task": ("configs/task.py", {"eval.review_examples": 0}, {
            "default (padded)": {},
            "packed": {"data.batching": "packed"},
            "packed, document_attention": {"data.batching": "packed", "data.packed_attention": "document"}}),
    }


def run(workdir: str, regime: str, setting: str, config: str, overrides: dict) -> dict:
    output = os.path.join(workdir, "runs", f"{regime}-{setting}".replace(" ", "").replace(",", "-")
                          .replace("(", "").replace(")", ""))
    report_path = os.path.join(output, "report.json")
    if not os.path.exists(report_path):
        flags = [f"--config.{k}={v}" for k, v in {**overrides, "output_dir": output}.items()]
        started = time.time()
        subprocess.run([sys.executable, "-m", "trainer.task", f"--config={config}", *flags], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(f"{regime} / {setting}: {time.time() - started:.0f} s", flush=True)
    report = json.load(open(report_path))
    test = report.get("test") or {}
    figures = {
        "regime": regime, "setting": setting, "overrides": overrides,
        "steps": report["steps"], "planned_steps": report["planned_steps"], "train_tokens": report["train_tokens"],
        "learning_rate": report["learning_rate"], "stopped_early": report["stopped_early"],
        "validation_perplexity": report["final_val_perplexity"], "base_validation_perplexity":
            report["initial_val_perplexity"],
        "test_perplexity": test.get("perplexity"), "test_perplexity_interval": test.get("perplexity_interval"),
        "test_documents": test.get("documents"), "diagnosis": report["diagnosis"][0]["label"],
        "train_seconds": round(report["train_seconds"], 1), "output": output,
    }
    if test.get("task_metrics"):
        figures["test_task"] = {k: test["task_metrics"][k] for k in ("exact_match", "token_f1")}
    if report.get("task_metrics"):
        figures["validation_task"] = report["task_metrics"]["exported"]
    return figures


def paired_test_differences(workdir: str, results: list[dict]) -> None:
    """Each lever against its regime's default on the same test documents: the mean test
    loss difference (default - lever, nats per token; > 0 = the lever is better) with a
    95% bootstrap interval over the test rows, both models scoring the same rows. The two
    models' own intervals overlap far more than their difference varies."""
    import ml_collections
    import numpy as np

    from trainer import model as model_lib
    from trainer import settings
    from trainer.evaluation import bootstrap
    from trainer.evaluation import loss as loss_lib
    from trainer.run import inputs

    by_regime = {}
    for r in results:
        by_regime.setdefault(r["regime"], []).append(r)
    for regime, runs in by_regime.items():
        stored = json.load(open(os.path.join(runs[0]["output"], "config.json")))
        config = ml_collections.ConfigDict(stored["requested"])
        prep = inputs.prepare(config, log=lambda message: None)
        if prep.test_blocks is None:
            continue
        alone = prep.tokenizer.eos_token_id if settings.batching_of(config.data) == "packed" else None
        sums = {}
        for r in runs:
            model, _ = model_lib.load_model(os.path.join(r["output"], "export"), log=lambda message: None)
            sums[r["setting"]], counts = loss_lib.row_sums(model, prep.test_blocks, 16, alone)
        default = runs[0]["setting"]
        scored = counts > 0
        for r in runs[1:]:
            gain = sums[default] - sums[r["setting"]]
            r["test_loss_gain_vs_default"] = float(gain[scored].sum() / counts[scored].sum())
            r["test_loss_gain_interval"] = bootstrap.ratio_interval(gain[scored], counts[scored], seed=0)
            r["test_perplexity_ratio_vs_default"] = float(np.exp(-r["test_loss_gain_vs_default"]))


def markdown(results: list[dict]) -> str:
    lines = ["# The recipe's levers against the default", "",
             "`bench/bench_levers.py`: derived defaults everywhere but the lever; the export chosen on validation; "
             "test = 5% of the documents nothing was chosen on, with its 95% bootstrap interval.", "",
             "Paired: the lever's test loss below the default's on the same rows (nats per token, 95% interval; "
             "> 0 favours the lever) and the test perplexity ratio lever / default.", "",
             "| regime | setting | steps | training tokens | validation ppl | test ppl (95% interval) | "
             "paired gain, nats (95%) | ppl ratio | test exact match / token F1 | diagnosis |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        interval = r["test_perplexity_interval"]
        test = (f"{r['test_perplexity']:.1f} ({interval[0]:.1f}-{interval[1]:.1f})" if interval else "-")
        task = r.get("test_task")
        task_text = (f"{task['exact_match']['value']:.1f} / {task['token_f1']['value']:.1f}" if task else "-")
        gain = r.get("test_loss_gain_interval")
        paired = (f"{r['test_loss_gain_vs_default']:+.4f} ({gain[0]:+.4f} to {gain[1]:+.4f})" if gain else "-")
        ratio = f"{r['test_perplexity_ratio_vs_default']:.3f}" if gain else "-"
        lines.append(f"| {r['regime']} | {r['setting']} | {r['steps']}/{r['planned_steps']} | {r['train_tokens']:,} | "
                     f"{r['validation_perplexity']:.2f} | {test} | {paired} | {ratio} | {task_text} | {r['diagnosis']} |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default=os.path.join(ROOT, "runs", "bench-levers"))
    parser.add_argument("--only", default="", help="comma-separated regimes (default: all)")
    parser.add_argument("--out-dir", default=BENCH)
    args = parser.parse_args()
    wanted = [r for r in args.only.split(",") if r]
    results = []
    for regime, (config, common, settings) in regimes(args.workdir).items():
        if wanted and regime not in wanted:
            continue
        for setting, extra in settings.items():
            results.append(run(args.workdir, regime, setting, config, {**common, **extra}))
    paired_test_differences(args.workdir, results)
    with open(os.path.join(args.out_dir, "levers.json"), "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(args.out_dir, "levers.md"), "w") as f:
        f.write(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
