"""The run's log: TensorBoard scalars and text, the metric history, where the time went.

OUTPUT/logs/train, OUTPUT/logs/validation  TensorBoard scalars and text
OUTPUT/metrics.jsonl                       every logged point, one JSON per line
"""

import contextlib
import json
import time

import trainer
from trainer import filesystem


class Timings:
    """Where this launch's wall time went, for report.json["timing"] (seconds).

    training = inside the compiled training calls (the first one includes tracing);
    evaluation = validation loss; generation = the sample generations; export =
    the TF and PyTorch exports; test = the test split scored once on the exported
    model (loss, and task metrics of prompt/completion data); report = report card,
    plot and report.json;
    startup = from process start to the step-0 evaluation (imports, data, tokenizer,
    doctor, model), the range test (lr_auto, its own part) left out, so the parts and
    startup add up to at most the wall time; first_step = from process start to the end of the first
    training call (startup + the base model's evaluation + the first call's tracing).
    """

    PARTS = ("training", "evaluation", "generation", "task_metrics", "review", "lr_auto", "export", "test",
             "report")

    def __init__(self):
        self.seconds = dict.fromkeys(self.PARTS, 0.0)
        self.first_step_seconds = self.startup_seconds = None

    def started_training(self):
        self.startup_seconds = time.time() - trainer.LAUNCHED_AT - self.seconds["lr_auto"]

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
