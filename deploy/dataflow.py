"""trainer.prepare on Dataflow: the same Beam pipeline on many machines.

    python -m deploy.dataflow --project=P [--region=us-central1] --temp_location=gs://BUCKET/tmp \\
        [--image=...] [--max_num_workers=32] [--machine_type=n2-standard-4] [--dry_run] \\
        -- --config=configs/distilgpt2.py --config.data.train_files='gs://BUCKET/corpus/*.jsonl' \\
           --config.data.prepared_dir=gs://BUCKET/prepared/corpus-512

The args after `--` are trainer.prepare's own (its --config flags, --shards, --overwrite). This
launcher adds the Dataflow flags and runs `python -m trainer.prepare` here: the machine that
launches the job builds the pipeline (it reads the tokenizer and lists the files) and waits for
it, then writes the manifest; Dataflow's workers run deploy/Dockerfile's `dataflow` image
(make docker-build-dataflow docker-push-dataflow), so they run this package with its pinned
versions and nothing is staged. --dry_run prints the command instead of running it.

Checked here, before anything is started: the project, a gs:// temp location, and gs:// data,
tokenizer and output folder (Dataflow's workers cannot see this machine's files); trainer.prepare
checks its config with the trainer's own rules when it starts.
"""

import shlex
import subprocess
import sys

import trainer  # noqa: F401  (TF_USE_LEGACY_KERAS before anything imports TensorFlow)
from absl import app, flags

from trainer.errors import UserError

flags.DEFINE_string("project", None, "Google Cloud project.")
flags.DEFINE_string("region", "us-central1", "Dataflow region; put it where the bucket is (no egress charge).")
flags.DEFINE_string("temp_location", None, "gs:// folder for Dataflow's staging and temp files.")
flags.DEFINE_string("image", None, "Worker image; default REGION-docker.pkg.dev/PROJECT/tunewell/"
                    "tunewell-dataflow:latest (make docker-build-dataflow docker-push-dataflow).")
flags.DEFINE_integer("max_num_workers", 32, "The most workers Dataflow's autoscaling may start.")
flags.DEFINE_string("machine_type", None, "Worker machine type (Dataflow's default: n1-standard-1).")
flags.DEFINE_bool("dry_run", False, "Print the trainer.prepare command instead of running it.")


def default_image(project: str, region: str) -> str:
    return f"{region}-docker.pkg.dev/{project}/tunewell/tunewell-dataflow:latest"


def _value(args: list[str], flag: str) -> str | None:
    """The value of `flag` in `args` (the --flag=value or --flag value spelling)."""
    for i, arg in enumerate(args):
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
        if arg == flag and i + 1 < len(args):
            return args[i + 1]
    return None


def prepare_command(prepare_args: list[str], project: str, region: str, temp_location: str, image: str = "",
                    max_num_workers: int = 32, machine_type: str = "") -> list[str]:
    """`python -m trainer.prepare ARGS --runner=DataflowRunner ...`, checked."""
    if not project:
        raise UserError("--project is required: the Google Cloud project to run Dataflow in.")
    if not temp_location or not temp_location.startswith("gs://"):
        raise UserError(f"--temp_location={temp_location or ''} must be a gs:// folder, e.g. gs://BUCKET/tmp: "
                        "Dataflow stages and writes temp files there.")
    if _value(prepare_args, "--config") is None:
        raise UserError("Pass trainer.prepare's flags after `--`, at least --config=configs/NAME.py, "
                        "--config.data.train_files=gs://... and --config.data.prepared_dir=gs://...")
    for flag in ("--config.data.train_files", "--config.data.prepared_dir"):
        value = _value(prepare_args, flag)
        if not value or not value.startswith("gs://"):
            raise UserError(f"{flag}={value or ''}: Dataflow's workers read and write only Google Cloud; "
                            "give a gs:// path (gsutil cp -r the data there first).")
    for flag in ("--runner", "--project", "--region", "--temp_location", "--sdk_container_image"):
        if _value(prepare_args, flag) is not None:
            raise UserError(f"{flag} after `--`: this launcher sets it; give it before `--`.")
    command = [sys.executable, "-m", "trainer.prepare", *prepare_args, "--runner=DataflowRunner",
               f"--project={project}", f"--region={region}", f"--temp_location={temp_location}",
               f"--sdk_container_image={image or default_image(project, region)}",
               f"--max_num_workers={max_num_workers}"]
    if machine_type:
        command.append(f"--beam_option=--machine_type={machine_type}")
    return command


def main(argv):
    options = flags.FLAGS
    try:
        command = prepare_command(argv[1:], options.project, options.region, options.temp_location,
                                  options.image or "", options.max_num_workers, options.machine_type or "")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if options.dry_run:
        print(shlex.join(command))
        return
    sys.exit(subprocess.run(command).returncode)


if __name__ == "__main__":
    app.run(main)
