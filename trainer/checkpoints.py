"""Checkpoints: resumable training state, the best weights, and resume safety.

OUTPUT/checkpoints/       latest states (weights, optimizer slots, step, run state), keep N
OUTPUT/checkpoints/best/  the weights with the lowest validation loss so far

Re-running a command on the same output directory restores the latest state;
the step fixes the learning rate and the data position (trainer/data.py:
epoch_order), so the run continues as if never stopped.
"""

import json
import os

from trainer.errors import UserError

# Config sections that may change between a run and its resumption: they do not
# alter what the finished model is (logging, evaluation prompts, devices).
RESUMABLE_CHANGES = ("runtime.", "eval.", "preflight", "train.log_every_steps", "train.max_steps",
                     "train.early_stopping", "train.keep_checkpoints", "train.checkpoint_every_steps")


def _flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_resume_compatible(output_dir: str, config: dict) -> bool:
    """True when output_dir holds an earlier run of this same config (resume);
    False when it holds none. A different run there is an error, never overwritten."""
    path = os.path.join(output_dir, "config.json")
    if not os.path.exists(path):
        return False
    with open(path) as f:
        old = _flatten(json.load(f).get("config", {}))
    new = _flatten(config)
    changed = [k for k in sorted(set(old) | set(new))
               if old.get(k) != new.get(k) and not k.startswith(RESUMABLE_CHANGES)]
    if changed:
        diffs = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:6])
        raise UserError(
            f"{output_dir} holds a run with other settings ({diffs}). Re-running on the same "
            "--config.output_dir resumes that run, so its settings must match. Use a new "
            "--config.output_dir, or delete the old one to start over.")
    return True


class RunState:
    """Scalars that must survive a restart, kept in the checkpoint with the weights."""

    FIELDS = {"best_val_loss": float("inf"), "best_step": -1, "evals_since_best": 0,
              "initial_val_loss": float("nan"), "train_tokens": 0, "train_seconds": 0.0,
              "stopped_early": 0}

    def __init__(self):
        import tensorflow as tf

        self.variables = {name: tf.Variable(float(value), trainable=False, dtype=tf.float64, name=name)
                          for name, value in self.FIELDS.items()}

    def __getitem__(self, name):
        return self.variables[name].numpy().item()

    def __setitem__(self, name, value):
        self.variables[name].assign(float(value))


class Checkpoints:
    def __init__(self, output_dir: str, model, optimizer, state: RunState, keep: int):
        import tensorflow as tf

        self.directory = os.path.join(output_dir, "checkpoints")
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, **state.variables)
        self.manager = tf.train.CheckpointManager(self.checkpoint, self.directory, max_to_keep=keep,
                                                  step_counter=optimizer.iterations)
        self.best = tf.train.Checkpoint(model=model)
        self.best_manager = tf.train.CheckpointManager(self.best, os.path.join(self.directory, "best"),
                                                       max_to_keep=1)

    def restore_latest(self) -> bool:
        if not self.manager.latest_checkpoint:
            return False
        self.checkpoint.restore(self.manager.latest_checkpoint).assert_existing_objects_matched()
        return True

    def save(self, step: int):
        if self.manager.latest_checkpoint and self.manager.latest_checkpoint.endswith(f"-{step}"):
            return  # already saved at this step
        self.manager.save(checkpoint_number=step)

    def save_best(self, step: int):
        self.best_manager.save(checkpoint_number=step)

    def restore_best(self) -> bool:
        if not self.best_manager.latest_checkpoint:
            return False
        self.best.restore(self.best_manager.latest_checkpoint).expect_partial()
        return True
