"""The default recipe against a validation-selected grid (issue 25), on corpora built here.

    .venv/bin/python bench/bench_recipe.py [--workdir DIR] [--only REGIME[,REGIME]] [--runs TEXT,...]

--runs starts only the settings whose name contains one of the texts (e.g. "wsd,lr 0.0006");
the others are reported if an earlier launch finished them, and left out if not. That is how
the runs are ordered on a machine that cannot hold them all in one sitting.

Regimes (nothing downloaded; none of this text is tunewell-base's pretraining text):
  short   1,000 README paragraphs of the installed Python packages (12+ words each, a seeded
          sample of bench_false_alarms.readme_corpus), ~24 steps of 4,096 tokens an epoch:
          the derived plan is 10 epochs, as on the issue's short quotes.
  long    whole package READMEs of 200 to 2,500 words (bench_levers.long_readmes, without the
          17 longest, which alone hold half the words), ~71 steps an epoch.
Both fine-tune tunewell-base at block 256.

Grid points are the issue's recipe: 5% warm-up, linear decay to 0, early stopping after 3
evaluations without a new validation low, evaluations every half epoch; the learning rate
and the planned epochs vary. "Grid's best" is the grid point with the lowest validation
loss (what a careful engineer would pick); its test perplexity is the reference. A grid
of 6 rates x 3 epoch counts on the long regime is ~60M training tokens (~3.5 hours per
regime on 2 cores), so the grid run here is the part that fits: see bench/recipe.md.

Settings besides the grid, each with everything else derived: the default before issue 25
(`linear`, derived epochs, the rule's rate), `wsd` at the rule's rate, that with
optim.weight_averaging=ema, and the default now (`wsd` with a range test's rate). A third
regime, sample (the main job, configs/local.py), runs these settings without a grid.
A finished run (its report.json) is reused by a later launch. Writes bench/recipe.json and
bench/recipe.md.
"""

import argparse
import json
import os
import random
import subprocess
import sys
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, BENCH)
sys.path.insert(0, ROOT)

from bench_levers import BASE, long_readmes, write_jsonl  # noqa: E402

ON_BASE = {"model.name_or_path": BASE, "data.block_size": 256, "eval.review_examples": 0, "eval.num_prompts": 1}
# The grid, per regime: {learning rate} x {planned epochs}; the points run here are
# listed in GRID_RUN (the rest are ~3.5 hours a regime).
RATES = (5e-5, 1e-4, 2e-4, 3e-4, 6e-4, 1e-3)
EPOCHS = (3, 10, 20)
GRID_RUN = {
    "short": [(1e-4, 20), (2e-4, 20), (3e-4, 20), (6e-4, 10), (6e-4, 20), (1e-3, 10)],
    "long": [(3e-4, 10), (6e-4, 10), (2e-4, 20), (3e-4, 20)],
}
# name -> (run folder, overrides). The folders keep the names of the launches that ran them.
# "the rule's rate" is passed as the number the rule gives (optim.learning_rate=None is the
# range test under wsd since issue 25): RULE is replaced per regime.
RULE = "the rule"
DEFAULTS = {
    "before issue 25 (linear, derived epochs, the rule's rate)": (
        "default-before-linear-derived-epochs", {"optim.schedule": "linear"}),
    "wsd at the rule's rate": ("default-wsd", {"optim.schedule": "wsd", "optim.learning_rate": RULE}),
    "wsd at the rule's rate + weight average (ema)": (
        "wsd-+-weight-average-ema", {"optim.schedule": "wsd", "optim.learning_rate": RULE,
                                     "optim.weight_averaging": "ema"}),
    "default (wsd, a range test's rate)": ("wsd-+-learning_rate=auto", {}),
}
# The main job (configs/local.py on data/sample): no grid, only the defaults, so that a
# default kept for the README regimes is also checked where a newcomer meets it.
SAMPLE = {"config": "configs/local.py", "overrides": {"eval.review_examples": 0}}


def corpora(workdir: str) -> dict:
    from bench_false_alarms import readme_corpus

    folder = os.path.join(workdir, "corpora")
    short, long = os.path.join(folder, "short-1000.jsonl"), os.path.join(folder, "long-2500.jsonl")
    if not os.path.exists(short):
        write_jsonl(short, random.Random(0).sample(sorted(set(readme_corpus())), 1000))
    if not os.path.exists(long):
        write_jsonl(long, [d for d in long_readmes() if len(d.split()) <= 2500])
    return {"short": short, "long": long}


def planned(overrides: dict, config_file: str = "configs/default.py"):
    """The trainer's own plan for these settings, from its own data preparation: the steps
    per epoch (the grid's half-epoch evaluation interval needs them before its first run)
    and the rule's learning rate (the plan's rate before any range test)."""
    import importlib

    from trainer import settings
    from trainer.run import inputs

    config = importlib.import_module(config_file.removesuffix(".py").replace("/", ".")).get_config()
    settings.override(config, {**overrides, "output_dir": "/tmp/unused"})
    return inputs.prepare(settings.resolve(config), log=lambda message: None).plan


def grid_folder(lr: float, epochs: int) -> str:
    return f"grid-lr-{lr:g}-{epochs}-epochs"


def run(workdir: str, regime: str, name: str, folder: str, overrides: dict, start: bool = True,
        config: str = "configs/default.py") -> dict | None:
    output = os.path.join(workdir, "runs", regime, folder)
    report_path = os.path.join(output, "report.json")
    if not os.path.exists(report_path):
        if not start:
            return None
        flags = [f"--config.{k}={v}" for k, v in {**overrides, "output_dir": output}.items()]
        started = time.time()
        subprocess.run([sys.executable, "-m", "trainer.task", f"--config={config}", *flags], cwd=ROOT,
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print(f"{regime} / {name}: {time.time() - started:.0f} s", flush=True)
    report = json.load(open(report_path))
    plan = json.load(open(os.path.join(output, "config.json")))["plan"]
    test = report.get("test") or {}
    return {
        "regime": regime, "setting": name, "overrides": overrides, "output": output,
        "learning_rate": report["learning_rate"], "planned_epochs": plan["epochs"],
        "steps": report["steps"], "planned_steps": report["planned_steps"], "train_tokens": report["train_tokens"],
        "best_step": report.get("best_step"), "best_epoch": round(report.get("best_step", 0) / plan["steps_per_epoch"], 1),
        "stopped_early": report["stopped_early"], "validation_loss": report["best_val_loss"],
        "validation_perplexity": report["final_val_perplexity"],
        "test_perplexity": test.get("perplexity"), "test_perplexity_interval": test.get("perplexity_interval"),
        "diagnosis": report["diagnosis"][0]["label"], "train_seconds": round(report["train_seconds"], 1),
        # learning_rate=auto's range test: its steps are training tokens too (counted in
        # the ratio to the grid, since the grid's points pay nothing of the kind).
        "range_test_tokens": (report.get("learning_rate_auto") or {}).get("sweep_steps", 0) * plan["tokens_per_step"],
    }


def grid_overrides(lr: float, epochs: int, per_epoch: int) -> dict:
    return {"optim.learning_rate": lr, "train.epochs": epochs, "optim.schedule": "linear",
            "optim.warmup_ratio": 0.05, "optim.final_lr_ratio": 0.0, "train.early_stopping_patience": 3,
            "train.eval_every_steps": max(1, per_epoch // 2)}


def summarise(results: list[dict]) -> None:
    """Each run's test perplexity and training tokens as a share of the grid's best."""
    for regime in {r["regime"] for r in results}:
        grid = [r for r in results if r["regime"] == regime and r["setting"].startswith("grid")]
        if not grid:
            continue
        best = min(grid, key=lambda r: r["validation_loss"])
        best["grid_best"] = True
        for r in results:
            if r["regime"] == regime:
                r["test_ratio_to_grid_best"] = r["test_perplexity"] / best["test_perplexity"]
                r["tokens_ratio_to_grid_best"] = (r["train_tokens"] + r["range_test_tokens"]) / best["train_tokens"]


def markdown(results: list[dict]) -> str:
    lines = ["# The default recipe against the grid", "",
             "`bench/bench_recipe.py`. Test = the 5% of documents nothing was selected on (each scored alone); "
             "the grid's best is the grid point with the lowest validation loss. Ratios are to the grid's best; "
             "a range test's steps count as training tokens in the tokens ratio.", "",
             "| regime | setting | lr | planned epochs | steps | best at epoch | training tokens | validation ppl | "
             "test ppl (95% interval) | test ÷ grid's best | tokens ÷ grid's best | diagnosis |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        interval = r["test_perplexity_interval"]
        test = f"{r['test_perplexity']:.2f} ({interval[0]:.1f}-{interval[1]:.1f})" if interval else "-"
        ratio = f"{r['test_ratio_to_grid_best']:.3f}" if "test_ratio_to_grid_best" in r else "-"
        tokens = f"{r['tokens_ratio_to_grid_best']:.0%}" if "tokens_ratio_to_grid_best" in r else "-"
        name = r["setting"] + (" **(grid's best)**" if r.get("grid_best") else "")
        lines.append(f"| {r['regime']} | {name} | {r['learning_rate']:.3g} | {r['planned_epochs']} | "
                     f"{r['steps']}/{r['planned_steps']} | {r['best_epoch']} | {r['train_tokens']:,} | "
                     f"{r['validation_perplexity']:.2f} | {test} | {ratio} | {tokens} | {r['diagnosis']} |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default=os.path.join(ROOT, "runs", "bench-recipe"))
    parser.add_argument("--only", default="", help="comma-separated regimes (default: all)")
    parser.add_argument("--skip-defaults", action="store_true", help="run only the grid points")
    parser.add_argument("--skip-grid", action="store_true", help="run only the defaults")
    parser.add_argument("--runs", default="", help="comma-separated texts: start only settings whose name has one")
    parser.add_argument("--out-dir", default=BENCH)
    args = parser.parse_args()
    wanted = [r for r in args.only.split(",") if r]
    chosen = [t for t in args.runs.split(",") if t]

    def start(name: str) -> bool:
        return not chosen or any(text in name for text in chosen)

    results = []
    for regime, corpus in corpora(args.workdir).items():
        if wanted and regime not in wanted:
            continue
        common = {**ON_BASE, "data.train_files": corpus}
        plan = planned(common)
        if not args.skip_defaults:
            for name, (folder, extra) in DEFAULTS.items():
                extra = {k: plan.learning_rate if v == RULE else v for k, v in extra.items()}
                results.append(run(args.workdir, regime, name, folder, {**common, **extra}, start(name)))
        if not args.skip_grid:
            for lr, epochs in GRID_RUN[regime]:
                name = f"grid (lr {lr:g}, {epochs} epochs)"
                results.append(run(args.workdir, regime, name, grid_folder(lr, epochs),
                                   {**common, **grid_overrides(lr, epochs, plan.steps_per_epoch)}, start(name)))
    if not wanted or "sample" in wanted:
        plan = planned(SAMPLE["overrides"], SAMPLE["config"])
        for name, (folder, extra) in DEFAULTS.items():
            extra = {k: plan.learning_rate if v == RULE else v for k, v in extra.items()}
            results.append(run(args.workdir, "sample", name, folder, {**SAMPLE["overrides"], **extra}, start(name),
                               SAMPLE["config"]))
    results = [r for r in results if r is not None]
    summarise(results)
    with open(os.path.join(args.out_dir, "recipe.json"), "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(args.out_dir, "recipe.md"), "w") as f:
        f.write(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
