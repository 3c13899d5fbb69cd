# Every target works as the first command on a fresh clone: it creates .venv
# and installs what it needs (the stamp file makes re-runs instant).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CONFIG ?= configs/local.py

.PHONY: install train-local test bench tensorboard clean

install: $(STAMP)

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,torch]"
	touch $(STAMP)

# The main job: the embedded sample on a tiny GPT-2 built here (no network).
train-local: $(STAMP)
	$(PY) -m trainer.task --config=$(CONFIG)

test: $(STAMP)
	$(PY) -m pytest -q tests

# Training speed: the usual Keras recipe, run_clm and tunewell side by side
# (bench/results.json, bench/speed.md; about 13 minutes on 2 cores).
bench: $(STAMP)
	$(PY) bench/bench_speed.py

# TensorBoard on every run under runs/ (http://localhost:6006).
tensorboard: $(STAMP)
	$(VENV)/bin/tensorboard --logdir runs --bind_all

clean:
	rm -rf runs .pytest_cache
