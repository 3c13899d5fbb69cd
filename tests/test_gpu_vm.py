"""deploy/gpu_vm/: shellcheck-clean, and each --dry_run prints the exact gcloud commands."""

import glob
import json
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


TRICKY_ARGS = ["--config=configs/local.py", "--config.data.train_files=gs://b/*.jsonl",
               "--config.eval.prompts=it's a \"test\", ok"]


def write_units(tmp_path, app, output_dir, shutdown="1", env=None):
    out = subprocess.run(["bash", os.path.join(REPO, "deploy", "gpu_vm", "on_vm.sh"), "--write-units",
                          str(tmp_path), str(app), str(output_dir), shutdown, *TRICKY_ARGS],
                         capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})})
    assert out.returncode == 0, out.stderr


def test_the_training_service_passes_globs_spaces_and_quotes_exactly(tmp_path):
    """Issue 26: the flags used to sit in ExecStart quoted by printf %q, which systemd does not
    read: gs://b/*.jsonl arrived as gs://b/\\*.jsonl and matched nothing."""
    app = tmp_path / "app"
    (app / ".venv" / "bin").mkdir(parents=True)
    fake_python = app / ".venv" / "bin" / "python"  # prints the argv it was given
    fake_python.write_text("#!/usr/bin/env python3\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
    fake_python.chmod(0o755)
    write_units(tmp_path, app, "gs://b/runs/a")
    if shutil.which("systemd-analyze"):
        verify = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "tunewell-train.service")],
                                capture_output=True, text=True, timeout=60)
        assert verify.returncode == 0 and "escape" not in verify.stderr + verify.stdout, verify.stderr
    elif os.environ.get("CI"):
        pytest.fail("systemd-analyze is missing (apt-get install systemd)")
    unit = (tmp_path / "tunewell-train.service").read_text()
    assert f"ExecStart=/bin/bash {app}/run_training.sh" in unit and "*" not in unit
    ran = subprocess.run(["bash", str(tmp_path / "run_training.sh")], capture_output=True, text=True, timeout=60)
    assert json.loads(ran.stdout) == ["-m", "trainer.task", *TRICKY_ARGS, "--config.output_dir=gs://b/runs/a"]


@pytest.mark.parametrize("finished", [False, True])
def test_after_training_keeps_the_log_and_disables_the_service_once_the_run_finished(tmp_path, finished):
    """Issue 26: the log copied into a folder without config.json made the restart after a
    spot preemption refuse it ("something other than a tunewell run (train.log)"), and a VM
    started again after a finished run retrained nothing and powered off again."""
    from trainer.training import checkpoints

    output = tmp_path / "out"
    output.mkdir()
    if finished:
        (output / "report.json").write_text("{}")
    log = tmp_path / "train.log"
    log.write_text("step 10\n")
    bin_dir = tmp_path / "bin"  # systemctl that only records what it was asked
    bin_dir.mkdir()
    (bin_dir / "systemctl").write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path}/systemctl.calls\n")
    (bin_dir / "systemctl").chmod(0o755)
    units = tmp_path / "units"
    units.mkdir()
    write_units(units, REPO, output, env={"TUNEWELL_LOG": str(log)})
    done = subprocess.run(["bash", str(units / "after_training.sh")], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert done.returncode == 0, done.stderr
    assert (output / "train.log").read_text() == "step 10\n"
    calls = (tmp_path / "systemctl.calls").read_text().splitlines()
    assert calls == (["disable tunewell-train", "poweroff"] if finished else ["poweroff"])
    if not finished:  # preempted before config.json: the relaunch takes the folder as a new run
        assert checkpoints.OutputDir(str(output)).stored is None
