"""make serve-smoke: the serving image (deploy/Dockerfile, target serving) built and run
with --network=none on a SavedModel of tunewell-base; inside it, deploy/serve_smoke.py
starts the server as Vertex AI would and sends real HTTP requests (left out of make test:
minutes, and it needs Docker or root)."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import BASE_MODEL_DIR, quiet
from tests.docker_engine import base_image, docker, docker_env  # noqa: F401  (fixtures)
from tests.test_container import build_args
from trainer import model as model_lib

pytestmark = pytest.mark.container
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_serving_image_answers_as_a_vertex_endpoint_and_reports_its_latency(docker_env, base_image, tmp_path):
    image = "tunewell-serving:smoke"
    args = build_args(base_image, "serving")
    build = subprocess.run(["make", "docker-build-serving", f"SERVING_IMAGE={image}", f"DOCKER_BUILD_ARGS={args}"],
                           cwd=REPO, env=docker_env, capture_output=True, text=True, timeout=1800)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    serving = tmp_path / "serving"
    model_lib.export_serving(BASE_MODEL_DIR, str(serving), log=quiet)
    run = docker(docker_env, "run", "--rm", "--network=none", f"--volume={serving}:/model:ro", "--entrypoint",
                 "python", image, "-m", "deploy.serve_smoke", "--model_dir=/model", check=False, timeout=900)
    print(run.stdout[-4000:])  # the latency table (make serve-smoke runs pytest -s)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    result = json.loads(run.stdout.split("RESULT", 1)[1])
    assert not result["failures"] and set(result["latencies"]) == {"1", "8"}
    model, _ = model_lib.load_model(BASE_MODEL_DIR, log=quiet)
    tokenizer = model_lib.load_tokenizer(BASE_MODEL_DIR, log=quiet)
    assert result["single"]["completion"] == model_lib.generate(model, tokenizer, "The river", 20)
    # Nothing of the trainer or transformers in the image: the SavedModel stands alone.
    bare = docker(docker_env, "run", "--rm", "--network=none", "--entrypoint", "python", image, "-c",
                  "import importlib.util as u; print([m for m in ('transformers', 'trainer', 'torch') if u.find_spec(m)])")
    assert bare.stdout.strip() == "[]", bare.stdout


if __name__ == "__main__":
    sys.exit(pytest.main(["-q", "-s", "-m", "container", __file__]))
