"""From a run's serving/ SavedModel to a live Vertex AI endpoint (python -m deploy.vertex ...):

    upload-model     Model Registry: the serving image, its routes and port, artifact URI = the
                     run's serving/ on gs:// (checked: COMPLETE.json is there)
    deploy-endpoint  create the endpoint (or reuse the one of that display name) and deploy a
                     model on it: machine type, accelerator, min/max replicas, traffic share
    predict          send prompts, print completions
    undeploy         take a deployed model off an endpoint (it stops billing for its nodes)

Each takes --dry_run (the spec, checked against google.cloud.aiplatform_v1, and the exact
gcloud commands). As for jobs, gcloud does the work: the printed command is the one that runs.
"""

import json
import os
import tempfile

from deploy.vertex import CommandFailed, Gcloud, to_proto
from trainer.errors import UserError

# The serving container's contract (deploy/serve.py reads the AIP_* variables Vertex sets from these).
HEALTH_ROUTE, PREDICT_ROUTE, PORT = "/health", "/predict", 8080


def default_serving_image(project: str, region: str) -> str:
    return f"{region}-docker.pkg.dev/{project}/tunewell/tunewell-serving:latest"


def model_spec(display_name: str, artifact_uri: str, image: str) -> dict:
    """Vertex's Model: the custom container and where its files are."""
    if not artifact_uri.startswith("gs://"):
        raise UserError(f"--artifact_uri={artifact_uri}: Vertex reads models from Cloud Storage; give the run's "
                        "gs://BUCKET/.../serving folder (a run with --output_dir=gs://... writes it).")
    return {"displayName": display_name, "artifactUri": artifact_uri.rstrip("/"),
            "containerSpec": {"imageUri": image, "healthRoute": HEALTH_ROUTE, "predictRoute": PREDICT_ROUTE,
                              "ports": [{"containerPort": PORT}]}}


def deployed_model_spec(model: str, display_name: str, machine_type: str, accelerator_type: str,
                        accelerator_count: int, min_replicas: int, max_replicas: int) -> dict:
    """Vertex's DeployedModel: the nodes that serve it."""
    if not 1 <= min_replicas <= max_replicas:
        raise UserError(f"--min_replicas={min_replicas} --max_replicas={max_replicas}: need 1 <= min <= max "
                        "(Vertex keeps at least one node up; it bills every node while deployed).")
    machine = {"machineType": machine_type}
    if accelerator_type.upper() not in ("", "NONE"):
        machine.update(acceleratorType=accelerator_type.upper(), acceleratorCount=accelerator_count)
    return {"model": model, "displayName": display_name,
            "dedicatedResources": {"machineSpec": machine, "minReplicaCount": min_replicas,
                                   "maxReplicaCount": max_replicas}}


def resource(kind: str, value: str, project: str, region: str) -> str:
    """A bare id as its full resource name (models, endpoints)."""
    if not value:
        raise UserError(f"--{kind[:-1]} is required: an id or projects/P/locations/R/{kind}/ID.")
    return value if value.startswith("projects/") else f"projects/{project}/locations/{region}/{kind}/{value}"


def upload_model(opts, gcloud: Gcloud, out=print) -> dict:
    project, region = opts.project, opts.region
    artifact = opts.artifact_uri or (opts.output_dir.rstrip("/") + "/serving" if opts.output_dir else "")
    if not artifact:
        raise UserError("--artifact_uri (a run's gs://.../serving folder) or --output_dir (the run's) is required.")
    image = opts.serving_image or default_serving_image(project, region)
    name = opts.display_name or "tunewell-" + artifact.rstrip("/").split("/")[-2]
    spec = model_spec(name, artifact, image)
    to_proto(spec, "Model")
    if gcloud.dry_run:
        out("# Model (checked against google.cloud.aiplatform_v1):")
        out(json.dumps(spec, indent=2))
        out("# Checks run before a real upload: the SavedModel is complete, the image exists:")
    try:
        gcloud("storage", "ls", f"{spec['artifactUri']}/COMPLETE.json", f"--project={project}")
    except CommandFailed as e:
        raise UserError(f"{spec['artifactUri']} has no COMPLETE.json ({e.detail}): not a finished serving/ folder. "
                        "Wait for the run to end, or write one: python -m trainer.export_serving "
                        f"--model_dir=.../export --output_dir={spec['artifactUri']}") from None
    if ".pkg.dev/" in image:
        try:
            gcloud("artifacts", "docker", "images", "describe", image, "--format=value(image_summary.digest)")
        except CommandFailed as e:
            raise UserError(f"serving image {image} not found ({e.detail}). Fix: make docker-build-serving "
                            f"docker-push-serving SERVING_IMAGE={image}") from None
    if gcloud.dry_run:
        out("# The upload:")
    uploaded = gcloud("ai", "models", "upload", f"--project={project}", f"--region={region}",
                      f"--display-name={name}", f"--artifact-uri={spec['artifactUri']}",
                      f"--container-image-uri={image}", f"--container-health-route={HEALTH_ROUTE}",
                      f"--container-predict-route={PREDICT_ROUTE}", f"--container-ports={PORT}", "--format=json")
    if gcloud.dry_run:
        return spec
    model = (json.loads(uploaded or "{}").get("model") or
             gcloud("ai", "models", "list", f"--project={project}", f"--region={region}",
                    f"--filter=display_name={name}", "--sort-by=~createTime", "--limit=1",
                    "--format=value(name)").strip())
    out(f"Uploaded {model} ({name}).")
    out(f"Next: python -m deploy.vertex deploy-endpoint --project={project} --region={region} --model={model}")
    return {"name": model}


def deploy_endpoint(opts, gcloud: Gcloud, out=print) -> dict:
    project, region = opts.project, opts.region
    model = resource("models", opts.model, project, region)
    name = opts.endpoint or "tunewell"
    spec = deployed_model_spec(model, opts.display_name or "tunewell", opts.serving_machine_type,
                               opts.serving_accelerator_type, opts.serving_accelerator_count, opts.min_replicas,
                               opts.max_replicas)
    to_proto(spec, "DeployedModel")
    if not 0 < opts.traffic_percent <= 100:
        raise UserError(f"--traffic_percent={opts.traffic_percent}: between 1 and 100 (the rest stays with the "
                        "endpoint's other deployed models).")
    if gcloud.dry_run:
        out("# DeployedModel (checked against google.cloud.aiplatform_v1):")
        out(json.dumps(spec, indent=2))
        out("# The endpoint, found by display name or id, created when missing:")
    if name.startswith("projects/") or name.isdigit():
        endpoint = resource("endpoints", name, project, region)
    else:
        found = gcloud("ai", "endpoints", "list", f"--project={project}", f"--region={region}",
                       f"--filter=display_name={name}", "--format=value(name)").split()
        if len(found) > 1:
            raise UserError(f"{len(found)} endpoints are named {name}: pass --endpoint=ID, one of "
                            f"{', '.join(found)}.")
        endpoint = found[0] if found else ""
        if not endpoint:
            gcloud("ai", "endpoints", "create", f"--project={project}", f"--region={region}",
                   f"--display-name={name}")
            endpoint = "" if gcloud.dry_run else gcloud(
                "ai", "endpoints", "list", f"--project={project}", f"--region={region}",
                f"--filter=display_name={name}", "--format=value(name)").split()[0]
    machine = spec["dedicatedResources"]["machineSpec"]
    accelerator = ([f"--accelerator=type={machine['acceleratorType'].lower().replace('_', '-')},"
                    f"count={machine['acceleratorCount']}"] if "acceleratorType" in machine else [])
    # 0=N: the model deployed now takes N% of the traffic (gcloud's key for it is 0).
    gcloud("ai", "endpoints", "deploy-model", endpoint or f"<the {name} endpoint>", f"--project={project}",
           f"--region={region}", f"--model={model}", f"--display-name={spec['displayName']}",
           f"--machine-type={machine['machineType']}", *accelerator, f"--min-replica-count={opts.min_replicas}",
           f"--max-replica-count={opts.max_replicas}", f"--traffic-split=0={opts.traffic_percent}")
    if gcloud.dry_run:
        return spec
    out(f"Deployed {model} on {endpoint} ({opts.min_replicas}-{opts.max_replicas} x {machine['machineType']}"
        f"{' + ' + machine['acceleratorType'] if accelerator else ''}). It bills every node-hour until undeployed.")
    out(f"Try it: python -m deploy.vertex predict --project={project} --region={region} --endpoint={endpoint} "
        "--prompt='The river'")
    out(f"Stop it: python -m deploy.vertex undeploy --project={project} --region={region} --endpoint={endpoint}")
    return {"endpoint": endpoint}


def predict(opts, gcloud: Gcloud, out=print) -> list:
    project, region = opts.project, opts.region
    endpoint = resource("endpoints", opts.endpoint, project, region)
    if not opts.prompt:
        raise UserError("--prompt is required (repeat it for several prompts).")
    body = {"instances": [{"prompt": p, "max_new_tokens": opts.max_new_tokens, "temperature": opts.temperature,
                           "seed": opts.seed} for p in opts.prompt]}
    to_proto({"instances": body["instances"]}, "PredictRequest")
    folder = tempfile.mkdtemp(prefix="tunewell-predict-")
    path = os.path.join(folder, "request.json")
    with open(path, "w") as f:
        json.dump(body, f)
    answer = gcloud("ai", "endpoints", "predict", endpoint, f"--project={project}", f"--region={region}",
                    f"--json-request={path}", "--format=json")
    if gcloud.dry_run:
        out(f"# {path}: {json.dumps(body)}")
        return []
    predictions = json.loads(answer).get("predictions", [])
    for prompt, prediction in zip(opts.prompt, predictions):
        out(f"{prompt}{prediction.get('completion', '')}")
    return predictions


def undeploy(opts, gcloud: Gcloud, out=print) -> None:
    project, region = opts.project, opts.region
    endpoint = resource("endpoints", opts.endpoint, project, region)
    ids = [opts.deployed_model_id] if opts.deployed_model_id else gcloud(
        "ai", "endpoints", "describe", endpoint, f"--project={project}", f"--region={region}",
        "--format=value(deployedModels.id)").replace(";", " ").split()
    if gcloud.dry_run and not ids:
        ids = ["<each deployed model's id>"]
    if not ids:
        out(f"{endpoint} has no deployed model: nothing bills.")
        return
    for deployed in ids:
        gcloud("ai", "endpoints", "undeploy-model", endpoint, f"--project={project}", f"--region={region}",
               f"--deployed-model-id={deployed}")
    if opts.delete_endpoint:
        gcloud("ai", "endpoints", "delete", endpoint, f"--project={project}", f"--region={region}", "--quiet")
    if not gcloud.dry_run:
        out(f"Undeployed {', '.join(ids)} from {endpoint}" + (" and deleted it." if opts.delete_endpoint else
                                                                 "; the empty endpoint costs nothing."))



def run(command: str, rest: list, opts, gcloud: Gcloud) -> None:
    if rest:
        raise UserError(f"unexpected {' '.join(rest)}: python -m deploy.vertex {command} takes flags only.")
    if not opts.project:
        raise UserError("--project is required (or set GOOGLE_CLOUD_PROJECT).")
    {"upload-model": upload_model, "deploy-endpoint": deploy_endpoint, "predict": predict,
     "undeploy": undeploy}[command](opts, gcloud)
