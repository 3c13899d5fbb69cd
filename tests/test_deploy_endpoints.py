"""deploy/endpoints.py: from a run's serving/ folder to a Vertex AI endpoint. Specs parse into
google.cloud.aiplatform_v1's messages; gcloud is a recorder that answers as a project would
(the Vertex API cannot exist here)."""

import json
import types

import pytest
from absl import flags
from google.cloud.aiplatform_v1 import types as v1

from deploy import endpoints, vertex
from tests.test_deploy_vertex import run_cli
from trainer.errors import UserError

ENDPOINT = "projects/123/locations/us-central1/endpoints/456"
MODEL = "projects/123/locations/us-central1/models/789"


def options(*argv):
    fv = flags.FlagValues()
    vertex.define_flags(fv)
    fv(["deploy.vertex", "--project=proj", *argv])
    return fv


class FakeGcloud:
    """gcloud for a project with (or without) a finished serving/ folder, the serving image,
    and endpoints of the given display names."""

    def __init__(self, complete=True, image=True, endpoints_named=(), deployed=("111", "222")):
        self.complete, self.image, self.named, self.deployed = complete, image, list(endpoints_named), deployed
        self.commands = []

    def __call__(self, command, capture_output=True, text=True):
        self.commands.append(command)
        ok = types.SimpleNamespace(returncode=0, stdout="", stderr="")
        sub = command[1:4]
        if sub[:2] == ["storage", "ls"] and not self.complete:
            return types.SimpleNamespace(returncode=1, stdout="", stderr="ERROR: One or more URLs matched no objects.")
        if sub == ["artifacts", "docker", "images"] and not self.image:
            return types.SimpleNamespace(returncode=1, stdout="", stderr="ERROR: NOT_FOUND: image not found")
        if sub == ["ai", "models", "upload"]:
            ok.stdout = json.dumps({"model": MODEL})
        elif sub == ["ai", "endpoints", "list"]:
            ok.stdout = "\n".join(ENDPOINT if n == "tunewell" else f"{ENDPOINT}{i}" for i, n in enumerate(self.named))
        elif sub == ["ai", "endpoints", "create"]:
            self.named.append("tunewell")
        elif sub == ["ai", "endpoints", "predict"]:
            request = json.load(open(command[command.index(next(c for c in command if c.startswith("--json-request")))]
                                     .split("=", 1)[1]))
            ok.stdout = json.dumps({"predictions": [{"completion": f" after {i['prompt']}"} for i in request["instances"]]})
        elif sub == ["ai", "endpoints", "describe"]:
            ok.stdout = ";".join(self.deployed)
        return ok


def test_the_specs_parse_as_vertex_messages():
    model = vertex.to_proto(endpoints.model_spec("m", "gs://b/runs/a/serving/", "img:1"), "Model")
    assert isinstance(model, v1.Model) and model.artifact_uri == "gs://b/runs/a/serving"
    assert model.container_spec.health_route == "/health" and model.container_spec.ports[0].container_port == 8080
    deployed = vertex.to_proto(endpoints.deployed_model_spec(MODEL, "d", "g2-standard-8", "nvidia_l4", 1, 1, 3),
                               "DeployedModel")
    assert isinstance(deployed, v1.DeployedModel) and deployed.dedicated_resources.max_replica_count == 3
    assert deployed.dedicated_resources.machine_spec.accelerator_type == v1.AcceleratorType.NVIDIA_L4
    with pytest.raises(UserError, match="does not parse"):  # a GPU Vertex does not know
        vertex.to_proto(endpoints.deployed_model_spec(MODEL, "d", "n1", "NVIDIA_T5", 1, 1, 1), "DeployedModel")
    with pytest.raises(UserError, match="Cloud Storage"):
        endpoints.model_spec("m", "runs/local/serving", "img:1")


def test_upload_checks_the_folder_and_the_image_then_uploads():
    fake, printed = FakeGcloud(), []
    model = endpoints.upload_model(options("--output_dir=gs://b/runs/exp1"), vertex.Gcloud(run=fake),
                                   out=printed.append)
    assert model == {"name": MODEL}
    assert fake.commands[0][:4] == ["gcloud", "storage", "ls", "gs://b/runs/exp1/serving/COMPLETE.json"]
    upload = fake.commands[-1]
    for flag in ("--artifact-uri=gs://b/runs/exp1/serving", "--container-health-route=/health",
                 "--container-predict-route=/predict", "--container-ports=8080", "--display-name=tunewell-exp1",
                 "--container-image-uri=us-central1-docker.pkg.dev/proj/tunewell/tunewell-serving:latest"):
        assert flag in upload, flag
    assert any(f"--model={MODEL}" in line for line in printed)


@pytest.mark.parametrize("fake, message", [
    (FakeGcloud(complete=False), "has no COMPLETE.json.*python -m trainer.export_serving"),
    (FakeGcloud(image=False), "make docker-build-serving docker-push-serving SERVING_IMAGE="),
])
def test_upload_preconditions_name_the_fix(fake, message):
    with pytest.raises(UserError, match=message):
        endpoints.upload_model(options("--output_dir=gs://b/runs/exp1"), vertex.Gcloud(run=fake))
    assert not any(c[1:4] == ["ai", "models", "upload"] for c in fake.commands)


def test_deploy_creates_the_endpoint_once_and_reuses_it():
    fake = FakeGcloud()
    opts = options("--model=789", "--serving_accelerator_type=NVIDIA_L4", "--serving_machine_type=g2-standard-8",
                   "--max_replicas=2", "--traffic_percent=50")
    endpoints.deploy_endpoint(opts, vertex.Gcloud(run=fake), out=lambda line: None)
    assert [c[1:4] for c in fake.commands] == [["ai", "endpoints", "list"], ["ai", "endpoints", "create"],
                                               ["ai", "endpoints", "list"], ["ai", "endpoints", "deploy-model"]]
    deploy = fake.commands[-1]
    assert deploy[4] == ENDPOINT and "--model=projects/proj/locations/us-central1/models/789" in deploy
    for flag in ("--accelerator=type=nvidia-l4,count=1", "--min-replica-count=1", "--max-replica-count=2",
                 "--traffic-split=0=50", "--machine-type=g2-standard-8"):
        assert flag in deploy, flag
    endpoints.deploy_endpoint(opts, vertex.Gcloud(run=fake), out=lambda line: None)  # again: reused, not created
    assert [c[1:4] for c in fake.commands[4:]] == [["ai", "endpoints", "list"], ["ai", "endpoints", "deploy-model"]]
    with pytest.raises(UserError, match="2 endpoints are named tunewell"):
        endpoints.deploy_endpoint(opts, vertex.Gcloud(run=FakeGcloud(endpoints_named=("tunewell", "tunewell"))))


def test_predict_prints_completions_and_undeploy_takes_every_model_off():
    fake, printed = FakeGcloud(), []
    endpoints.predict(options("--endpoint=456", "--prompt=The river", "--prompt=Hi"), vertex.Gcloud(run=fake),
                      out=printed.append)
    assert printed == ["The river after The river", "Hi after Hi"]
    fake = FakeGcloud()
    endpoints.undeploy(options("--endpoint=456", "--delete_endpoint"), vertex.Gcloud(run=fake), out=lambda line: None)
    assert [c[4:] for c in fake.commands if c[3] == "undeploy-model"] == [
        ["projects/proj/locations/us-central1/endpoints/456", "--project=proj", "--region=us-central1",
         f"--deployed-model-id={i}"] for i in ("111", "222")]
    assert fake.commands[-1][1:4] == ["ai", "endpoints", "delete"]


def test_dry_runs_and_bad_flags_through_the_cli():
    out = run_cli("upload-model", "--dry_run", "--project=proj", "--output_dir=gs://b/runs/exp1")
    assert out.returncode == 0, out.stderr
    spec = json.loads(out.stdout.split("# Checks", 1)[0].split("\n", 1)[1])
    assert spec["artifactUri"] == "gs://b/runs/exp1/serving"
    assert out.stdout.strip().splitlines()[-1].startswith("$ gcloud ai models upload --project=proj")
    out = run_cli("deploy-endpoint", "--dry_run", "--project=proj", "--model=789", "--min_replicas=0")
    assert out.returncode == 2 and "need 1 <= min <= max" in out.stderr
    printed = []  # the other dry runs in-process: the same code, without a Python start-up each
    endpoints.deploy_endpoint(options("--model=789"), vertex.Gcloud(dry_run=True, out=printed.append),
                              out=printed.append)
    assert printed[-1].startswith("$ gcloud ai endpoints deploy-model '<the tunewell endpoint>' --project=proj")
    with pytest.raises(UserError, match="--prompt is required"):
        endpoints.predict(options("--endpoint=456"), vertex.Gcloud(dry_run=True))
