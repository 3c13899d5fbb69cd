# Every target works as the first command on a fresh clone: it creates .venv
# and installs what it needs (the stamp file makes re-runs instant).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONFIG ?= configs/local.py

.PHONY: install train-local train-task test bench tensorboard clean docker-build docker-build-tpu docker-push \
	docker-push-tpu docker-smoke docker-build-dataflow docker-push-dataflow docker-build-serving \
	docker-push-serving serve-smoke

# Two stamps: the main job needs the package alone; the tests add pytest, the GCS
# emulator, the Vertex library, import-linter and torch (the PyTorch export is checked
# against real PyTorch). Measured in a new venv on 2 cores: the package 72 s (TensorFlow's
# 1.9 GB of files is most of it), the test extra 4 s, torch 24 s and 754 MB more.
RUN_STAMP := $(VENV)/.installed-run

install: $(STAMP)

$(RUN_STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $(RUN_STAMP)

$(STAMP): $(RUN_STAMP)
	$(PY) -m pip install --quiet -e ".[test,torch]"
	touch $(STAMP)

# The main job: the embedded sample on a tiny GPT-2 built here (no network).
train-local: $(RUN_STAMP)
	$(PY) -m trainer.task --config=$(CONFIG)

# Fine-tuning for a task: prompt/completion data embedded in data/task/, task metrics at
# each evaluation, the review sheet at the end (README "Fine-tune for a task").
train-task: $(RUN_STAMP)
	$(PY) -m trainer.task --config=configs/task.py

test: $(STAMP)
	$(PY) -m pytest -q tests

# Training speed: the usual Keras recipe, run_clm and tunewell side by side
# (bench/results.json, bench/speed.md; about 13 minutes on 2 cores).
bench: $(STAMP)
	$(PY) bench/bench_speed.py

# TensorBoard on every run under runs/ (http://localhost:6006), or on LOGDIR
# (a cloud run: make tensorboard LOGDIR=gs://BUCKET/runs/exp1/logs).
LOGDIR ?= runs
tensorboard: $(RUN_STAMP)
	$(VENV)/bin/tensorboard --logdir $(LOGDIR) --bind_all

# Containers (deploy/Dockerfile): the image Vertex AI jobs and GPU VMs run.
# PROJECT defaults to gcloud's; the image goes to Artifact Registry in REGION.
PROJECT ?= $(shell gcloud config get-value project 2>/dev/null)
REGION ?= us-central1
REPOSITORY ?= $(REGION)-docker.pkg.dev/$(PROJECT)/tunewell
# Without a project (no gcloud yet) a build is tagged locally; a push needs the project.
IMAGE ?= $(if $(PROJECT),$(REPOSITORY)/tunewell:latest,tunewell:local)
TPU_IMAGE ?= $(if $(PROJECT),$(REPOSITORY)/tunewell-tpu:latest,tunewell-tpu:local)
DATAFLOW_IMAGE ?= $(if $(PROJECT),$(REPOSITORY)/tunewell-dataflow:latest,tunewell-dataflow:local)
DOCKER_BUILD_ARGS ?=
# tensorflow-tpu stops at 2.20 on PyPI; libtpu 0.0.14 is the release its wheel names.
TPU_BUILD_ARGS := --build-arg "TENSORFLOW_PACKAGES=tensorflow-tpu==2.20.0 libtpu==0.0.14" \
	--build-arg "KERAS_PACKAGE=tf-keras==2.20.1"

docker-build:
	docker build -f deploy/Dockerfile --target trainer -t $(IMAGE) $(DOCKER_BUILD_ARGS) .

docker-build-tpu:
	docker build -f deploy/Dockerfile --target trainer -t $(TPU_IMAGE) $(TPU_BUILD_ARGS) $(DOCKER_BUILD_ARGS) .

# Dataflow workers of trainer.prepare --runner=DataflowRunner (deploy/dataflow.py): CPU TensorFlow
# is enough to tokenize and write TFRecords, and skips ~4.4 GB of CUDA wheels.
docker-build-dataflow:
	docker build -f deploy/Dockerfile --target dataflow -t $(DATAFLOW_IMAGE) \
		--build-arg "TENSORFLOW_PACKAGES=tensorflow==2.21.*" $(DOCKER_BUILD_ARGS) .

docker-push-dataflow:
	$(MAKE) docker-push IMAGE=$(DATAFLOW_IMAGE)

# Creates the Artifact Registry repository on first use and lets docker log in to it.
docker-push:
	@test -n "$(PROJECT)" || { echo "error: no project: make docker-push PROJECT=my-project (or gcloud config set project my-project)"; exit 2; }
	gcloud artifacts repositories describe tunewell --location=$(REGION) --project=$(PROJECT) >/dev/null 2>&1 || \
		gcloud artifacts repositories create tunewell --repository-format=docker --location=$(REGION) \
		--project=$(PROJECT)
	gcloud auth configure-docker $(REGION)-docker.pkg.dev --quiet
	docker push $(IMAGE)

docker-push-tpu:
	$(MAKE) docker-push IMAGE=$(TPU_IMAGE)

# Builds the image and runs it on the embedded sample exactly as Vertex would start
# it (tests/test_container.py; a few minutes). Uses the Docker engine it finds, or
# starts one itself (root with dockerd installed) and stops it afterwards.
docker-smoke: $(STAMP)
	$(PY) -m pytest -q -m container tests/test_container.py

# The serving image (deploy/Dockerfile, target serving): deploy/serve.py over a run's serving/.
SERVING_IMAGE ?= $(if $(PROJECT),$(REPOSITORY)/tunewell-serving:latest,tunewell-serving:local)
docker-build-serving:
	docker build -f deploy/Dockerfile --target serving -t $(SERVING_IMAGE) $(DOCKER_BUILD_ARGS) .

docker-push-serving:
	$(MAKE) docker-push IMAGE=$(SERVING_IMAGE)

# Builds the serving image, runs it with --network=none on a SavedModel of tunewell-base,
# sends real HTTP requests inside it (health, single and batched predictions, bad requests)
# and prints the latency for batch 1 and 8 (tests/test_serve_container.py; needs Docker or root).
serve-smoke: $(STAMP)
	$(PY) -m pytest -q -s -m container tests/test_serve_container.py

clean:
	rm -rf runs .pytest_cache
