"""Entry point: prepare data once.

    python -m trainer.prepare --config=configs/NAME.py [--config.key=value ...]
        --config.data.prepared_dir=FOLDER [--shards=N] [--overwrite] [--direct_num_workers=N]
    python -m trainer.prepare ... --runner=DataflowRunner --project=P --region=R
        --temp_location=gs://BUCKET/tmp --sdk_container_image=IMAGE [--max_num_workers=N]

Tokenizes and packs the corpus as the trainer would and writes TFRecord shards
plus a manifest, then prints the trainer command that reads them. The steps are
an Apache Beam pipeline (trainer/run/beam_prepare.py) that runs on Dataflow; on
this machine the same steps are streamed through local disk in bounded memory
(--runner=local, the default: trainer/run/local_prepare.py), or run by Beam's
DirectRunner. The format is in trainer/data/shards.py.

    python -m trainer.prepare --inspect=FOLDER --workers=N [--epoch=E] [--json] [--config=... flags]

Counts which training rows of a prepared folder each of N workers would read in
one epoch, through the trainer's own input pipeline (trainer/run/inspection.py).
"""

import os
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
flags.DEFINE_enum("runner", preparation.LOCAL, preparation.RUNNERS,
                  "local: the pipeline's steps on this machine, streamed through its temp folder in bounded "
                  "memory; DirectRunner: Beam's own local runner, which holds each step's output in memory "
                  "(small data: to check the Beam graph before a Dataflow job); DataflowRunner: Google Cloud "
                  "(needs --project, --region, --temp_location, --sdk_container_image and gs:// data, tokenizer "
                  "and folder).")
flags.DEFINE_integer("direct_num_workers", 0, "Processes on this machine (local and DirectRunner); 0 = one per "
                     "core, 1 = in this process.")
flags.DEFINE_string("project", None, "DataflowRunner: Google Cloud project.")
flags.DEFINE_string("region", None, "DataflowRunner: region of the job, e.g. us-central1 (near the bucket).")
flags.DEFINE_string("temp_location", None, "DataflowRunner: gs:// folder for Dataflow's staging and temp files.")
flags.DEFINE_string("sdk_container_image", None, "DataflowRunner: the project's Dataflow image (deploy/Dockerfile's "
                    "dataflow target: make docker-build-dataflow docker-push-dataflow), so workers run this package "
                    "with its pinned versions.")
flags.DEFINE_integer("max_num_workers", None, "DataflowRunner: the most workers autoscaling may start.")
flags.DEFINE_multi_string("beam_option", [], "Any other Beam pipeline option, repeated, e.g. "
                          "--beam_option=--machine_type=n2-standard-8.")
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
        runner = flags.FLAGS.runner
        options = preparation.runner_options(
            config, runner, project=flags.FLAGS.project, region=flags.FLAGS.region,
            temp_location=flags.FLAGS.temp_location, sdk_container_image=flags.FLAGS.sdk_container_image,
            max_num_workers=flags.FLAGS.max_num_workers, extra=flags.FLAGS.beam_option)
        if flags.FLAGS.direct_num_workers < 0:
            raise UserError(f"--direct_num_workers={flags.FLAGS.direct_num_workers}: give 0 (one per core) or more.")
        workers = flags.FLAGS.direct_num_workers or os.cpu_count() or 1
        preparation.prepare_data(config, flags.FLAGS.shards, log=reporting.say, overwrite=flags.FLAGS.overwrite,
                                 runner=runner, direct_num_workers=workers, pipeline_options=options)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"Train on it: {trainer_command(sys.argv[1:], filesystem.expand(config.data.prepared_dir))}")


if __name__ == "__main__":
    flags.register_multi_flags_validator(
        ["config", "inspect"], lambda values: values["config"] is not None or bool(values["inspect"]),
        message="--config is required (except with --inspect=FOLDER).")
    app.run(main, flags_parser=cli.parse_flags)
