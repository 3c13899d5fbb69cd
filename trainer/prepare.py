"""Entry point: prepare data once.

    python -m trainer.prepare --config=configs/NAME.py [--config.key=value ...]
        --config.data.prepared_dir=FOLDER [--shards=N] [--overwrite]

Tokenizes and packs the corpus as the trainer would and writes TFRecord shards
plus a manifest (trainer/run/preparation.py does the work; the format is in
trainer/data/shards.py), then prints the trainer command that reads them.

    python -m trainer.prepare --inspect=FOLDER --workers=N [--epoch=E] [--json] [--config=... flags]

Counts which training rows of a prepared folder each of N workers would read in
one epoch, through the trainer's own input pipeline (trainer/run/inspection.py).
"""

import shlex
import sys

import trainer  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from absl import app, flags, logging

from trainer import cli
from trainer import filesystem
from trainer import reporting
from trainer.errors import UserError
from trainer.run import inspection, preparation

flags.DEFINE_integer("shards", None, "Training shards; default: ~64 MB each and at least min(16, rows). "
                     "Validation shards are always derived.")
flags.DEFINE_bool("overwrite", False, "Replace a folder prepared with other settings.")
flags.DEFINE_string(
    "inspect", None, "Instead of preparing: count, through the trainer's own input pipeline, how often each "
    "training row of this prepared folder is read in one epoch by a job of --workers workers, and print rows, "
    "read once, read more than once, never read and the dropped remainder (fewer rows than one global batch). "
    "Exit status 0 when every row but the dropped remainder is read exactly once, 1 otherwise, 2 on an error. "
    "The global batch is --config's train.batch_size and the seed its seed; without --config, "
    "configs/default.py's train.batch_size and the seed the folder was prepared with (which a run with "
    "prepare's own --config flags uses). Reads the folder's training shards once.")
flags.DEFINE_integer("workers", 1, "With --inspect: the job's worker count (input pipelines).")
flags.DEFINE_integer("epoch", 0, "With --inspect: the epoch to count, 0 for the first (each epoch has its own order).")
flags.DEFINE_bool("json", False, "With --inspect: print one JSON object (rows, read_once, read_more, unseen, "
                  "dropped, unlisted, workers, epoch, global_batch, steps, seed, shards, exact) instead of text.")


def trainer_command(argv: list[str], prepared_dir: str) -> str:
    """The trainer command with the same --config flags as this one, reading `prepared_dir`."""
    kept, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--config") and not arg.startswith("--config.data.prepared_dir"):
            kept.append(arg)
            if "=" not in arg and i + 1 < len(argv):  # the "--config path" spelling
                kept.append(argv[i + 1])
                i += 1
        elif arg.startswith("--config.data.prepared_dir") and "=" not in arg:
            i += 1  # its value follows
        i += 1
    return " ".join(["python -m trainer.task", *map(shlex.quote, kept),
                     shlex.quote(f"--config.data.prepared_dir={prepared_dir}")])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # TensorFlow's INFO lines drown the progress bars
    config = cli.CONFIG.value
    try:
        if flags.FLAGS.inspect:
            sys.exit(inspection.inspect(flags.FLAGS.inspect, flags.FLAGS.workers, flags.FLAGS.epoch, config,
                                        flags.FLAGS.json))
        preparation.prepare_data(config, flags.FLAGS.shards, log=reporting.say, overwrite=flags.FLAGS.overwrite)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"Train on it: {trainer_command(sys.argv[1:], filesystem.expand(config.data.prepared_dir))}")


if __name__ == "__main__":
    flags.register_multi_flags_validator(
        ["config", "inspect"], lambda values: values["config"] is not None or bool(values["inspect"]),
        message="--config is required (except with --inspect=FOLDER).")
    app.run(main, flags_parser=cli.parse_flags)
