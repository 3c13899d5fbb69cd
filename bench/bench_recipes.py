"""Three recipes measured on models and corpora built here (nothing is downloaded).

    .venv/bin/python bench/bench_recipes.py all              # the three: 47 runs, ~50 min on 2 shared cores
    .venv/bin/python bench/bench_recipes.py lr_auto          # ~36 min (6 of them the two pre-trainings)
    .venv/bin/python bench/bench_recipes.py curriculum       # ~8 min (+ 3 min pre-training the small model)
    .venv/bin/python bench/bench_recipes.py task_batching    # ~5 min (+ 3 min pre-training the small model)
    options: --workdir DIR (kept: models, runs and figures; a second launch reuses every finished
             run, so an interrupted bench resumes and the tables can be rewritten for free),
             --out-dir bench (where NAME.json and NAME.md go), --smoke (1-layer models, 10-step
             runs: checks the script end to end in ~4 min; write its output elsewhere)

The "pretrained" models: two GPT-2s built from scratch (model.bootstrap_tiny: a byte-level
BPE tokenizer trained on the corpus, random weights), then pre-trained on the docstrings of
Python's standard library (technical English, ~6,000 documents) at the derived from-scratch
rate; their export/ folder is loaded like any checkpoint:
  small:  2 layers x 128, 4 heads, 2,048-token vocabulary (~0.7M parameters)
  medium: 4 layers x 192, 4 heads, 2,048-token vocabulary (~2.1M parameters)
each pre-trained for 600 steps of 2,048 tokens (~3 epochs).
The fine-tuning corpora come from real text on this machine (bench_false_alarms.py's builders):
Python functions of the standard library (code) and the package READMEs' paragraphs (markdown
prose), plus data/task (prompt/completion). Every run: runtime.precision=float32 (the same figures
on any CPU), block 128 x batch 16 = 2,048 tokens/step (64 tokens for the task data), the
trainer's default validation split (10% of the documents, seed 42), early stopping as default,
no doctor, samples or review sheet (they change no weight).

1. lr_auto -> lr_auto.json, lr_auto.md. For each model x corpus: optim.learning_rate unset (the
   derived rule), auto, and a grid of the derived rate x 1/10, 1/3, 3, 10, 30 (x1 is the derived
   run; the medium model: x 3, 10), all capped at train.max_steps=200. For the small model,
   derived and auto again with seed 43 on the SAME validation documents (the seed-42 split
   written to files), so the seed changes only the shuffling and dropout: the gap between the
   two seeds is the run-to-run noise.
2. curriculum -> curriculum.json, curriculum.md. data.order short_first against shuffled, with
   packed and padded rows, on the code and README corpora (documents of 50 to 9,000
   characters), fine-tuning the small model, 200 steps, seed 42; and the READMEs, padded, over
   the derived plan's 3 epochs (only the first epoch is sorted).
3. task_batching -> task_batching.json, task_batching.md. data/task (configs/task.py's data,
   block 64; the best weights picked by token_f1) with data.batching packed and padded, for the
   small pretrained model and for configs/task.py's from-scratch tiny model. Same epochs and
   peak rate for both; padded also with a batch holding as many examples as 16 packed rows
   (16 x examples per packed row), so it takes as many steps as packed and only the isolation
   of the examples differs; and packed without early stopping when token_f1 stopped it early.
"""

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
sys.path.insert(0, ROOT)
sys.path.insert(0, BENCH)

import trainer  # noqa: E402,F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from bench_false_alarms import code_corpus, docstring_corpus, readme_corpus  # noqa: E402

MODELS = {  # name -> model.tiny fields
    "small": {"n_layer": 2, "n_embd": 128, "n_head": 4, "n_positions": 256, "vocab_size": 2048},
    "medium": {"n_layer": 4, "n_embd": 192, "n_head": 4, "n_positions": 256, "vocab_size": 2048},
}
FINE_TUNE_CORPORA = {"code": code_corpus, "readme": readme_corpus}
# 200 steps x 2,048 tokens = 410k tokens: ~0.7 epoch of the code corpus, ~1.7 of the READMEs.
# (Measured on 2 shared cores: ~0.15 s/step for small, ~0.3 s for medium.)
MAX_STEPS = 200
# Pre-training: 600 steps x 2,048 tokens = 1.2M tokens, ~3 epochs of the docstrings.
PRETRAIN_STEPS = 600
# x derived; x1 is the derived run itself. x30 brackets the optimum when x10 is still the best
# (it was for the small model on both corpora). The medium model's runs cost ~3x the small
# one's (~70 s against ~45 s on 2 shared cores), so it gets a shorter grid and no other seeds:
# that keeps the whole bench near 60 minutes.
GRID = {"small": (0.1, 1 / 3, 3.0, 10.0, 30.0), "medium": (3.0, 10.0)}
OTHER_SEEDS = {"small": (43, 44), "medium": ()}
SMOKE = False  # --smoke


# ----------------------------------------------------------------------------- machine and versions


def machine() -> dict:
    from importlib import metadata

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    versions = {}
    for package in ("tensorflow", "tf-keras", "transformers", "tokenizers", "numpy", "datasets"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    commit = git_commit()
    try:
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "trainer", "configs"], cwd=ROOT,
                                    capture_output=True, text=True).stdout.strip())
    except OSError:
        dirty = None
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "versions": versions,
            "git_commit_when_written": commit,  # each run's own commit is in its figures (git_commit)
            "trainer_or_configs_modified": dirty, "precision": "float32", "date": time.strftime("%Y-%m-%d %H:%M:%S")}


# ----------------------------------------------------------------------------- runs


class Bench:
    """Corpora, pretrained models and runs under one work folder; a finished run's
    figures are kept in RUN/bench.json and reused by a later launch."""

    def __init__(self, workdir: str):
        self.workdir = workdir
        self.cache_dir = os.path.join(workdir, "token-cache")
        os.makedirs(os.path.join(workdir, "runs"), exist_ok=True)

    def path(self, *parts) -> str:
        return os.path.join(self.workdir, *parts)

    # -------------------------------------------------------------- corpora

    def corpus(self, name: str) -> str:
        path = self.path("corpora", f"{name}.jsonl")
        if not os.path.exists(path):
            builders = {"docstrings": docstring_corpus, **FINE_TUNE_CORPORA}
            write_jsonl(path, builders[name]())
        return path

    def fixed_split(self, name: str, seed: int = 42) -> tuple[str, str]:
        """The trainer's own split of corpus `name` at `seed`, written to files: runs with
        another seed then score the same validation documents."""
        from configs import default
        from trainer import data as data_lib

        train_path = self.path("corpora", f"{name}-split{seed}-train.jsonl")
        val_path = self.path("corpora", f"{name}-split{seed}-validation.jsonl")
        if not os.path.exists(val_path):
            data = default.get_config().data
            data.train_files = self.corpus(name)
            documents = data_lib.load_documents(data, seed)
            write_jsonl(train_path, documents.train)
            write_jsonl(val_path, documents.validation)
        return train_path, val_path

    # -------------------------------------------------------------- models

    def pretrained(self, name: str) -> str:
        """export/ of model `name` pre-trained on the docstrings (built on first use)."""
        figures = self.run(f"pretrain-{name}", {
            "data.train_files": self.corpus("docstrings"),
            "model.name_or_path": self.path("models", f"tiny-{name}"), "model.bootstrap_tiny": True,
            "train.max_steps": PRETRAIN_STEPS,
            **{f"model.tiny.{k}": v for k, v in MODELS[name].items()}})
        return figures["export_dir"]

    # -------------------------------------------------------------- one run

    def config(self, output_dir: str, overrides: dict):
        from configs import default
        from trainer import settings

        config = default.get_config()
        config.output_dir = output_dir
        config.data.cache_dir = self.cache_dir
        config.data.block_size = 128
        config.data.batching = "packed"  # explicit: the default "auto" pads prompt/completion data
        config.runtime.precision = "float32"  # comparable across machines ("auto" is bfloat16 on some CPUs)
        config.preflight = "off"              # the doctor's audit changes no weight
        config.eval.num_prompts = 0           # nor do the samples and the review sheet
        config.eval.review_examples = 0
        settings.override(config, overrides)
        config.lock()
        return config

    def existing(self, label: str) -> dict | None:
        """A finished run's figures, or None (nothing is run)."""
        saved = self.path("runs", label, "bench.json")
        return json.load(open(saved)) if os.path.exists(saved) else None

    def run(self, label: str, overrides: dict) -> dict:
        from trainer.run import train

        output_dir = self.path("runs", label)
        saved = os.path.join(output_dir, "bench.json")
        if os.path.exists(saved):
            figures = json.load(open(saved))
            if figures["overrides"] == json.loads(json.dumps(overrides)):
                print(f"[{label}] reused: best val loss {figures['best_val_loss']:.4f}", flush=True)
                return figures
            raise SystemExit(f"{output_dir} holds a run with other overrides; use another --workdir.")
        trainer_overrides = {k: v for k, v in overrides.items() if k != CURRICULUM_KEY}
        config = self.config(output_dir, trainer_overrides)
        messages = []
        print(f"[{label}] {json.dumps(overrides)}", flush=True)
        started = time.time()
        with short_first(overrides.get(CURRICULUM_KEY) == "short_first", config.seed):
            report = train.train_and_evaluate(config, log=messages.append)
        figures = {"label": label, "overrides": overrides, **summarize(report), "wall_seconds": time.time() - started,
                   "git_commit": git_commit(),
                   "log": [m for m in messages if m.startswith(("Learning rate auto", "Plan:", "Derived", "Monitor",
                                                                "Early stop", "Diagnosis"))]}
        with open(saved, "w") as f:
            json.dump(figures, f, indent=1)
        auto = figures["lr_auto"]
        print(f"[{label}] best val loss {figures['best_val_loss']:.4f} at step {figures['best_step']} "
              f"(min {figures['min_val_loss']:.4f} at {figures['min_val_loss_step']}), lr {figures['learning_rate']:.3g}"
              + (f" (auto: {auto['reason']})" if auto else "") + f", {figures['steps']} steps, "
              f"{figures['wall_seconds']:.0f} s", flush=True)
        clear_tensorflow()
        return figures


# The curriculum measured here is not a trainer option: it never helped (README "Curriculum"),
# so it was taken out of the trainer. The bench applies it itself, under the key the runs were
# first made with (data.order=short_first), so their saved figures are reused.
CURRICULUM_KEY = "data.order"


def row_document_lengths(blocks, packed: bool):
    """Per row, the length (tokens) of the longest document that has tokens in it (padded: the
    document's own; packed free text: the documents meeting [row x block, (row+1) x block))."""
    import numpy as np

    lengths, block = blocks.document_lengths, blocks.input_ids.shape[1]
    if not packed:
        return np.minimum(lengths, block).astype(np.int64)
    if blocks.prompt_lengths is not None:  # whole examples per row: the row's filled length
        return blocks.attention_mask.sum(axis=1).astype(np.int64)
    ends = np.cumsum(lengths)
    starts = np.arange(blocks.rows) * block
    first = np.searchsorted(ends, starts, side="right")
    last = np.minimum(np.searchsorted(ends, starts + block - 1, side="right"), len(lengths) - 1)
    return np.array([lengths[f: l + 1].max() for f, l in zip(first, last)], np.int64)


def short_first_order(blocks, seed: int, packed: bool):
    """The first epoch's rows from short documents to long ones, equal lengths in a seeded order
    (a curriculum, Bengio et al. 2009)."""
    import numpy as np

    shuffled = np.random.default_rng([seed, 0]).permutation(blocks.rows)
    return shuffled[np.argsort(row_document_lengths(blocks, packed)[shuffled], kind="stable")]


@contextlib.contextmanager
def short_first(enabled: bool, seed: int):
    """Within a run: the first epoch in short_first_order of the training rows, later epochs as
    the trainer orders them (its data.epoch_order, replaced for the run)."""
    if not enabled:
        yield
        return
    from trainer import data as data_lib

    make_blocks, epoch_order = data_lib.make_blocks, data_lib.epoch_order
    curriculum = {}

    def capture(documents, tokenizer, data_config, desc, keep_tail=False, **packing):  # packing: seed=
        blocks = make_blocks(documents, tokenizer, data_config, desc, keep_tail, **packing)
        if not keep_tail and "order" not in curriculum:  # the training rows (validation keeps its tail)
            curriculum["order"] = short_first_order(blocks, seed, data_config.batching == "packed")
        return blocks

    def ordered(rows: int, seed_: int, epoch: int):
        return curriculum["order"] if epoch == 0 else epoch_order(rows, seed_, epoch)

    data_lib.make_blocks, data_lib.epoch_order = capture, ordered
    try:
        yield
    finally:
        data_lib.make_blocks, data_lib.epoch_order = make_blocks, epoch_order


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        return None


def summarize(report: dict) -> dict:
    """The figures a table needs from report.json."""
    validation = report["history"]["validation"]
    lowest = min(validation, key=lambda p: p["loss"])
    auto = report.get("learning_rate_auto")
    task = report.get("task_metrics") or {}
    return {
        "best_val_loss": report["best_val_loss"], "best_step": report["best_step"],
        "min_val_loss": lowest["loss"], "min_val_loss_step": lowest["step"],
        "initial_val_loss": report["initial_val_loss"], "last_val_loss": report["last_val_loss"],
        "learning_rate": report["learning_rate"], "steps": report["steps"], "planned_steps": report["planned_steps"],
        "epochs_completed": report["epochs_completed"], "stopped_early": report["stopped_early"],
        "train_tokens": report["train_tokens"], "train_seconds": report["train_seconds"],
        "tokens_per_sec": report["tokens_per_sec"], "parameters": report["model"]["parameters"],
        "precision": report["distribution"]["precision"],
        "lr_auto": auto, "task_metrics_exported": task.get("exported"), "task_metrics_initial": task.get("initial"),
        "task_metrics_best": task.get("best"),
        "data": {split: {k: v for k, v in stats.items() if isinstance(v, (int, float))}
                 for split, stats in report["data"].items()},
        "diagnosis": [d["label"] for d in report["diagnosis"]], "monitors": report["monitors"],
        "validation_curve": [[p["step"], round(p["loss"], 5)] for p in validation],
        "export_dir": report["export_dir"], "timing": report.get("timing"),
    }


def clear_tensorflow():
    """Many runs in one process: drop the finished run's graphs and models."""
    import gc

    import tensorflow as tf

    tf.keras.backend.clear_session()
    gc.collect()


def write_jsonl(path, docs, field="text"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        for d in docs:
            f.write(json.dumps({field: d}) + "\n")
    os.replace(path + ".tmp", path)


# ----------------------------------------------------------------------------- 1. learning_rate=auto


def derived_rate(model: str, tokens_per_step: int = 2048) -> float:
    from trainer.training import optimization

    return optimization.derived_learning_rate(MODELS[model]["n_embd"], tokens_per_step)


def measure_lr_auto(bench: Bench) -> dict:
    rows = []
    for model in MODELS:
        export = bench.pretrained(model)
        for corpus in FINE_TUNE_CORPORA:
            base = {"data.train_files": bench.corpus(corpus), "model.name_or_path": export,
                    "train.max_steps": MAX_STEPS}
            derived = derived_rate(model)
            runs = {"derived": bench.run(f"lr-{model}-{corpus}-derived", base),
                    "auto": bench.run(f"lr-{model}-{corpus}-auto", {**base, "optim.learning_rate": "auto"})}
            for factor in GRID[model]:
                runs[f"x{factor:.3g}"] = bench.run(f"lr-{model}-{corpus}-x{factor:.3g}",
                                                  {**base, "optim.learning_rate": derived * factor})
            for seed in OTHER_SEEDS[model]:
                train_path, val_path = bench.fixed_split(corpus)
                fixed = {**base, "data.train_files": train_path, "data.validation_files": val_path, "seed": seed}
                runs[f"derived-seed{seed}"] = bench.run(f"lr-{model}-{corpus}-derived-seed{seed}", fixed)
                runs[f"auto-seed{seed}"] = bench.run(f"lr-{model}-{corpus}-auto-seed{seed}",
                                                     {**fixed, "optim.learning_rate": "auto"})
            rows.append({"model": model, "corpus": corpus, "derived_learning_rate": derived, "runs": runs})
    return {"measurement": "optim.learning_rate=auto vs the derived rule vs a grid", "max_steps": MAX_STEPS,
            "grid_factors": {m: [1.0, *g] for m, g in GRID.items()}, "other_seeds": OTHER_SEEDS, "settings": rows}


def lr_auto_markdown(result: dict) -> str:
    lines = ["| model | corpus | derived lr | auto's pick (its suggestion) | best val loss: derived | auto | "
             "auto - derived | grid x1/10, x1/3, x1, x3, x10, x30 | grid's best | other seeds: derived; auto "
             "(auto's pick) | auto's cost |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    noise, auto_minus_derived = [], []
    for s in result["settings"]:
        r = s["runs"]
        grid = {f"x{f:.3g}": r.get(f"x{f:.3g}") for f in (0.1, 1 / 3, 3.0, 10.0, 30.0)}
        grid["x1"] = r["derived"]
        order = ("x0.1", "x0.333", "x1", "x3", "x10", "x30")
        best_name = min((g for g in order if grid[g]), key=lambda g: grid[g]["best_val_loss"])
        best = grid[best_name]
        auto = r["auto"]["lr_auto"]
        seeds = [k.removeprefix("derived-seed") for k in r if k.startswith("derived-seed")]
        derived_losses = [r["derived"]["best_val_loss"]] + [r[f"derived-seed{x}"]["best_val_loss"] for x in seeds]
        if len(derived_losses) > 1:
            noise.append(max(derived_losses) - min(derived_losses))
        auto_minus_derived += [r["auto"]["best_val_loss"] - r["derived"]["best_val_loss"]] + [
            r[f"auto-seed{x}"]["best_val_loss"] - r[f"derived-seed{x}"]["best_val_loss"] for x in seeds]
        other = "; ".join(f"seed {x}: {r[f'derived-seed{x}']['best_val_loss']:.4f}; "
                          f"{r[f'auto-seed{x}']['best_val_loss']:.4f} ({r[f'auto-seed{x}']['learning_rate']:.2g})"
                          for x in seeds) or "-"
        lines.append(
            f"| {s['model']} | {s['corpus']} | {s['derived_learning_rate']:.2g} | {r['auto']['learning_rate']:.2g} "
            f"({auto['suggested_learning_rate']:.2g}) | {r['derived']['best_val_loss']:.4f} | "
            f"{r['auto']['best_val_loss']:.4f} | {r['auto']['best_val_loss'] - r['derived']['best_val_loss']:+.4f} | "
            + ", ".join(f"{grid[g]['best_val_loss']:.3f}" if grid[g] else "-" for g in order) + " | "
            f"{best_name} ({best['learning_rate']:.2g}): {best['best_val_loss']:.4f} | {other} | "
            f"{auto['sweep_steps']} steps ({auto['share_of_run']:.0%} of the run), {auto['seconds']:.0f} s |")
    if noise:
        lines += ["", f"Run-to-run noise: the derived rate with seeds 42, 43, 44 on the same validation documents "
                      f"(the seed changes shuffling and dropout) spans {', '.join(f'{n:.4f}' for n in noise)} nats "
                      f"(max - min per setting). auto - derived, same seed, every pair: "
                      f"{', '.join(f'{d:+.4f}' for d in auto_minus_derived)}."]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- 2. curriculum


def measure_curriculum(bench: Bench) -> dict:
    rows = []
    export = bench.pretrained("small")
    settings = [(corpus, batching, MAX_STEPS) for corpus in FINE_TUNE_CORPORA for batching in ("packed", "padded")]
    # At 200 steps the sorted first epoch is most of the run (all of it for code, packed); the
    # derived plan's 3 epochs on the READMEs, padded, shows it diluted by two shuffled epochs.
    settings.append(("readme", "padded", None))
    for corpus, batching, max_steps in settings:
        base = {"data.train_files": bench.corpus(corpus), "model.name_or_path": export,
                **({"train.max_steps": max_steps} if max_steps else {}),
                **({"data.batching": batching} if batching != "packed" else {})}
        runs = {}
        for order in ("shuffled", "short_first"):
            overrides = {**base, "data.order": order} if order != "shuffled" else base
            # packed + shuffled is the lr_auto measurement's derived run: same overrides, same run.
            label = (f"lr-small-{corpus}-derived" if (batching, order, max_steps) == ("packed", "shuffled", MAX_STEPS)
                     else f"order-small-{corpus}-{batching}-{order}" + ("" if max_steps else "-derived-plan"))
            runs[order] = bench.run(label, overrides)
        rows.append({"model": "small", "corpus": corpus, "batching": batching, "max_steps": max_steps, "runs": runs})
    # The same setup with other seeds, if the lr_auto measurement ran them: the noise to compare with.
    noise = {}
    for corpus in FINE_TUNE_CORPORA:
        losses = [r["best_val_loss"] for r in (bench.existing(f"lr-small-{corpus}-derived{x}") for x in
                                               ["", *(f"-seed{s}" for s in OTHER_SEEDS["small"])]) if r]
        if len(losses) > 1:
            noise[corpus] = max(losses) - min(losses)
    return {"measurement": "data.order=short_first vs shuffled", "settings": rows, "noise": noise}


def curriculum_markdown(result: dict) -> str:
    lines = ["| corpus | batching | steps (per epoch) | share of the run in sorted order | shuffled: best val loss "
             "(step) | short_first: best val loss (step) | short_first - shuffled | val loss at step 50: shuffled, "
             "short_first |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for s in result["settings"]:
        a, b = s["runs"]["shuffled"], s["runs"]["short_first"]
        per_epoch = round(a["steps"] / a["epochs_completed"])

        def at(run, step):
            return next((loss for st, loss in run["validation_curve"] if st >= step), float("nan"))

        lines.append(f"| {s['corpus']} | {s['batching']} | {a['planned_steps']} ({per_epoch}) | "
                     f"{min(1.0, per_epoch / a['planned_steps']):.0%} | "
                     f"{a['best_val_loss']:.4f} ({a['best_step']}) | {b['best_val_loss']:.4f} ({b['best_step']}) | "
                     f"{b['best_val_loss'] - a['best_val_loss']:+.4f} | {at(a, 50):.3f}, {at(b, 50):.3f} |")
    if result.get("noise"):
        lines += ["", "Run-to-run noise of the packed, shuffled runs (seeds 42, 43, 44 on the same validation "
                      "documents; lr_auto.md): " + ", ".join(f"{c} {n:.4f}" for c, n in result["noise"].items())
                  + " nats (max - min)."]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- 3. task: packed vs padded


def measure_task_batching(bench: Bench) -> dict:
    from configs import task as task_config

    reference = task_config.get_config()
    data = {"data.train_files": os.path.join(ROOT, reference.data.train_files),
            "data.validation_files": os.path.join(ROOT, reference.data.validation_files),
            "data.prompt_field": reference.data.prompt_field, "data.completion_field": reference.data.completion_field,
            # 64 tokens: configs/task.py's rows when this was measured (now 32, sized for one example per
            # padded row); a packed row of 64 holds 2-4 examples of this data.
            "data.block_size": 64, "train.select_best_by": reference.train.select_best_by}
    setups = {
        "small pretrained": {"model.name_or_path": bench.pretrained("small")},
        "tiny from scratch (configs/task.py)": {
            "model.name_or_path": bench.path("models", "tiny-task"), "model.bootstrap_tiny": True,
            "model.tiny.n_positions": reference.model.tiny.n_positions},
    }
    smoke = {"train.max_steps": 10, "eval.task_examples": 8} if SMOKE else {}
    rows = []
    for setup, model in setups.items():
        model = {**model, **smoke}
        tag = "pretrained" if "pretrained" in setup else "scratch"
        packed = bench.run(f"task-{tag}-packed", {**data, **model})  # configs/task.py as it is: epochs and lr derived
        # Padded rows hold one example each (~3x the rows): same epochs and peak rate as packed,
        # so the runs see the same examples as often at the same step size.
        steps_per_epoch = round(packed["steps"] / packed["epochs_completed"])
        same = {"train.epochs": max(1, packed["planned_steps"] // steps_per_epoch),
                "optim.learning_rate": packed["learning_rate"]}
        padded = bench.run(f"task-{tag}-padded", {**data, **model, **same, "data.batching": "padded"})
        # And with as many examples per step as a packed batch holds (16 rows x examples per row),
        # so padded takes as many steps as packed: only the isolation of the examples differs.
        batch = round(16 * packed["data"]["train"]["documents"] / packed["data"]["train"]["rows"])
        padded_wide = bench.run(f"task-{tag}-padded-batch{batch}", {**data, **model, **same, "data.batching": "padded",
                                                                   "train.batch_size": batch})
        runs = {"packed": packed, "padded": padded, f"padded, batch {batch}": padded_wide}
        if packed["stopped_early"]:  # token_f1 can stall for 3 evaluations before it climbs: the whole plan too
            runs["packed, no early stop"] = bench.run(f"task-{tag}-packed-patience0",
                                                      {**data, **model, "train.early_stopping_patience": 0})
        rows.append({"setup": setup, "runs": runs})
    return {"measurement": "prompt/completion data.batching packed vs padded", "settings": rows,
            "from_scratch_rule": "configs/task.py: bootstrap_tiny, 2 x 128, vocabulary 2,048, 64 positions",
            "note": "Validation loss (completion tokens only) is at the step token_f1 picked, the lowest in "
                    "brackets; packed validation rows score each completion with earlier examples in context, "
                    "padded ones alone, so compare losses within a batching and the task metrics (greedy, "
                    "from the prompt alone, 64 held-out prompts: 1 example = 1.6 points of exact match) across. "
                    "tokens/s counts real tokens (attention mask), not padding."}


def task_markdown(result: dict) -> str:
    lines = ["| model | batching | rows/epoch x epochs = steps | val loss at best token_f1 (lowest) | exact match | "
             "token F1 | BLEU | ROUGE-L | tokens/s (real) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for s in result["settings"]:
        for name, r in sorted(s["runs"].items(), key=lambda item: (not item[0].startswith("packed"), item[0])):
            m = r["task_metrics_exported"] or {}
            batch = r["overrides"].get("train.batch_size", 16)
            stopped = f", early stop of {r['planned_steps']}" if r["stopped_early"] else ""
            lines.append(
                f"| {s['setup']} | {name} | {r['data']['train']['rows']:,} x {r['epochs_completed']:.1f} = "
                f"{r['steps']} (batch {batch}{stopped}) | {r['best_val_loss']:.4f} ({r['min_val_loss']:.4f}) | "
                f"{m.get('exact_match', float('nan')):.1f} | {m.get('token_f1', float('nan')):.1f} | "
                f"{m.get('bleu', float('nan')):.1f} | {m.get('rouge_l', float('nan')):.1f} | {r['tokens_per_sec']:,.0f} |")
    return "\n".join(lines + ["", result["note"]])


# ----------------------------------------------------------------------------- main

MEASUREMENTS = {
    "lr_auto": (measure_lr_auto, lr_auto_markdown),
    "curriculum": (measure_curriculum, curriculum_markdown),
    "task_batching": (measure_task_batching, task_markdown),
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=[*MEASUREMENTS, "all"])
    parser.add_argument("--workdir", default="", help="models, runs and figures (default: a temporary folder)")
    parser.add_argument("--out-dir", default=BENCH, help="where NAME.json and NAME.md are written")
    parser.add_argument("--smoke", action="store_true",
                        help="check the script end to end in a few minutes: 1-layer models, 10-step runs")
    args = parser.parse_args()
    if args.smoke:
        global MAX_STEPS, PRETRAIN_STEPS, SMOKE
        MAX_STEPS, PRETRAIN_STEPS, SMOKE = 10, 10, True
        for shape in MODELS.values():
            shape.update(n_layer=1, n_embd=32, n_head=2, vocab_size=512)
    names = list(MEASUREMENTS) if args.what == "all" else [args.what]
    with tempfile.TemporaryDirectory() as temporary:
        bench = Bench(os.path.abspath(args.workdir or temporary))
        for name in names:
            measure, markdown = MEASUREMENTS[name]
            started = time.time()
            result = measure(bench)
            result["pretraining"] = {m: json.load(open(bench.path("runs", f"pretrain-{m}", "bench.json")))
                                     for m in MODELS if os.path.exists(bench.path("runs", f"pretrain-{m}", "bench.json"))}
            result["machine"] = machine()
            result["launch_seconds"] = time.time() - started  # this launch; reused runs cost nothing
            result["run_seconds"] = sum(run["wall_seconds"] for setting in result["settings"]
                                        for run in setting["runs"].values())  # whoever ran them
            result["command"] = f".venv/bin/python bench/bench_recipes.py {name}"
            with open(os.path.join(args.out_dir, f"{name}.json"), "w") as f:
                json.dump(result, f, indent=1)
            table = markdown(result)
            with open(os.path.join(args.out_dir, f"{name}.md"), "w") as f:
                f.write(f"# {result['measurement']}\n\n`{result['command']}` ({result['machine']['cpu']}, "
                        f"{result['machine']['cores']} cores, float32)\n\n{table}\n")
            print(f"\n{table}\n", flush=True)


if __name__ == "__main__":
    main()
