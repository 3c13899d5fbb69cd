"""Vertex AI custom jobs and hyperparameter tuning from the command line.

    python -m deploy.vertex submit --project=P --output_dir=gs://BUCKET/runs/exp1 \\
        --config=configs/distilgpt2.py -- --config.data.train_files=gs://BUCKET/data/train.jsonl
    python -m deploy.vertex hptune ...same flags... --max_trials=12 --parallel_trials=3 -- ...
    python -m deploy.vertex status|logs|cancel JOB [--region=us-central1]
    python -m deploy.vertex rehearse HOST_DIR --image=tunewell:local -- ...   (docker run, as Vertex would)
    python -m deploy.vertex upload-model|deploy-endpoint|predict|undeploy ...   (deploy/endpoints.py)

Every command takes --dry_run: it prints the job spec and the exact gcloud command
instead of running it (the spec file it names is written, so the command runs as printed).

Why gcloud, not the client library, creates the jobs: a user needs the Google Cloud CLI
anyway (`gcloud auth login`, `gcloud auth configure-docker` for the image), so the dry
run's command is the very command that runs, and can be run by hand. google-cloud-aiplatform
is still used, for two things: every spec is parsed into its v1 proto messages before
anything is sent (a misspelled field fails here, not after a quota wait), and the console
and TensorBoard links come from its console_utils.

The container is deploy/Dockerfile's image; its entry point is `python -m trainer.task`,
and the job's args are the trainer's flags, checked here by the trainer's own parser and
settings rules before submitting. Vertex sets AIP_MODEL_DIR, AIP_CHECKPOINT_DIR and
AIP_TENSORBOARD_LOG_DIR under --output_dir (the spec's baseOutputDirectory); the trainer
writes there (trainer/vertex.py), so a restarted or preempted job resumes from its
checkpoints. In a tuning job Vertex appends each trial's id to those folders and passes
the trial's values as --config.<key>=<value>.
"""

import copy
import dataclasses
import datetime
import json
import os
import re
import shlex
import subprocess
import sys

import trainer  # noqa: F401  (TF_USE_LEGACY_KERAS before anything imports TensorFlow)
from absl import app, flags

from trainer.errors import UserError

# ---------------------------------------------------------------------------
# Machines
# ---------------------------------------------------------------------------

# The machine Vertex pairs with each GPU type and count (one node), used when
# --machine_type is not given. Counts not listed are not offered by Google Cloud.
GPU_MACHINES = {
    "NVIDIA_L4": {1: "g2-standard-8", 2: "g2-standard-24", 4: "g2-standard-48", 8: "g2-standard-96"},
    "NVIDIA_TESLA_T4": {1: "n1-standard-8", 2: "n1-standard-16", 4: "n1-standard-32"},
    "NVIDIA_TESLA_V100": {1: "n1-standard-8", 2: "n1-standard-16", 4: "n1-standard-32", 8: "n1-standard-64"},
    "NVIDIA_TESLA_A100": {1: "a2-highgpu-1g", 2: "a2-highgpu-2g", 4: "a2-highgpu-4g", 8: "a2-highgpu-8g"},
    "NVIDIA_A100_80GB": {1: "a2-ultragpu-1g", 2: "a2-ultragpu-2g", 4: "a2-ultragpu-4g", 8: "a2-ultragpu-8g"},
    "NVIDIA_H100_80GB": {8: "a3-highgpu-8g"},
}
CPU_MACHINE = "n1-standard-8"
# TPU v5e single-host slices: topology -> machine (chips = product of the topology).
# Multi-host slices (4x4 and up) need one process per host and are not offered here.
TPU_MACHINES = {"1x1": "ct5lp-hightpu-1t", "2x2": "ct5lp-hightpu-4t", "2x4": "ct5lp-hightpu-8t"}
# APIs a job needs enabled in the project.
REQUIRED_APIS = ("aiplatform.googleapis.com", "storage.googleapis.com")
REGISTRY_API = "artifactregistry.googleapis.com"
# Multi-region bucket locations and the regions inside them.
MULTI_REGIONS = {"us": "us-", "eu": "europe-", "asia": "asia-"}

def define_flags(fv=flags.FLAGS) -> None:
    """The command's flags, on `fv` (tests use a FlagValues of their own: trainer.task
    defines a global --config too)."""
    define = dict(flag_values=fv)
    flags.DEFINE_string("config", "configs/distilgpt2.py",
                        "Trainer config inside the image, e.g. configs/distilgpt2.py.", **define)
    flags.DEFINE_string("project", os.environ.get("GOOGLE_CLOUD_PROJECT") or os.environ.get("CLOUDSDK_CORE_PROJECT"),
                        "Google Cloud project id (default: $GOOGLE_CLOUD_PROJECT).", **define)
    flags.DEFINE_string("region", "us-central1", "Vertex AI region; the output bucket must be in it.", **define)
    flags.DEFINE_string("output_dir", None, "gs://BUCKET/PATH: the job's baseOutputDirectory (model/, "
                        "checkpoints/, logs/, report.json).", **define)
    flags.DEFINE_string("image", None, "Training image (default: REGION-docker.pkg.dev/PROJECT/tunewell/"
                        "tunewell:latest, tunewell-tpu with --tpu_topology), as make docker-push names it.", **define)
    flags.DEFINE_string("machine_type", None, "Compute Engine machine type (default: the one paired with the "
                        "accelerator, n1-standard-8 without one).", **define)
    flags.DEFINE_string("accelerator_type", "NVIDIA_L4",
                        "GPU type (Vertex's AcceleratorType name), or NONE for CPU only.", **define)
    flags.DEFINE_integer("accelerator_count", 1, "GPUs per node.", **define)
    flags.DEFINE_integer("workers", 0, "Worker nodes besides the chief (pool 1), each like the chief: "
                         "MultiWorkerMirroredStrategy over chief + workers.", **define)
    flags.DEFINE_string("tpu_topology", None, "TPU v5e slice, one of " + ", ".join(TPU_MACHINES) +
                        " (replaces the GPU flags; image: the TPU variant).", **define)
    flags.DEFINE_string("service_account", None,
                        "Service account the job runs as (required with --tensorboard).", **define)
    flags.DEFINE_string("tensorboard", None, "Vertex TensorBoard instance: its id or "
                        "projects/P/locations/R/tensorboards/ID.", **define)
    flags.DEFINE_boolean("spot", False, "Spot VMs (much cheaper, may be preempted): the job restarts and "
                         "resumes from its last checkpoint.", **define)
    flags.DEFINE_string("display_name", None,
                        "Job name in the console (default: tunewell-CONFIG-UTCTIME).", **define)
    flags.DEFINE_integer("boot_disk_gb", 100,
                         "Boot disk per node, GB (the image, the model, the token cache).", **define)
    flags.DEFINE_string("spec_dir", "runs/vertex", "Local folder for the spec files handed to gcloud.", **define)
    flags.DEFINE_boolean("dry_run", False, "Print the spec and the exact command instead of running it.", **define)
    flags.DEFINE_boolean("skip_checks", False,
                         "Skip the cloud preconditions (bucket region, image, APIs).", **define)
    flags.DEFINE_enum("kind", "custom", ["custom", "hptune"], "For status/logs/cancel given a bare job id: "
                      "a custom job or a tuning job (a full resource name says which).", **define)
    # Hyperparameter tuning
    flags.DEFINE_integer("max_trials", 12, "Tuning: trials in all.", **define)
    flags.DEFINE_integer("parallel_trials", 3,
                         "Tuning: trials at once (fewer = better use of earlier results).", **define)
    flags.DEFINE_string("learning_rates", "1e-5:1e-3",
                        "Tuning: peak learning rate range MIN:MAX (log scale).", **define)
    flags.DEFINE_string("warmup_ratios", "0.0:0.1",
                        "Tuning: warm-up share of the steps MIN:MAX, or empty to keep.", **define)
    flags.DEFINE_string("batch_sizes", "8,16,32", "Tuning: global batch sizes to try, or empty to keep.", **define)
    flags.DEFINE_string("epochs", "1:4",
                        "Tuning: epoch range MIN:MAX, or empty to keep the derived count.", **define)
    flags.DEFINE_string("algorithm", "", "Tuning: ALGORITHM_UNSPECIFIED (Bayesian, the default), GRID_SEARCH "
                        "or RANDOM_SEARCH.", **define)
    # Serving (deploy/endpoints.py)
    flags.DEFINE_string("artifact_uri", None, "upload-model: the run's gs://.../serving folder (default: "
                        "--output_dir/serving).", **define)
    flags.DEFINE_string("serving_image", None, "upload-model: the serving image (default: REGION-docker.pkg.dev/"
                        "PROJECT/tunewell/tunewell-serving:latest, as make docker-push-serving names it).", **define)
    flags.DEFINE_string("model", None, "deploy-endpoint: the uploaded model's id or resource name.", **define)
    flags.DEFINE_string("endpoint", None, "deploy-endpoint: the endpoint's display name (created when missing; "
                        "default tunewell) or id; predict, undeploy: its id or resource name.", **define)
    flags.DEFINE_string("serving_machine_type", "n1-standard-4", "deploy-endpoint: machine per node.", **define)
    flags.DEFINE_string("serving_accelerator_type", "NONE",
                        "deploy-endpoint: GPU per node (e.g. NVIDIA_L4), or NONE for CPU.", **define)
    flags.DEFINE_integer("serving_accelerator_count", 1, "deploy-endpoint: GPUs per node.", **define)
    flags.DEFINE_integer("min_replicas", 1, "deploy-endpoint: nodes always up (each bills per hour).", **define)
    flags.DEFINE_integer("max_replicas", 1, "deploy-endpoint: nodes at most under load.", **define)
    flags.DEFINE_integer("traffic_percent", 100, "deploy-endpoint: share of the endpoint's traffic for this "
                         "model (the rest stays with its other deployed models).", **define)
    flags.DEFINE_multi_string("prompt", None, "predict: a prompt; repeat for several.", **define)
    flags.DEFINE_integer("max_new_tokens", 64, "predict: new tokens per prompt, at most.", **define)
    flags.DEFINE_float("temperature", 0.0, "predict: 0 = greedy; above 0, sampled.", **define)
    flags.DEFINE_integer("seed", 0, "predict: the sampling seed.", **define)
    flags.DEFINE_string("deployed_model_id", None, "undeploy: this deployed model only (default: all of them).",
                        **define)
    flags.DEFINE_boolean("delete_endpoint", False, "undeploy: delete the endpoint too.", **define)


@dataclasses.dataclass
class Target:
    """Where and on what a job runs: everything in the spec but the trainer's args."""
    project: str
    region: str
    output_dir: str
    image: str = ""
    machine_type: str = ""
    accelerator_type: str = "NVIDIA_L4"
    accelerator_count: int = 1
    workers: int = 0
    tpu_topology: str = ""
    service_account: str = ""
    tensorboard: str = ""
    spot: bool = False
    boot_disk_gb: int = 100

    @property
    def gpu(self) -> bool:
        return not self.tpu_topology and self.accelerator_type.upper() not in ("", "NONE")

    def default_image(self) -> str:
        name = "tunewell-tpu" if self.tpu_topology else "tunewell"
        return f"{self.region}-docker.pkg.dev/{self.project}/tunewell/{name}:latest"

    def tensorboard_name(self, project: str = "") -> str:
        """The instance's resource name; `project` may be the project's number (job names carry it)."""
        if not self.tensorboard or self.tensorboard.startswith("projects/"):
            return self.tensorboard
        return f"projects/{project or self.project}/locations/{self.region}/tensorboards/{self.tensorboard}"


def machine_spec(target: Target) -> dict:
    if target.tpu_topology:
        if target.tpu_topology not in TPU_MACHINES:
            raise UserError(f"--tpu_topology={target.tpu_topology}: use one of {', '.join(TPU_MACHINES)} "
                            "(single-host TPU v5e slices).")
        if target.workers:
            raise UserError("--workers with --tpu_topology: a TPU slice is one node here; leave --workers=0.")
        return {"machineType": target.machine_type or TPU_MACHINES[target.tpu_topology],
                "tpuTopology": target.tpu_topology}
    if not target.gpu:
        return {"machineType": target.machine_type or CPU_MACHINE}
    kind, count = target.accelerator_type.upper(), target.accelerator_count
    machines = GPU_MACHINES.get(kind)
    if machines is None and not target.machine_type:
        raise UserError(f"--accelerator_type={target.accelerator_type}: no default machine for it; use one of "
                        f"{', '.join(GPU_MACHINES)}, or also give --machine_type.")
    if not target.machine_type and count not in machines:
        raise UserError(f"--accelerator_count={count} with {kind}: use one of {sorted(machines)}.")
    return {"machineType": target.machine_type or machines[count], "acceleratorType": kind,
            "acceleratorCount": count}


# ---------------------------------------------------------------------------
# Specs
# ---------------------------------------------------------------------------

def container_args(config_path: str, overrides) -> list:
    """The trainer's command line inside the container (after its entry point)."""
    return [f"--config={config_path}", *overrides]


def custom_job_spec(target: Target, args: list) -> dict:
    """A CustomJobSpec in the REST API's camelCase, as `gcloud ai custom-jobs create --config` takes it.
    Pool 0 is the chief (one replica); pool 1, when --workers > 0, the workers."""
    machine = machine_spec(target)
    pool = {"machineSpec": machine, "replicaCount": 1,
            "containerSpec": {"imageUri": target.image or target.default_image(), "args": list(args)}}
    if not target.tpu_topology:  # TPU VMs come with their own boot disk
        pool["diskSpec"] = {"bootDiskType": "pd-ssd", "bootDiskSizeGb": target.boot_disk_gb}
    pools = [pool]
    if target.workers:
        pools.append({**copy.deepcopy(pool), "replicaCount": target.workers})
    spec = {"workerPoolSpecs": pools, "baseOutputDirectory": {"outputUriPrefix": target.output_dir}}
    if target.service_account:
        spec["serviceAccount"] = target.service_account
    if target.tensorboard:
        spec["tensorboard"] = target.tensorboard_name()
    if target.spot or target.workers:
        # A preempted spot VM, or a lost worker (MultiWorkerMirroredStrategy cannot carry on
        # without it), restarts the whole job; the trainer resumes from its latest checkpoint.
        spec["scheduling"] = {"restartJobOnWorkerRestart": True}
        if target.spot:
            spec["scheduling"]["strategy"] = "SPOT"
    return spec


def parse_range(flag: str, text: str, kind=float):
    try:
        low, high = (kind(v) for v in text.split(":"))
    except ValueError:
        raise UserError(f"--{flag}={text!r}: write MIN:MAX, e.g. 1e-5:1e-3.") from None
    if not low < high:
        raise UserError(f"--{flag}={text!r}: MIN must be below MAX.")
    return low, high


def study_spec(learning_rates: str, warmup_ratios: str, batch_sizes: str, epochs: str, algorithm: str = "") -> dict:
    """The search: the trainer's reported metric and one parameter per tuned config key.
    A parameterId is the trainer flag itself: Vertex passes --config.optim.learning_rate=VALUE."""
    from trainer import vertex as trainer_vertex

    low, high = parse_range("learning_rates", learning_rates)
    parameters = [{"parameterId": "config.optim.learning_rate", "scaleType": "UNIT_LOG_SCALE",
                   "doubleValueSpec": {"minValue": low, "maxValue": high}}]
    if warmup_ratios:
        low, high = parse_range("warmup_ratios", warmup_ratios)
        parameters.append({"parameterId": "config.optim.warmup_ratio", "scaleType": "UNIT_LINEAR_SCALE",
                           "doubleValueSpec": {"minValue": low, "maxValue": high}})
    if batch_sizes:
        try:
            sizes = sorted({int(v) for v in batch_sizes.split(",")})
        except ValueError:
            raise UserError(f"--batch_sizes={batch_sizes!r}: write whole numbers, e.g. 8,16,32.") from None
        # Categorical, not discrete: Vertex passes a discrete value as a double ("16.0"),
        # which the trainer's integer flag would reject; a category is passed verbatim.
        parameters.append({"parameterId": "config.train.batch_size",
                           "categoricalValueSpec": {"values": [str(v) for v in sizes]}})
    if epochs:
        low, high = parse_range("epochs", epochs, int)
        parameters.append({"parameterId": "config.train.epochs", "scaleType": "UNIT_LINEAR_SCALE",
                           "integerValueSpec": {"minValue": low, "maxValue": high}})
    spec = {"metrics": [{"metricId": trainer_vertex.HYPERTUNE_METRIC, "goal": "MINIMIZE"}],
            "parameters": parameters,
            # The trainer's last report of a trial is its best validation loss (the exported weights).
            "measurementSelectionType": "LAST_MEASUREMENT"}
    if algorithm:
        spec["algorithm"] = algorithm
    return spec


def hptune_job(display_name: str, target: Target, args: list, study: dict, max_trials: int,
               parallel_trials: int) -> dict:
    """A HyperparameterTuningJob, as `gcloud ai hp-tuning-jobs create --config` takes it."""
    if not 1 <= parallel_trials <= max_trials:
        raise UserError(f"--parallel_trials={parallel_trials} must be between 1 and --max_trials={max_trials}.")
    return {"displayName": display_name, "studySpec": study, "maxTrialCount": max_trials,
            "parallelTrialCount": parallel_trials, "trialJobSpec": custom_job_spec(target, args)}


def to_proto(spec: dict, message: str):
    """Parse a spec into google.cloud.aiplatform_v1's message (CustomJobSpec or
    HyperparameterTuningJob): an unknown field or a wrong enum value raises UserError."""
    try:
        from google.cloud.aiplatform_v1 import types
        from google.protobuf import json_format
    except ImportError:
        raise UserError("google-cloud-aiplatform is not installed: pip install -e '.[deploy]'.") from None
    cls = getattr(types, message)
    try:
        return cls.wrap(json_format.ParseDict(spec, cls.pb()()))
    except json_format.ParseError as e:
        raise UserError(f"the {message} spec does not parse as Vertex AI's API: {e}") from None


# ---------------------------------------------------------------------------
# Checks before submitting
# ---------------------------------------------------------------------------

def trainer_config(args: list):
    """The config trainer.task builds from these args (its own flag parser, in a fresh
    flag namespace) after its settings rules: a typo fails here, not on the cloud."""
    from ml_collections import config_flags

    from trainer import settings

    path = next((a.split("=", 1)[1] for a in args if a.startswith("--config=")), "")
    if not os.path.isfile(path):
        raise UserError(f"--config={path}: no such file here. Run from the repository root; the image holds "
                        "the same configs/ folder.")
    argv = ["trainer.task", *args]
    values = flags.FlagValues()
    # sys_argv: config_flags registers the --config.* overrides it finds there when defined.
    config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True, sys_argv=argv)
    try:
        values(argv)
    except flags.Error as e:
        raise UserError(f"the trainer would reject its args: {e}") from None
    except (AttributeError, KeyError):
        raise UserError(f"the trainer would reject its args: {settings.unknown_key_message(argv)}") from None
    config = values.config
    settings.check(config)
    return config


def check_local(target: Target, config, config_path: str) -> None:
    """What can be checked without the cloud: paths the job's machines can reach."""
    if not (target.output_dir or "").startswith("gs://"):
        raise UserError(f"--output_dir={target.output_dir!r}: a job writes to Cloud Storage; give gs://BUCKET/PATH "
                        "(a local folder would vanish with the job's VM).")
    if not target.project:
        raise UserError("--project is required (or set GOOGLE_CLOUD_PROJECT).")
    if target.tensorboard and not target.service_account:
        raise UserError("--tensorboard needs --service_account: Vertex uploads to a TensorBoard instance only as a "
                        "service account with roles/aiplatform.user and roles/storage.admin on the bucket.")
    if os.path.isabs(config_path) or not config_path.startswith("configs/"):
        raise UserError(f"--config={config_path}: the job runs the config inside the image; put it under "
                        "configs/ and rebuild the image (make docker-build docker-push).")
    keys = ["data.train_files", "data.validation_files", "data.prepared_dir", "model.tokenizer"]
    if not config.model.bootstrap_tiny:  # else the trainer builds the model inside the job
        keys.append("model.name_or_path")
    for key in keys:
        section, name = key.split(".")
        for path in filter(None, str(config[section][name]).split(",")):
            path = path.strip()
            if path.startswith("gs://") or (key.startswith("model.") and not _looks_local(path)):
                continue
            if os.path.isabs(path) or path.startswith("~") or not path.startswith("data/"):
                raise UserError(f"--config.{key}={path}: the job's machines cannot see this machine's files. "
                                "Upload it (gcloud storage cp -r PATH gs://BUCKET/...) and pass the gs:// path; "
                                "only data/ is inside the image.")


def _looks_local(path: str) -> bool:
    """A model path that is a folder here, rather than a hub name such as distilgpt2."""
    return path.startswith((".", "/", "~")) or os.path.exists(path)


class Gcloud:
    """Runs gcloud (or, with dry_run, prints what it would run). `run` is injectable for tests."""

    def __init__(self, dry_run: bool = False, run=subprocess.run, out=print):
        self.dry_run, self._run, self.out = dry_run, run, out

    def __call__(self, *args, stream: bool = False) -> str:
        command = ["gcloud", *args]
        if self.dry_run:
            self.out("$ " + shlex.join(command))
            return ""
        try:
            if stream:  # logs: gcloud writes straight to the terminal until the job ends
                result = self._run(command)
                output = ""
            else:
                result = self._run(command, capture_output=True, text=True)
                output = result.stdout
        except FileNotFoundError:
            raise UserError("gcloud is not installed: https://cloud.google.com/sdk/docs/install, then "
                            "gcloud auth login && gcloud auth application-default login.") from None
        if result.returncode != 0:
            detail = (getattr(result, "stderr", "") or "").strip().splitlines()
            raise CommandFailed(command, detail[-1] if detail else f"exit status {result.returncode}")
        return output


class CommandFailed(UserError):
    def __init__(self, command, detail):
        super().__init__(f"{shlex.join(command)} failed: {detail}")
        self.detail = detail


def check_cloud(target: Target, gcloud: Gcloud) -> list:
    """The preconditions that need the project: APIs, the bucket's region, the image.
    Raises UserError with the fix; returns notes worth printing. A dry run prints the
    three commands and judges nothing."""
    notes = []
    image = target.image or target.default_image()
    in_registry = ".pkg.dev/" in image or image.split("/")[0].endswith("gcr.io")
    bucket = target.output_dir.split("/")[2]
    enabled = gcloud("services", "list", "--enabled", f"--project={target.project}", "--format=value(config.name)")
    try:
        location = gcloud("storage", "buckets", "describe", f"gs://{bucket}", f"--project={target.project}",
                          "--format=value(location)").strip().lower()
    except CommandFailed as e:
        raise UserError(f"bucket gs://{bucket} (--output_dir) cannot be read: {e.detail}. Fix: gcloud storage "
                        f"buckets create gs://{bucket} --location={target.region} --project={target.project}") from None
    try:
        if in_registry:
            gcloud("artifacts", "docker", "images", "describe", image, "--format=value(image_summary.digest)")
    except CommandFailed as e:
        raise UserError(f"image {image} not found ({e.detail}). Fix: make docker-build docker-push "
                        f"IMAGE={image}") from None
    if gcloud.dry_run:
        return notes
    needed = list(REQUIRED_APIS) + ([REGISTRY_API] if ".pkg.dev/" in image else [])
    missing = [api for api in needed if api not in enabled.split()]
    if missing:
        raise UserError(f"API(s) not enabled in project {target.project}: {', '.join(missing)}. Fix: gcloud services "
                        f"enable {' '.join(missing)} --project={target.project}")
    if location in MULTI_REGIONS and target.region.startswith(MULTI_REGIONS[location]):
        notes.append(f"bucket gs://{bucket} is in multi-region {location.upper()}, which contains {target.region}.")
    elif location != target.region:
        raise UserError(f"bucket gs://{bucket} is in {location}, the job would run in {target.region}: every "
                        f"checkpoint would cross regions (slower, and billed). Fix: --region={location}, or a bucket "
                        f"in {target.region}: gcloud storage buckets create gs://NEW --location={target.region}")
    if not in_registry:
        notes.append(f"image {image} is not in Artifact Registry: not checked.")
    return notes


# ---------------------------------------------------------------------------
# Jobs: names, links
# ---------------------------------------------------------------------------

JOB_NAME = re.compile(r"projects/(?P<project>[^/]+)/locations/(?P<region>[^/]+)/"
                      r"(?P<collection>customJobs|hyperparameterTuningJobs)/(?P<id>[^/]+)$")
COLLECTIONS = {"custom": ("customJobs", "custom-jobs"), "hptune": ("hyperparameterTuningJobs", "hp-tuning-jobs")}


def job_ref(job: str, project: str, region: str, kind: str) -> dict:
    """{project, region, id, group (gcloud's), name (the full resource name)} from an id or a name."""
    match = JOB_NAME.match(job)
    if match:
        kind = "custom" if match["collection"] == "customJobs" else "hptune"
        project, region, job = match["project"], match["region"], match["id"]
    elif "/" in job or not job:
        raise UserError(f"JOB={job!r}: give the job's id (the number in its name) or its full resource name "
                        "projects/P/locations/R/customJobs/ID.")
    collection, group = COLLECTIONS[kind]
    return {"project": project, "region": region, "id": job, "group": group, "kind": kind,
            "name": f"projects/{project}/locations/{region}/{collection}/{job}"}


def console_link(ref: dict) -> str:
    """The job's page in the Cloud console (the format of aiplatform's console_utils)."""
    if ref["kind"] == "custom":
        from google.cloud.aiplatform.utils import console_utils
        return console_utils.custom_job_console_uri(ref["name"])
    return (f"https://console.cloud.google.com/agent-platform/locations/{ref['region']}/training/"
            f"{ref['id']}?project={ref['project']}")


def tensorboard_link(tensorboard_name: str, ref: dict) -> str:
    from google.cloud.aiplatform.utils import console_utils
    return console_utils.custom_job_tensorboard_console_uri(tensorboard_name, ref["name"])


def default_display_name(config_path: str, now=None) -> str:
    now = now or datetime.datetime.now(datetime.timezone.utc)
    stem = os.path.splitext(os.path.basename(config_path))[0].replace("_", "-")
    return f"tunewell-{stem}-{now:%Y%m%d-%H%M%S}"


def write_spec(spec_dir: str, display_name: str, spec: dict) -> str:
    import yaml

    os.makedirs(spec_dir, exist_ok=True)
    path = os.path.join(spec_dir, f"{display_name}.yaml")
    with open(path, "w") as f:
        yaml.safe_dump(spec, f, sort_keys=False)
    return path


# ---------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------

def target_from(opts) -> Target:
    return Target(project=opts.project or "", region=opts.region, output_dir=opts.output_dir or "",
                  image=opts.image or "", machine_type=opts.machine_type or "",
                  accelerator_type=opts.accelerator_type or "", accelerator_count=opts.accelerator_count,
                  workers=opts.workers, tpu_topology=opts.tpu_topology or "",
                  service_account=opts.service_account or "", tensorboard=opts.tensorboard or "",
                  spot=opts.spot, boot_disk_gb=opts.boot_disk_gb)


def submit(kind: str, overrides: list, opts, gcloud: Gcloud, out=print) -> dict:
    """Build, check and create a custom job ("custom") or a tuning job ("hptune")."""
    target = target_from(opts)
    args = container_args(opts.config, overrides)
    config = trainer_config(args)
    check_local(target, config, opts.config)
    display_name = opts.display_name or default_display_name(opts.config)
    if kind == "custom":
        spec, message, group = custom_job_spec(target, args), "CustomJobSpec", "custom-jobs"
    else:
        study = study_spec(opts.learning_rates, opts.warmup_ratios, opts.batch_sizes, opts.epochs,
                           opts.algorithm)
        for values in _trial_corners(study):  # every trial's args must pass the trainer's rules too
            trainer_config(args + values)
        spec = hptune_job(display_name, target, args, study, opts.max_trials, opts.parallel_trials)
        message, group = "HyperparameterTuningJob", "hp-tuning-jobs"
    to_proto(spec, message)
    path = write_spec(opts.spec_dir, display_name, spec)
    if gcloud.dry_run:
        import yaml
        out(f"# {path} ({message}, checked against google.cloud.aiplatform_v1)")
        out(yaml.safe_dump(spec, sort_keys=False).rstrip())
        out("# Checks run before a real submit: APIs enabled, bucket region, image exists:")
        check_cloud(target, gcloud)
        out("# The job:")
    elif not opts.skip_checks:
        for note in check_cloud(target, gcloud):
            out(f"note: {note}")
    created = gcloud("ai", group, "create", f"--project={target.project}", f"--region={target.region}",
                     f"--display-name={display_name}", f"--config={path}", "--format=json")
    if gcloud.dry_run:
        return spec
    job = json.loads(created)
    ref = job_ref(job["name"], target.project, target.region, kind)
    out(f"Created {job['name']} ({display_name}).")
    out(f"Console: {console_link(ref)}")
    if target.tensorboard and kind == "custom":
        out(f"TensorBoard: {tensorboard_link(target.tensorboard_name(ref['project']), ref)}")
    out(f"TensorBoard from here: make tensorboard LOGDIR={target.output_dir.rstrip('/')}"
        f"{'/logs' if kind == 'custom' else ''}")
    out(f"Logs: python -m deploy.vertex logs {job['name']}")
    return job


def _trial_corners(study: dict) -> list:
    """The smallest and largest value of every parameter, as trainer flags."""
    lows, highs = [], []
    for p in study["parameters"]:
        spec = next(v for k, v in p.items() if k.endswith("ValueSpec"))
        values = sorted(spec["values"], key=float) if "values" in spec else [spec["minValue"], spec["maxValue"]]
        lows.append(f"--{p['parameterId']}={values[0]}")
        highs.append(f"--{p['parameterId']}={values[-1]}")
    return [lows, highs]


def status(ref: dict, gcloud: Gcloud, out=print) -> dict:
    described = gcloud("ai", ref["group"], "describe", ref["id"], f"--project={ref['project']}",
                       f"--region={ref['region']}", "--format=json")
    if gcloud.dry_run:
        return {}
    job = json.loads(described)
    out(f"{job.get('displayName', ref['id'])}: {job.get('state', 'UNKNOWN')}")
    for key in ("createTime", "startTime", "endTime"):
        if key in job:
            out(f"  {key}: {job[key]}")
    if job.get("error"):
        out(f"  error: {job['error'].get('message', job['error'])}")
    trials = job.get("trials", [])
    if trials:
        from trainer import vertex as trainer_vertex

        def loss(trial):
            metrics = trial.get("finalMeasurement", {}).get("metrics", [])
            return next((m["value"] for m in metrics if m.get("metricId") == trainer_vertex.HYPERTUNE_METRIC), None)
        done = [t for t in trials if loss(t) is not None]
        out(f"  trials: {len(trials)} started, {len(done)} reported")
        if done:
            best = min(done, key=loss)
            values = " ".join(f"--{p['parameterId']}={p['value']}" for p in best.get("parameters", []))
            out(f"  best: trial {best['id']}, {trainer_vertex.HYPERTUNE_METRIC} {loss(best):.4f}: {values}")
    out(f"  console: {console_link(ref)}")
    return job


# The folders Vertex names in a job's environment, under baseOutputDirectory.
AIP_FOLDERS = {"AIP_MODEL_DIR": "model", "AIP_CHECKPOINT_DIR": "checkpoints", "AIP_TENSORBOARD_LOG_DIR": "logs"}


def rehearsal_command(spec: dict, host_dir: str, docker: str = "docker") -> list:
    """`docker run` of the chief's container exactly as Vertex starts it: the spec's image
    and args, its env, and the AIP_* folders (here under host_dir, mounted at /aip).
    No network: a job must not need this machine's files or a download to start."""
    container = spec["workerPoolSpecs"][0]["containerSpec"]
    env = {**{e["name"]: e["value"] for e in container.get("env", [])},
           **{k: f"/aip/{v}/" for k, v in AIP_FOLDERS.items()},
           # Off Google Cloud there is no metadata server: the TPU image's libtpu would retry
           # it for minutes at import (on a real TPU VM it answers). No effect on other images.
           "TPU_SKIP_MDS_QUERY": "1"}
    return [docker, "run", "--rm", "--network=none", "-v", f"{os.path.abspath(host_dir)}:/aip",
            *[f"--env={k}={v}" for k, v in env.items()], container["imageUri"], *container["args"]]


def rehearse(overrides: list, host_dir: str, opts, run=subprocess.run, out=print) -> int:
    """Run the job's container here (CPU, no accelerator), outputs in host_dir."""
    target = dataclasses.replace(target_from(opts), project=opts.project or "local",
                                 output_dir=opts.output_dir or "gs://rehearsal", accelerator_type="NONE",
                                 image=opts.image or "tunewell:local")
    args = container_args(opts.config, overrides)
    trainer_config(args)
    spec = custom_job_spec(target, args)
    to_proto(spec, "CustomJobSpec")
    os.makedirs(host_dir, exist_ok=True)
    command = rehearsal_command(spec, host_dir)
    out("$ " + shlex.join(command))
    if opts.dry_run:
        return 0
    return run(command).returncode


def main(argv):
    opts = flags.FLAGS
    command, rest = (argv[1], argv[2:]) if len(argv) > 1 else ("", [])
    gcloud = Gcloud(dry_run=opts.dry_run)
    try:
        if command in ("submit", "hptune"):
            stray = [a for a in rest if not a.startswith("--config.")]
            if stray:
                raise UserError(f"unexpected {' '.join(stray)}: trainer overrides go after --, "
                                "as --config.section.key=value.")
            submit("custom" if command == "submit" else "hptune", rest, opts, gcloud)
        elif command in ("upload-model", "deploy-endpoint", "predict", "undeploy"):
            from deploy import endpoints  # the serving commands build on this module's Gcloud and to_proto

            endpoints.run(command, rest, opts, gcloud)
        elif command == "rehearse":
            if not rest or rest[0].startswith("--"):
                raise UserError("usage: python -m deploy.vertex rehearse HOST_DIR [--image=I --config=C] "
                                "[-- trainer overrides]")
            sys.exit(rehearse(rest[1:], rest[0], opts))
        elif command in ("status", "logs", "cancel"):
            if len(rest) != 1:
                raise UserError(f"usage: python -m deploy.vertex {command} JOB [--region=R --project=P]")
            ref = job_ref(rest[0], opts.project or "", opts.region, opts.kind)
            if not ref["project"]:
                raise UserError("--project is required with a bare job id (or pass the full resource name).")
            if command == "status":
                status(ref, gcloud)
            elif command == "logs":
                gcloud("ai", ref["group"], "stream-logs", ref["id"], f"--project={ref['project']}",
                       f"--region={ref['region']}", stream=True)
            else:
                gcloud("ai", ref["group"], "cancel", ref["id"], f"--project={ref['project']}",
                       f"--region={ref['region']}")
                if not gcloud.dry_run:
                    print(f"Cancel requested for {ref['name']}; status shows CANCELLING, then CANCELLED.")
        else:
            raise UserError("usage: python -m deploy.vertex submit|hptune|rehearse|status|logs|cancel|upload-model|"
                            "deploy-endpoint|predict|undeploy [flags] [-- trainer overrides]; --helpfull lists "
                            "the flags.")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    define_flags()
    app.run(main)
