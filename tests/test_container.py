"""The local rehearsal of a Vertex AI job (make docker-smoke; left out of make test).

Builds deploy/Dockerfile with make docker-build / docker-build-tpu, then runs the
image through `python -m deploy.vertex rehearse`: the chief's container args from the
same spec builder as `submit`, AIP_* pointing at a local folder, no network. The TPU
variant (tensorflow-tpu 2.20 with libtpu) runs here on the CPU, which is also this
suite's check that the trainer works on TensorFlow 2.20.

On these machines pip inside a build needs the host's CA bundle; it is copied into
the build context as deploy/.build-ca.pem and named by a build argument that users'
builds leave empty. The GPU variant is built with the CPU TensorFlow wheel unless
TUNEWELL_SMOKE_CUDA=1: the CUDA wheels make the image 7.5 GB instead of 3.0 GB and add nothing a
CPU can exercise (built and rehearsed here once: 3 minutes).
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.docker_engine import base_image, docker, docker_env  # noqa: F401  (fixtures)

pytestmark = pytest.mark.container
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CA_IN_CONTEXT = "deploy/.build-ca.pem"


def build_args(base: str, variant: str) -> str:
    args = [f"--build-arg BASE_IMAGE={base}"]
    if variant == "gpu" and os.environ.get("TUNEWELL_SMOKE_CUDA") != "1":
        args.append("--build-arg 'TENSORFLOW_PACKAGES=tensorflow==2.21.*'")
    bundle = os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE")
    if bundle and os.path.exists(bundle):  # an intercepting proxy: pip in the build must trust it too
        shutil.copyfile(bundle, os.path.join(REPO, CA_IN_CONTEXT))
        args.append(f"--build-arg BUILD_CA_BUNDLE={CA_IN_CONTEXT}")
    return " ".join(args)


@pytest.mark.parametrize("variant, tensorflow", [("gpu", "2.21"), ("tpu", "2.20")])
def test_the_image_trains_the_sample_as_a_vertex_job_would(variant, tensorflow, docker_env, base_image, tmp_path):
    image = f"tunewell-smoke:{variant}"
    target = "docker-build" if variant == "gpu" else "docker-build-tpu"
    image_var = "IMAGE" if variant == "gpu" else "TPU_IMAGE"
    build = subprocess.run(["make", target, f"{image_var}={image}",
                            f"DOCKER_BUILD_ARGS={build_args(base_image, variant)}"],
                           cwd=REPO, env=docker_env, capture_output=True, text=True, timeout=1800)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]

    out = tmp_path / "aip"
    run = subprocess.run([sys.executable, "-m", "deploy.vertex", "rehearse", str(out), f"--image={image}",
                          "--config=configs/local.py", "--", "--config.train.max_steps=20"],
                         cwd=REPO, env=docker_env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    command = run.stdout.splitlines()[0]
    assert "--env=AIP_MODEL_DIR=/aip/model/" in command and command.endswith(
        f"{image} --config=configs/local.py --config.train.max_steps=20")

    # Vertex's folders, not configs/local.py's runs/local: the job's outputs outlive its VM.
    report = json.loads((out / "report.json").read_text())
    assert report["steps"] == 20 and report["best_val_loss"] < report["initial_val_loss"]
    assert (out / "model" / "COMPLETE.json").exists() and (out / "model" / "config.json").exists()
    assert (out / "checkpoints").is_dir() and any((out / "logs").rglob("events.out.tfevents.*"))
    versions = docker(docker_env, "run", "--rm", "--network=none", "--env=TPU_SKIP_MDS_QUERY=1",
                      "--entrypoint", "python", image, "-c",
                      "import tensorflow as tf, tf_keras; print(tf.__version__, tf_keras.__version__)").stdout
    assert versions.split()[0].startswith(tensorflow) and versions.split()[1].startswith(tensorflow)
