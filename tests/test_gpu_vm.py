"""deploy/gpu_vm/: shellcheck-clean, and each --dry_run prints the exact gcloud commands."""

import glob
import os
import shlex
import shutil
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = sorted(glob.glob(os.path.join(REPO, "deploy", "gpu_vm", "*.sh")))


def script(name, *args):
    return subprocess.run(["bash", os.path.join(REPO, "deploy", "gpu_vm", name), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)


def commands(out):
    """The printed commands, split back into argv lists as a shell would."""
    return [shlex.split(line[2:]) for line in out.stdout.splitlines() if line.startswith("$ ")]


def test_shellcheck_passes_on_every_script():
    if shutil.which("shellcheck") is None:
        if os.environ.get("CI"):
            pytest.fail("shellcheck is missing: .ci/run installs it (apt-get install shellcheck)")
        pytest.skip("shellcheck not installed (apt-get install shellcheck)")
    assert len(SCRIPTS) == 6
    out = subprocess.run(["shellcheck", "-x", *SCRIPTS], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout


def test_create_prints_the_vm_with_its_gpu_and_spot_scheduling():
    out = script("create.sh", "--dry_run", "--project=proj", "--zone=europe-west4-a", "--name=vm1",
                 "--accelerator=nvidia-tesla-a100", "--count=2", "--machine_type=a2-highgpu-2g", "--spot=1")
    assert out.returncode == 0, out.stderr
    (create,) = commands(out)
    assert create[:5] == ["gcloud", "compute", "instances", "create", "vm1"]
    for flag in ("--project=proj", "--zone=europe-west4-a", "--machine-type=a2-highgpu-2g",
                 "--accelerator=type=nvidia-tesla-a100,count=2", "--image-project=deeplearning-platform-release",
                 "--maintenance-policy=TERMINATE", "--metadata=install-nvidia-driver=True",
                 "--provisioning-model=SPOT", "--instance-termination-action=STOP", "--boot-disk-size=200GB"):
        assert flag in create
    on_demand = commands(script("create.sh", "--dry_run", "--project=proj"))[0]
    assert "--provisioning-model=SPOT" not in on_demand and "--machine-type=g2-standard-8" in on_demand


def test_train_copies_the_code_and_starts_the_service():
    out = script("train.sh", "--dry_run", "--project=proj", "--name=vm1", "--output_dir=gs://bkt/runs/a",
                 "--config=configs/local.py", "--", "--config.train.max_steps=10")
    assert out.returncode == 0, out.stderr
    archive, scp, ssh = commands(out)
    assert archive == ["git", "archive", "--format=tar.gz", "-o", "/tmp/tunewell-vm1.tar.gz", "HEAD"]
    assert scp == ["gcloud", "compute", "scp", "/tmp/tunewell-vm1.tar.gz", "deploy/gpu_vm/on_vm.sh", "vm1:",
                   "--project=proj", "--zone=us-central1-a"]
    assert ssh[:4] == ["gcloud", "compute", "ssh", "vm1"]
    remote = shlex.split(ssh[-1].removeprefix("--command="))
    assert remote == ["bash", "on_vm.sh", "tunewell-vm1.tar.gz", "gs://bkt/runs/a", "1", "--config=configs/local.py",
                      "--config.train.max_steps=10"]
    assert "make tensorboard LOGDIR=gs://bkt/runs/a/logs" in out.stdout


def test_tensorboard_and_teardown():
    (forward,) = commands(script("tensorboard.sh", "--dry_run", "--project=proj", "--name=vm1", "--port", "7007"))
    assert forward == ["gcloud", "compute", "ssh", "vm1", "--project=proj", "--zone=us-central1-a", "--", "-N", "-L",
                       "7007:localhost:6006"]
    (delete,) = commands(script("teardown.sh", "--dry_run", "--project=proj", "--name=vm1"))
    assert delete == ["gcloud", "compute", "instances", "delete", "vm1", "--project=proj", "--zone=us-central1-a",
                      "--delete-disks=all", "--quiet"]


@pytest.mark.parametrize("name, args, message", [
    ("create.sh", ["--project=proj", "--acelerator=nvidia-l4"], "unknown flag --acelerator"),
    ("train.sh", ["--project=proj", "--output_dir=runs/a"], "--output_dir=gs://BUCKET/PATH is required"),
    ("train.sh", ["--project=proj", "--output_dir=gs://b/a", "--config=configs/nope.py"], "no such file"),
    ("train.sh", ["--project=proj", "--output_dir=gs://b/a", "--config.train.max_steps=5"], "go after --"),
])
def test_bad_flags_exit_2_and_say_why(name, args, message):
    out = script(name, "--dry_run", *args)
    assert out.returncode == 2 and message in out.stderr and not commands(out)
