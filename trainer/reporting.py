"""Reporting: TensorBoard, the metric history, the progress bar, report.json.

OUTPUT/logs/train, OUTPUT/logs/validation  TensorBoard scalars and text
OUTPUT/metrics.jsonl                       every logged point, one JSON per line
OUTPUT/report.json                         the run's outcome (keys are a contract)
"""

import json
import os
import tempfile


def write_json(path: str, obj) -> None:
    """Write then rename, so a crash never leaves half a file where a good one was."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)
        f.write("\n")
    os.replace(tmp, path)


class RunLog:
    def __init__(self, output_dir: str, resume_step: int):
        import tensorflow as tf

        self.tf = tf
        logs = os.path.join(output_dir, "logs")
        self.writers = {split: tf.summary.create_file_writer(os.path.join(logs, split))
                        for split in ("train", "validation")}
        self.history_path = os.path.join(output_dir, "metrics.jsonl")
        self.history = [h for h in self._read_history() if h["step"] <= resume_step]
        with open(self.history_path, "w") as f:  # drop points logged after the checkpoint we resume
            f.writelines(json.dumps(h) + "\n" for h in self.history)

    def _read_history(self):
        if not os.path.exists(self.history_path):
            return []
        with open(self.history_path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def scalars(self, split: str, step: int, values: dict) -> None:
        with self.writers[split].as_default():
            for name, value in values.items():
                self.tf.summary.scalar(name, value, step=step)
        self.writers[split].flush()
        point = {"split": split, "step": int(step), **{k: float(v) for k, v in values.items()}}
        self.history.append(point)
        with open(self.history_path, "a") as f:
            f.write(json.dumps(point) + "\n")

    def text(self, split: str, tag: str, step: int, markdown: str) -> None:
        with self.writers[split].as_default():
            self.tf.summary.text(tag, markdown, step=step)
        self.writers[split].flush()

    def points(self, split: str) -> list:
        return [h for h in self.history if h["split"] == split]

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()


def generations_markdown(samples: list[dict]) -> str:
    return "\n\n".join(f"**{s['prompt']}** {s['completion']}" for s in samples)


def config_markdown(config: dict) -> str:
    return "```json\n" + json.dumps(config, indent=2, sort_keys=True, default=str) + "\n```"


def say(message: str) -> None:
    """Print a line without breaking an active progress bar."""
    from tqdm.auto import tqdm

    tqdm.write(message)


def progress_bar(total: int, initial: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="step", desc="Training", dynamic_ncols=True)


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
