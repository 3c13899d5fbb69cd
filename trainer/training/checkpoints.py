"""Checkpoints: resumable training state, the best weights, and resume safety.

OUTPUT/config.json               the run's identity: the config as given, the plan of the
                                 first launch and a fingerprint of the data
OUTPUT/checkpoints/ckpt-N        latest states: weights, optimizer slots, step and RunState
OUTPUT/checkpoints/best/ckpt-N   the weights with the lowest validation loss; N = best_step

Guarantees under a kill at any instant (SIGKILL included):
- the latest state on disk is complete (TensorFlow writes the `checkpoint`
  file that names it last, with an atomic rename);
- the best weights named by that state's `best_step` are on disk: they are
  written BEFORE the state that names them, and an older best is deleted only
  AFTER a state naming the newer one is on disk. On restore, best checkpoints
  the restored state does not name (newer ones from a killed sequence, older
  leftovers) are deleted;
- a resumed run uses the plan stored at the first launch (steps, warm-up,
  decay, evaluation interval), so the learning rate at every step is the
  uninterrupted run's, and the data order is a function of (seed, epoch).
"""

import dataclasses
import json


import trainer
from trainer import faults, filesystem, settings, vertex
from trainer.errors import UserError
from trainer.training.optimization import TrainingPlan

# Format of config.json: a run written by another format is not resumed.
RUN_FORMAT = 2
# Config keys that may change between a run and its resumption: they do not
# alter what the finished model is (logging, evaluation output, devices,
# checkpoint cadence). train.max_steps may change only where it leaves the
# stored plan's total steps as they were (checked against the plan).
RESUMABLE_CHANGES = ("runtime.", "eval.", "preflight", "export_serving", "train.log_every_steps", "train.max_steps",
                     "train.early_stopping", "train.keep_checkpoints", "train.checkpoint_every_steps")
# Plan fields a relaunch may change: they decide when to save or stop, not the schedule.
RESUMABLE_PLAN_FIELDS = ("checkpoint_every_steps", "early_stopping_patience")
# What tunewell itself writes into an output directory (and trainer.doctor / lr_find).
# What a key added to the schema since held in a run that predates it, where that is not
# today's default: such runs had no test split, and selected by the loss unless told.
PREDATING_VALUES = {"data.test_fraction": 0.0, "data.test_files": "", "train.select_best_by": "loss",
                    "data.packed_attention": "row"}
RUN_FILES = {"config.json", "report.json", "report.md", "curves.png", "metrics.jsonl", "doctor.json",
             "doctor.md", "logs", "checkpoints", "export", "export_pytorch", "lr_find",
             "review.html", "review.csv", "review_key.csv", "review_result.json",
             "model",  # Vertex AI's AIP_MODEL_DIR
             "train.log",
             "serving"}  # deploy/gpu_vm copies the service's log here whenever it stops, even before config.json


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where each part of a run goes: under output_dir, except on Vertex AI, where the
    job's AIP_MODEL_DIR / AIP_CHECKPOINT_DIR / AIP_TENSORBOARD_LOG_DIR are used
    when output_dir is the job's base output directory (see settings.resolve)."""
    checkpoints: str
    logs: str
    export: str
    export_pytorch: str
    serving: str  # always under output_dir: a Vertex model upload points at it

    @classmethod
    def of(cls, output_dir: str, environ=None) -> "Layout":
        join = filesystem.join
        aip = vertex.output_locations(environ)
        if aip and aip["base"] == output_dir.rstrip("/"):
            return cls(aip["checkpoints"], aip["logs"], aip["model"], join(output_dir, "export_pytorch"),
                       join(output_dir, "serving"))
        return cls(join(output_dir, "checkpoints"), join(output_dir, "logs"), join(output_dir, "export"),
                   join(output_dir, "export_pytorch"), join(output_dir, "serving"))


class OutputDir:
    """What is in an output directory before this run writes anything."""

    def __init__(self, path: str):
        self.path = path
        self.config_path = filesystem.join(path, "config.json")
        self.report_path = filesystem.join(path, "report.json")
        self.stored = None  # config.json of an earlier launch
        if not filesystem.isdir(path):
            if filesystem.exists(path):
                raise UserError(f"--config.output_dir={path} is a file, not a folder. Pick a new "
                                "--config.output_dir.")
            return
        entries = [e for e in filesystem.listdir(path) if filesystem.TMP_MARK not in e and
                   not e.startswith(".tunewell-write-check-")]
        if filesystem.exists(self.config_path):
            try:
                stored = filesystem.read_json(self.config_path)
            except (ValueError, OSError):
                stored = None
            if isinstance(stored, dict) and stored.get("tunewell", {}).get("format") == RUN_FORMAT:
                self.stored = stored
                return
            if isinstance(stored, dict) and ("tunewell" in stored or {"config", "plan"} <= set(stored)):
                raise UserError(
                    f"--config.output_dir={path} holds a run written by another version of tunewell "
                    f"(format {stored.get('tunewell', {}).get('format', 1)}, this one writes {RUN_FORMAT}); it "
                    "cannot be resumed. Use a new --config.output_dir.")
        foreign = [e for e in entries if e not in RUN_FILES or e == "config.json"]
        if foreign:
            raise UserError(
                f"--config.output_dir={path} holds something other than a tunewell run ({', '.join(foreign[:6])}"
                f"{', ...' if len(foreign) > 6 else ''}): refusing to write there. Is it a model folder? Pick "
                "an empty or new --config.output_dir.")

    @property
    def complete(self) -> bool:
        """report.json is written last: a run that has it has finished and exported."""
        return self.stored is not None and filesystem.exists(self.report_path)

    def check_config(self, config) -> None:
        """The config as given must match the stored one outside RESUMABLE_CHANGES."""
        from configs import default

        # A key the stored run predates (added to the schema since) held its default then.
        old = {**settings.flatten(default.get_config()), **PREDATING_VALUES,
               **settings.flatten(self.stored["requested"])}
        new = settings.flatten(config.to_dict())
        changed = [k for k in sorted(set(old) | set(new))
                   if old.get(k) != new.get(k) and not k.startswith(RESUMABLE_CHANGES)]
        if changed:
            diffs = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:6])
            raise UserError(
                f"{self.path} holds a run with other settings ({diffs}). Re-running on the same "
                "--config.output_dir resumes that run, so its settings must match. Use a new "
                "--config.output_dir, or delete the old one to start over.")

    def check_data(self, fingerprint: dict) -> None:
        old = self.stored["data_fingerprint"]
        if old != fingerprint:
            what = "; ".join(f"{k} {old.get(k)} -> {fingerprint[k]}" for k in fingerprint
                             if old.get(k) != fingerprint[k] and k != "sha256") or "same size, other tokens"
            raise UserError(
                f"The data differs from the data this run in {self.path} started on ({what}), though "
                "--config.data.* names the same files: they were edited. Resuming would train the rest of "
                "the run on other examples in another order. Restore the files, or use a new "
                "--config.output_dir for the new data.")

    def stored_plan(self, plan, config):
        """The first launch's plan, reused as stored; refuse a max_steps change that would alter it.

        With the config as given and the data unchanged (checked before), only
        max_steps can make this launch's plan differ from the stored one."""
        stored = dict(self.stored["plan"])
        fresh = {k: v for k, v in vars(plan).items() if k != "derived"}
        changed = [k for k in fresh if k not in RESUMABLE_PLAN_FIELDS and fresh[k] != stored.get(k)]
        old_max = self.stored["requested"]["train"]["max_steps"]
        if changed and old_max != config.train.max_steps:
            raise UserError(
                f"--config.train.max_steps changed from {old_max} to {config.train.max_steps}: that changes this run's plan ({', '.join(f'{k} {stored.get(k)} -> {fresh[k]}' for k in changed)})"
                f", which fixes the learning-rate decay, warm-up and evaluation interval of {self.path}. "
                f"Resume with --config.train.max_steps={old_max}, or start a new --config.output_dir.")
        stored["checkpoint_every_steps"] = plan.checkpoint_every_steps
        stored["early_stopping_patience"] = plan.early_stopping_patience
        return TrainingPlan(**stored, derived=self.stored.get("derived", {}))

    def write_config(self, requested, resolved, plan, fingerprint, data_stats, layout: Layout,
                     lr_auto: dict | None = None) -> None:
        """lr_auto: optim.learning_rate=auto's range test (its pick is plan.learning_rate); written
        again once it ran, so a relaunch after it reuses the pick instead of sweeping again."""
        filesystem.write_json(self.config_path, {
            "tunewell": {"format": RUN_FORMAT, "version": trainer.__version__},
            "requested": requested, "config": resolved, "derived": plan.derived,
            "plan": {k: v for k, v in vars(plan).items() if k != "derived"},
            "data_fingerprint": fingerprint, "data": data_stats, "layout": dataclasses.asdict(layout),
            **({"lr_auto": lr_auto} if lr_auto else {})})


class RunState:
    """Host-side scalars that must survive a restart, saved inside each checkpoint.

    A tf.train.experimental.PythonState: written atomically with the weights
    it describes, and no device variables (TPUs have no float64).
    """

    # best_score: what train.select_best_by compares, lower is better (the loss, or minus a
    # task metric); best_val_loss is the validation loss at that best step.
    # review_base: the base model's outputs for the review sheet, made at step 0.
    # base_samples: the base model's seeded continuations of the evaluation prompts (step 0),
    # shown beside the exported model's at the end of the run.
    # decay_start_step: the wsd schedule's first decay step once validation started it.
    # best_is_average: the best weights are the moving average's (optim.weight_averaging=ema).
    FIELDS = {"best_val_loss": float("inf"), "best_score": float("inf"), "best_step": -1, "evals_since_best": 0,
              "initial_val_loss": float("nan"), "last_eval_step": -1, "train_tokens": 0,
              "train_seconds": 0.0, "stopped_early": False, "monitors": [], "samples": [],
              "review_base": [], "base_samples": [], "window": {}, "decay_start_step": None,
              "best_is_average": False}

    def __init__(self):
        import tensorflow as tf

        outer = self

        class _Saveable(tf.train.experimental.PythonState):
            def serialize(self):
                return json.dumps(outer.values)

            def deserialize(self, string_value):
                saved = json.loads(string_value)
                outer.values = {**RunState.FIELDS, **saved}
                if "best_score" not in saved:  # saved before select_best_by: the loss picked the best
                    outer.values["best_score"] = outer.values["best_val_loss"]

        self.values = json.loads(json.dumps(self.FIELDS))
        self.trackable = _Saveable()

    def __getitem__(self, name):
        return self.values[name]

    def __setitem__(self, name, value):
        self.values[name] = value


class Checkpoints:
    """The latest states and the best weights of a run.

    `directory` is read (the run's checkpoints, which every worker restores);
    `write_directory` is written: the same for the chief, a worker-local folder
    for the other workers of a multi-worker job (their saves are identical and
    thrown away, but every worker must take part in a save)."""

    def __init__(self, directory: str, model, optimizer, state: RunState, keep: int,
                 write_directory: str | None = None):
        import tensorflow as tf

        self.directory = directory
        self.writes_run = write_directory is None
        write_directory = write_directory or directory
        self.best_directory = filesystem.join(write_directory, "best")
        self.read_best_directory = filesystem.join(directory, "best")
        self.state = state
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, run_state=state.trackable)
        self.manager = tf.train.CheckpointManager(self.checkpoint, write_directory, max_to_keep=keep,
                                                  step_counter=optimizer.iterations)
        self.best = tf.train.Checkpoint(model=model)

    @property
    def latest(self) -> str | None:
        import tensorflow as tf

        return tf.train.latest_checkpoint(self.directory)

    def restore_latest(self) -> int:
        """The step of the latest state, restored (0 when there is none).

        Also deletes the best checkpoints that state does not name."""
        latest = self.latest
        if latest:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
        if self.writes_run:
            self._prune_best(keep=self.state["best_step"] if latest else None)
        if latest and self.state["best_step"] >= 0 and not self._best_index(self.state["best_step"]):
            raise UserError(f"{latest} names best weights at step {self.state['best_step']}, but "
                            f"{self.read_best_directory} does not hold them: the folder was edited by hand. "
                            "Start again with a new --config.output_dir.")
        return int(latest.rsplit("-", 1)[1]) if latest else 0

    def save(self, step: int) -> None:
        """The latest state at `step` (with the RunState naming its best), then the old best goes."""
        if not (self.manager.latest_checkpoint or "").endswith(f"-{step}"):
            faults.point("checkpoint_save", step)
            self.manager.save(checkpoint_number=step)
            faults.point("after_checkpoint_save", step)
        self._prune_best(keep=self.state["best_step"])

    def save_best(self, step: int) -> None:
        """Best weights at `step`; the state naming them is saved by the next save()."""
        faults.point("best_save", step)
        self.best.write(filesystem.join(self.best_directory, f"ckpt-{step}"))
        faults.point("after_best_save", step)

    def restore_best(self) -> int:
        step = self.state["best_step"]
        self.best.read(filesystem.join(self.best_directory, f"ckpt-{step}")).expect_partial()
        return step

    def _best_index(self, step: int) -> bool:
        return filesystem.exists(filesystem.join(self.read_best_directory, f"ckpt-{step}.index"))

    def _prune_best(self, keep) -> None:
        for path in filesystem.glob_in(self.best_directory, "ckpt-*"):
            number = path.rsplit("/", 1)[-1].split(".", 1)[0].rsplit("-", 1)[1]
            if not number.isdigit() or int(number) != keep:
                filesystem.remove(path)
