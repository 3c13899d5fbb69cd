"""What the stages of a run hand each other (trainer/run/train.py): small dataclasses, so
each stage's signature says what it needs, instead of the whole config and ten loose values."""

import dataclasses

from trainer import reporting
from trainer.training import checkpoints as ckpt_lib
from trainer.training import distribution
from trainer.training import optimization


@dataclasses.dataclass
class Launch:
    """This process and the folder it runs in; known before any data is read."""
    config: object                  # resolved: checked, paths expanded, data.batching decided
    cluster: distribution.Cluster
    run_dir: ckpt_lib.OutputDir     # what output_dir held before this launch (config.json of the first)
    timings: reporting.Timings

    @property
    def chief(self) -> bool:
        return self.cluster.is_chief  # the only process that writes to output_dir


@dataclasses.dataclass
class Devices:
    strategy: object                # a tf.distribute.Strategy
    precision: str                  # "float32" | "mixed_bfloat16" | "mixed_float16"


@dataclasses.dataclass
class Outputs:
    layout: ckpt_lib.Layout         # checkpoints, logs and exports (Vertex's AIP_* folders on Vertex)
    worker_dir: str                 # a non-chief worker's own checkpoints, removed at the end
    findings: list                  # the doctor's, most severe first ([] when preflight is off)


@dataclasses.dataclass
class Built:
    """What trains: the model and its optimizer, compiled steps, the validation batches."""
    model: object
    loaded_from: object             # model.LoadedFrom: which files the weights came from
    optimizer: object
    train_loop: object              # steps.make_train_loop: several steps per call
    eval_step: object
    val_data: list                  # the distributed validation batches, read once
    plan: optimization.TrainingPlan  # with the learning rate decided (optim.learning_rate=auto)
    resolved: dict                  # the config with derived values filled in, as config.json holds it
    lr_auto: dict | None            # the range test's pick and curve, when optim.learning_rate=auto
    schedule: object = None         # optimization.make_schedule's: wsd's decay window lives in it


@dataclasses.dataclass
class Progress:
    """Where training stands: restored from the latest checkpoint, or new at step 0."""
    checkpoints: ckpt_lib.Checkpoints
    state: ckpt_lib.RunState        # best step and score, windows, samples: saved in every checkpoint
    step: int
    run_log: reporting.RunLog
