"""Reporting: TensorBoard, the metric history, the progress bar, report.json.

OUTPUT/logs/train, OUTPUT/logs/validation  TensorBoard scalars and text
OUTPUT/metrics.jsonl                       every logged point, one JSON per line
OUTPUT/report.json                         the run's outcome (keys are a contract)
"""

import contextlib
import json
import time

import trainer
from trainer import filesystem

write_json = filesystem.write_json


class Timings:
    """Where this launch's wall time went, for report.json["timing"] (seconds).

    training = inside the compiled training calls (the first one includes tracing);
    evaluation = validation loss; generation = the sample generations; export =
    the TF and PyTorch exports; report = report card, plot and report.json;
    startup = from process start to the step-0 evaluation (imports, data, tokenizer,
    doctor, model); first_step = from process start to the end of the first
    training call (startup + the base model's evaluation + the first call's tracing).
    """

    PARTS = ("training", "evaluation", "generation", "task_metrics", "review", "lr_auto", "export", "report")

    def __init__(self):
        self.seconds = dict.fromkeys(self.PARTS, 0.0)
        self.first_step_seconds = self.startup_seconds = None

    def started_training(self):
        self.startup_seconds = time.time() - trainer.LAUNCHED_AT

    @contextlib.contextmanager
    def part(self, name: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - started
            if name == "training" and self.first_step_seconds is None:
                self.first_step_seconds = time.time() - trainer.LAUNCHED_AT

    def as_dict(self) -> dict:
        wall = time.time() - trainer.LAUNCHED_AT
        return {"wall_seconds": wall, "startup_seconds": self.startup_seconds,
                "first_step_seconds": self.first_step_seconds,
                **{f"{k}_seconds": v for k, v in self.seconds.items()},
                "training_share": self.seconds["training"] / max(wall, 1e-9)}


class RunLog:
    """TensorBoard scalars and text, and metrics.jsonl. write=False (the non-chief workers
    of a multi-worker job) keeps the history in memory and writes nothing."""

    def __init__(self, output_dir: str, resume_step: int, last_eval_step: int, write: bool = True,
                 logs_dir: str | None = None):
        import tensorflow as tf

        self.tf = tf
        self.write = write
        logs = self.logs = logs_dir or filesystem.join(output_dir, "logs")
        self.writers = {split: tf.summary.create_file_writer(filesystem.join(logs, split))
                        for split in ("train", "validation")} if write else {}
        self.history_path = filesystem.join(output_dir, "metrics.jsonl")
        # Points logged after the state we resume from are dropped: the resumed run
        # logs them again (an evaluation counts when that state recorded it: one
        # logged just before a kill, or at step 0 with no checkpoint yet, is redone).
        # Rewritten whole, so a kill here loses nothing.
        last = {"train": resume_step, "validation": last_eval_step}
        self.history = [h for h in self._read_history() if h["step"] <= last[h["split"]]]
        if write:
            filesystem.write_text(self.history_path, "".join(json.dumps(h) + "\n" for h in self.history))

    def _read_history(self):
        if not filesystem.exists(self.history_path):
            return []
        points = []
        for line in filesystem.read_text(self.history_path).splitlines():
            try:
                points.append(json.loads(line))
            except ValueError:  # the partial last line of a killed append
                continue
        return points

    def scalars(self, split: str, step: int, values: dict) -> None:
        point = {"split": split, "step": int(step), **{k: float(v) for k, v in values.items()}}
        self.history.append(point)
        if not self.write:
            return
        with self.writers[split].as_default():
            for name, value in values.items():
                self.tf.summary.scalar(name, value, step=step)
        self.writers[split].flush()
        filesystem.append_line(self.history_path, json.dumps(point))

    def text(self, split: str, tag: str, step: int, markdown: str) -> None:
        if not self.write:
            return
        with self.writers[split].as_default():
            self.tf.summary.text(tag, markdown, step=step)
        self.writers[split].flush()

    def curve(self, name: str, series: dict) -> None:
        """A curve that is not a training step's (e.g. the lr=auto range test): TensorBoard
        only, in logs/NAME, x = its own step; never in metrics.jsonl's history."""
        if not self.write:
            return
        writer = self.tf.summary.create_file_writer(filesystem.join(self.logs, name))
        with writer.as_default():
            for key, values in series.items():
                for step, value in enumerate(values):
                    if value is not None:
                        self.tf.summary.scalar(key, value, step=step)
        writer.close()

    def points(self, split: str) -> list:
        return [h for h in self.history if h["split"] == split]

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()


def generations_markdown(samples: list[dict]) -> str:
    return "\n\n".join(f"**{s['prompt']}** {s['completion']}" for s in samples)


def completions_markdown(examples, predictions, rows: int = 8) -> str:
    """The first held-out prompts, their references and the model's completions, as a table."""
    def cell(text):
        return (text.replace("|", "\\|").replace("\n", "⏎ ").strip() or "(empty)")[:300]

    lines = ["| prompt | reference | model |", "|---|---|---|"]
    lines += [f"| {cell(p)} | {cell(r)} | {cell(m)} |" for (p, r), m in list(zip(examples, predictions))[:rows]]
    return "\n".join(lines)


def config_markdown(config: dict) -> str:
    return "```json\n" + json.dumps(config, indent=2, sort_keys=True, default=str) + "\n```"


def say(message: str) -> None:
    """Print a line without breaking an active progress bar."""
    from tqdm.auto import tqdm

    tqdm.write(message)


def progress_bar(total: int, initial: int, enabled: bool = True):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="step", desc="Training", dynamic_ncols=True,
                disable=not enabled)


def summary_lines(report: dict) -> list[str]:
    initial, best = report["initial_val_loss"], report["best_val_loss"]
    lines = [
        f"Trained {report['steps']} steps ({report['train_tokens']:,} tokens, "
        f"{report['tokens_per_sec']:,.0f} tokens/s) in {report['train_seconds']:.0f} s"
        + (" - stopped early." if report["stopped_early"] else "."),
        f"Validation loss {initial:.3f} at step 0 -> best {best:.3f} at step {report['best_step']} "
        f"(perplexity {report['initial_val_perplexity']:.1f} -> {report['final_val_perplexity']:.1f}, "
        f"{report['improvement_pct']:.0f}% lower).",
        f"Best model exported to {report['export_dir']} (PyTorch copy: {report['export_pytorch_dir']}).",
        f"Report: {report['report_path']}; curves: make tensorboard (logs in {report['logs_dir']}).",
    ]
    return lines


def plot_curves(report: dict, path: str) -> None:
    """Training and validation loss against steps, the best step marked, lr on a second axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, val = report["history"]["train"], report["history"]["validation"]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot([p["step"] for p in train], [p["loss"] for p in train], label="training loss", alpha=0.7)
    ax.plot([p["step"] for p in val], [p["loss"] for p in val], "o-", label="validation loss")
    ax.axvline(report["best_step"], color="green", linestyle="--", label=f"best (step {report['best_step']})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats per token)")
    if train and "learning_rate" in train[0]:
        lr_axis = ax.twinx()
        lr_axis.plot([p["step"] for p in train], [p["learning_rate"] for p in train], color="grey", alpha=0.4)
        lr_axis.set_ylabel("learning rate", color="grey")
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, format="png")  # path may be a temporary name without .png
    plt.close(fig)


def write_report_card(output_dir: str, report: dict, config: dict, findings) -> str:
    """OUTPUT/report.md: one page with config, data audit, curves, diagnosis and samples."""
    filesystem.write_file(filesystem.join(output_dir, "curves.png"), lambda tmp: plot_curves(report, tmp))
    lines = ["# Fine-tuning report", "",
             f"Model `{report['model']['name_or_path']}` ({report['model']['parameters']:,} parameters), "
             f"{report['steps']} steps, {report['train_tokens']:,} training tokens, "
             f"{report['tokens_per_sec']:,.0f} tokens/s.", "",
             "## Diagnosis", ""]
    for item in report.get("diagnosis", []):
        lines.append(f"- **{item['label']}** ({item['severity']}): {item['summary']}"
                     + (f" Next: `{' '.join(item['next'])}`" if item["next"] else ""))
    lines += ["", "## Curves", "", "![curves](curves.png)", "",
              f"Validation loss {report['initial_val_loss']:.3f} at step 0 -> best {report['best_val_loss']:.3f} "
              f"at step {report['best_step']} (perplexity {report['initial_val_perplexity']:.1f} -> "
              f"{report['final_val_perplexity']:.1f}); last {report['last_val_loss']:.3f}."
              + (" Stopped early." if report["stopped_early"] else ""), ""]
    auto = report.get("learning_rate_auto")
    if auto:
        lines += [f"Learning rate (auto): {auto['learning_rate']:.3g}, {auto['reason']}; the range test cost "
                  f"{auto['sweep_steps']} steps ({auto['share_of_run']:.1%} of the run), curve in TensorBoard "
                  "under lr_auto.", ""]
    task = report.get("task_metrics")
    if task:
        from trainer.task_metrics import METRICS

        lines += ["## Task metrics", "",
                  f"{task['examples']} held-out prompts completed greedily; best weights picked by "
                  f"{task['select_best_by']}.", "", "| metric | base model | exported | best (step) |",
                  "|---|---|---|---|"]
        lines += [f"| {k} | {task['initial'].get(k, float('nan')):.1f} | {task['exported'].get(k, float('nan')):.1f} | "
                  f"{task['best'][k]['value']:.1f} ({task['best'][k]['step']}) |" for k in METRICS if k in task["best"]]
        lines += [""]
    if report.get("review"):
        lines += ["## Review sheet", "", f"Rate the blinded outputs in `{report['review']['html']}` (fill "
                  f"`{report['review']['sheet']}`'s preferred column), then `python -m trainer.review "
                  f"--run={output_dir} --ratings=review.csv`.", ""]
    lines += ["## Data audit", ""]
    lines += [f"- {f.severity}: [{f.check}] {f.figure}" + (f" - fix: {f.fix}" if f.severity != "info" else "")
              for f in findings] or ["- (pre-flight off)"]
    lines += ["", "## Samples (last evaluation)", ""]
    lines += [f"- **{s['prompt']}** {s['completion']}" for s in report.get("samples", [])]
    lines += ["", "## Config", "", config_markdown(config), ""]
    path = filesystem.join(output_dir, "report.md")
    filesystem.write_text(path, "\n".join(lines))
    return path
