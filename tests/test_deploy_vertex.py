"""deploy.vertex: job specs parsed into Vertex AI's real v1 protos, the trainer accepting
their container args, the preconditions, and the commands each subcommand runs.

The Vertex API itself cannot exist here: gcloud is replaced by a recorder that answers
the way gcloud does (its --format=json / value() output)."""

import json
import os
import subprocess
import sys
import types

import pytest
import yaml
from absl import flags
from google.cloud.aiplatform_v1 import types as v1

from deploy import vertex
from trainer import vertex as trainer_vertex
from trainer.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OVERRIDES = ["--config.data.train_files=gs://bkt/data/train.jsonl", "--config.train.max_steps=500"]


def target(**kw):
    return vertex.Target(**{"project": "proj", "region": "us-central1", "output_dir": "gs://bkt/runs/a", **kw})


def options(*argv):
    fv = flags.FlagValues()
    vertex.define_flags(fv)
    fv(["deploy.vertex", "--project=proj", "--output_dir=gs://bkt/runs/a", f"--spec_dir={os.devnull}x", *argv])
    return fv


def parsed(spec, message="CustomJobSpec"):
    proto = vertex.to_proto(spec, message)
    assert isinstance(proto, getattr(v1, message))
    return proto


def round_trip(args):
    """The config trainer.task's own parse_flags builds from args, in a fresh process."""
    code = ("import sys; from trainer import cli; cli.parse_flags(['trainer.task', *sys.argv[1:]]); "
            "print(cli.CONFIG.value.to_json())")
    out = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture(autouse=True)
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)  # config paths are relative to the repository, as in the image's /app


def test_one_node_one_gpu_and_its_args_round_trip_through_the_trainer():
    args = vertex.container_args("configs/distilgpt2.py", OVERRIDES)
    spec = vertex.custom_job_spec(target(), args)
    job = parsed(spec)
    (pool,) = job.worker_pool_specs
    assert pool.machine_spec.machine_type == "g2-standard-8"
    assert pool.machine_spec.accelerator_type == v1.AcceleratorType.NVIDIA_L4
    assert pool.machine_spec.accelerator_count == 1 and pool.replica_count == 1
    assert pool.container_spec.image_uri == "us-central1-docker.pkg.dev/proj/tunewell/tunewell:latest"
    assert list(pool.container_spec.args) == args
    assert job.base_output_directory.output_uri_prefix == "gs://bkt/runs/a"
    assert not job.scheduling.restart_job_on_worker_restart  # one node, on demand
    config = vertex.trainer_config(args)
    assert config.data.train_files == "gs://bkt/data/train.jsonl" and config.train.max_steps == 500
    assert round_trip(args) == json.loads(config.to_json())


def test_one_node_eight_gpus():
    job = parsed(vertex.custom_job_spec(target(accelerator_type="NVIDIA_TESLA_A100", accelerator_count=8),
                                        ["--config=configs/distilgpt2.py"]))
    machine = job.worker_pool_specs[0].machine_spec
    assert (machine.machine_type, machine.accelerator_type, machine.accelerator_count) == \
        ("a2-highgpu-8g", v1.AcceleratorType.NVIDIA_TESLA_A100, 8)


def test_chief_and_three_workers_restart_together_on_spot():
    job = parsed(vertex.custom_job_spec(target(workers=3, spot=True), ["--config=configs/distilgpt2.py"]))
    chief, workers = job.worker_pool_specs
    assert chief.replica_count == 1 and workers.replica_count == 3
    assert chief.machine_spec == workers.machine_spec and chief.container_spec == workers.container_spec
    assert job.scheduling.restart_job_on_worker_restart
    assert job.scheduling.strategy == v1.Scheduling.Strategy.SPOT


def test_tpu_v5e_2x2():
    job = parsed(vertex.custom_job_spec(target(tpu_topology="2x2"), ["--config=configs/distilgpt2.py"]))
    (pool,) = job.worker_pool_specs
    assert pool.machine_spec.machine_type == "ct5lp-hightpu-4t" and pool.machine_spec.tpu_topology == "2x2"
    assert pool.machine_spec.accelerator_count == 0  # the machine type names the chips
    assert pool.container_spec.image_uri.endswith("/tunewell/tunewell-tpu:latest")
    with pytest.raises(UserError, match="single-host"):
        vertex.custom_job_spec(target(tpu_topology="4x4"), [])


def test_tuning_job_reports_the_trainers_metric_and_every_trial_parses():
    study = vertex.study_spec("1e-5:1e-3", "0.0:0.1", "8,16,32", "1:4")
    spec = vertex.hptune_job("hp", target(service_account="sa@proj.iam.gserviceaccount.com",
                                          tensorboard="123"), vertex.container_args("configs/local.py", []),
                             study, max_trials=12, parallel_trials=3)
    job = parsed(spec, "HyperparameterTuningJob")
    (metric,) = job.study_spec.metrics
    assert metric.metric_id == trainer_vertex.HYPERTUNE_METRIC == "eval_loss"
    assert metric.goal == v1.StudySpec.MetricSpec.GoalType.MINIMIZE
    by_id = {p.parameter_id: p for p in job.study_spec.parameters}
    lr = by_id["config.optim.learning_rate"]
    assert (lr.double_value_spec.min_value, lr.double_value_spec.max_value) == (1e-5, 1e-3)
    assert lr.scale_type == v1.StudySpec.ParameterSpec.ScaleType.UNIT_LOG_SCALE
    assert list(by_id["config.train.batch_size"].categorical_value_spec.values) == ["8", "16", "32"]
    assert by_id["config.train.epochs"].integer_value_spec.max_value == 4
    assert (job.max_trial_count, job.parallel_trial_count) == (12, 3)
    assert job.trial_job_spec.tensorboard == "projects/proj/locations/us-central1/tensorboards/123"
    # Vertex appends --<parameterId>=<value> to the trial's args.
    trial = list(job.trial_job_spec.worker_pool_specs[0].container_spec.args) + [
        "--config.optim.learning_rate=0.00031", "--config.optim.warmup_ratio=0.05",
        "--config.train.batch_size=32", "--config.train.epochs=2"]
    config = round_trip(trial)
    assert (config["optim"]["learning_rate"], config["train"]["batch_size"], config["train"]["epochs"]) == \
        (0.00031, 32, 2)


def test_a_misspelled_field_fails_against_the_real_proto():
    spec = vertex.custom_job_spec(target(), ["--config=configs/local.py"])
    spec["workerPoolSpecs"][0]["machineSpec"]["acceleratorCont"] = 2
    with pytest.raises(UserError, match="acceleratorCont"):
        vertex.to_proto(spec, "CustomJobSpec")
    spec = vertex.custom_job_spec(target(), [])
    spec["workerPoolSpecs"][0]["machineSpec"]["acceleratorType"] = "NVIDIA_L5"
    with pytest.raises(UserError, match="NVIDIA_L5"):
        vertex.to_proto(spec, "CustomJobSpec")


@pytest.mark.parametrize("change, args, message", [
    ({"tensorboard": "123"}, OVERRIDES, "--tensorboard needs --service_account"),
    ({"output_dir": "runs/here"}, OVERRIDES, "gs://BUCKET/PATH"),
    ({}, ["--config.data.train_files=/home/me/corpus.jsonl"], "cannot see this machine's files"),
    ({}, ["--config.data.train_files=~/corpus.jsonl"], "cannot see this machine's files"),
])
def test_local_preconditions(change, args, message):
    args = vertex.container_args("configs/distilgpt2.py", args)
    with pytest.raises(UserError, match=message):
        vertex.check_local(target(**change), vertex.trainer_config(args), "configs/distilgpt2.py")


def test_the_trainer_rejects_bad_args_before_anything_is_submitted():
    with pytest.raises(UserError, match="Did you mean --config.optim.learning_rate"):
        vertex.trainer_config(["--config=configs/local.py", "--config.train.learning_rate=1e-4"])
    with pytest.raises(UserError, match="max_steps=-1 is not valid"):
        vertex.trainer_config(["--config=configs/local.py", "--config.train.max_steps=-1"])
    with pytest.raises(UserError, match="configs/nope.py: no such file here"):
        vertex.trainer_config(["--config=configs/nope.py"])
    with pytest.raises(UserError, match="accelerator_count=3"):
        vertex.machine_spec(target(accelerator_count=3))
    with pytest.raises(UserError, match="put it under configs/"):
        vertex.check_local(target(), vertex.trainer_config(["--config=configs/local.py"]), "/tmp/mine.py")


class FakeGcloud:
    """Answers gcloud commands like a project would; records what was run."""

    def __init__(self, apis=("aiplatform.googleapis.com", "storage.googleapis.com",
                             "artifactregistry.googleapis.com"), location="US-CENTRAL1", image=True):
        self.apis, self.location, self.image, self.commands = apis, location, image, []

    def __call__(self, command, capture_output=True, text=True):
        self.commands.append(command)
        ok = types.SimpleNamespace(returncode=0, stdout="", stderr="")
        sub = command[1:4]
        if sub == ["services", "list", "--enabled"]:
            ok.stdout = "\n".join(self.apis) + "\n"
        elif sub == ["storage", "buckets", "describe"]:
            ok.stdout = self.location + "\n"
        elif sub == ["artifacts", "docker", "images"] and not self.image:
            return types.SimpleNamespace(returncode=1, stdout="", stderr="ERROR: NOT_FOUND: image not found")
        elif sub == ["ai", "custom-jobs", "create"]:
            ok.stdout = json.dumps({"name": "projects/123456/locations/us-central1/customJobs/789"})
        elif sub == ["ai", "custom-jobs", "describe"]:
            ok.stdout = json.dumps({"displayName": "tunewell-x", "state": "JOB_STATE_RUNNING",
                                    "createTime": "2026-11-25T10:00:00Z"})
        elif sub == ["ai", "hp-tuning-jobs", "describe"]:
            ok.stdout = json.dumps({"displayName": "hp", "state": "JOB_STATE_RUNNING", "trials": [
                {"id": "1", "state": "SUCCEEDED", "parameters": [{"parameterId": "config.optim.learning_rate",
                                                                  "value": 0.0003}],
                 "finalMeasurement": {"metrics": [{"metricId": "eval_loss", "value": 2.5}]}},
                {"id": "2", "state": "SUCCEEDED", "parameters": [{"parameterId": "config.optim.learning_rate",
                                                                  "value": 0.0001}],
                 "finalMeasurement": {"metrics": [{"metricId": "eval_loss", "value": 2.25}]}},
                {"id": "3", "state": "ACTIVE"}]})
        return ok


@pytest.mark.parametrize("fake, message", [
    (FakeGcloud(apis=("storage.googleapis.com",)),
     "gcloud services enable aiplatform.googleapis.com artifactregistry.googleapis.com --project=proj"),
    (FakeGcloud(location="EUROPE-WEST4"), "is in europe-west4, the job would run in us-central1"),
    (FakeGcloud(image=False), "make docker-build docker-push IMAGE=us-central1-docker.pkg.dev/proj/"),
])
def test_cloud_preconditions_name_the_fix(fake, message):
    with pytest.raises(UserError, match=message.replace(".", r"\.")):
        vertex.check_cloud(target(), vertex.Gcloud(run=fake))


def test_cloud_preconditions_pass_and_a_multi_region_bucket_is_a_note():
    assert vertex.check_cloud(target(), vertex.Gcloud(run=FakeGcloud())) == []
    notes = vertex.check_cloud(target(), vertex.Gcloud(run=FakeGcloud(location="US")))
    assert notes == ["bucket gs://bkt is in multi-region US, which contains us-central1."]


def test_submit_creates_the_job_and_prints_its_links(tmp_path):
    fake, printed = FakeGcloud(), []
    opts = options(f"--spec_dir={tmp_path}", "--config=configs/distilgpt2.py", "--display_name=exp",
                   "--service_account=sa@proj.iam.gserviceaccount.com", "--tensorboard=555")
    vertex.submit("custom", OVERRIDES, opts, vertex.Gcloud(run=fake), out=printed.append)
    create = fake.commands[-1]
    assert create == ["gcloud", "ai", "custom-jobs", "create", "--project=proj", "--region=us-central1",
                      "--display-name=exp", f"--config={tmp_path}/exp.yaml", "--format=json"]
    written = yaml.safe_load((tmp_path / "exp.yaml").read_text())
    assert written["workerPoolSpecs"][0]["containerSpec"]["args"] == ["--config=configs/distilgpt2.py", *OVERRIDES]
    text = "\n".join(printed)
    assert "/locations/us-central1/training/789?project=123456" in text
    assert ("https://us-central1.tensorboard.googleusercontent.com/experiment/projects+123456+locations+"
            "us-central1+tensorboards+555+experiments+789") in text
    assert "python -m deploy.vertex logs projects/123456/locations/us-central1/customJobs/789" in text


def test_status_of_a_tuning_job_names_the_best_trial():
    printed = []
    ref = vertex.job_ref("projects/p/locations/europe-west4/hyperparameterTuningJobs/42", "", "us-central1",
                         "custom")
    vertex.status(ref, vertex.Gcloud(run=FakeGcloud()), out=printed.append)
    assert ref["group"] == "hp-tuning-jobs" and ref["region"] == "europe-west4"
    assert "  best: trial 2, eval_loss 2.2500: --config.optim.learning_rate=0.0001" in printed
    assert "  trials: 3 started, 2 reported" in printed


def run_cli(*argv):
    return subprocess.run([sys.executable, "-m", "deploy.vertex", *argv], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_dry_runs_print_the_spec_and_the_exact_commands(tmp_path):
    out = run_cli("submit", "--dry_run", "--project=proj", "--output_dir=gs://bkt/runs/a", f"--spec_dir={tmp_path}",
                  "--display_name=exp", "--workers=3", "--config=configs/distilgpt2.py", "--", *OVERRIDES)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[-1] == (f"$ gcloud ai custom-jobs create --project=proj --region=us-central1 --display-name=exp "
                         f"--config={tmp_path}/exp.yaml --format=json")
    printed_spec = yaml.safe_load("\n".join(line for line in lines if not line.startswith(("#", "$"))))
    assert printed_spec == yaml.safe_load((tmp_path / "exp.yaml").read_text())
    assert printed_spec["workerPoolSpecs"][1]["replicaCount"] == 3
    assert "$ gcloud storage buckets describe gs://bkt --project=proj '--format=value(location)'" in lines
    for command, expected in [
            ("status", "$ gcloud ai custom-jobs describe 789 --project=proj --region=us-central1 --format=json"),
            ("logs", "$ gcloud ai custom-jobs stream-logs 789 --project=proj --region=us-central1"),
            ("cancel", "$ gcloud ai custom-jobs cancel 789 --project=proj --region=us-central1")]:
        out = run_cli(command, "--dry_run", "--project=proj", "789")
        assert out.returncode == 0 and out.stdout.strip() == expected, out.stderr
    out = run_cli("submit", "--dry_run", "--project=proj", "--output_dir=gs://bkt/a", "--config.train.max_steps=5")
    assert out.returncode != 0  # an override before -- is not the launcher's flag


def test_bad_flags_exit_2_with_the_fix(tmp_path):
    out = run_cli("submit", "--dry_run", "--project=proj", "--output_dir=gs://bkt/a", f"--spec_dir={tmp_path}",
                  "--config=configs/local.py", "--", "--config.optim.lr=1e-4")
    assert out.returncode == 2 and "--config.optim.lr is not a config key" in out.stderr
    assert not list(tmp_path.iterdir())  # nothing written for a job that cannot start
    out = run_cli("hptune", "--dry_run", "--project=proj", "--output_dir=gs://bkt/a", "--batch_sizes=8,12",
                  "--config=configs/local.py", "--", "--config.train.grad_accum_steps=8")
    assert out.returncode == 2 and "batch_size=12 must be a multiple of" in out.stderr
