"""Vertex AI's environment (AIP_*, CLOUD_ML_*), read in this one place.

Output locations: a custom job with a baseOutputDirectory gets AIP_MODEL_DIR,
AIP_CHECKPOINT_DIR and AIP_TENSORBOARD_LOG_DIR; a run whose output_dir is a
local path (which would vanish with the job's VM) writes there instead, see
output_locations and checkpoints.Layout.

Hyperparameter tuning: Vertex reads the trial's metric from a file in the
cloudml-hypertune format (that library is not installable here, so this is a
re-implementation of its file, checked field by field in tests/test_vertex.py):

    $CLOUD_ML_HP_METRIC_FILE (default /tmp/hypertune/output.metrics), rewritten
    whole at each report with the 100 latest entries, one JSON object per line,
    keys sorted, every value a string but the timestamp:
    {"eval_loss": "2.25", "global_step": "200", "timestamp": 1795437643.41, "trial": "0"}

It is written only inside a tuning trial (CLOUD_ML_TRIAL_ID or
CLOUD_ML_HP_METRIC_FILE set), so local runs leave nothing in /tmp.
"""

import collections
import json
import os
import time

from trainer import filesystem

HYPERTUNE_DEFAULT_PATH = "/tmp/hypertune/output.metrics"
HYPERTUNE_MAX_ENTRIES = 100
# The metric tunewell reports: validation loss (nats per token), lower is better.
# A tuning job's spec names it: metric_id "eval_loss", goal MINIMIZE.
HYPERTUNE_METRIC = "eval_loss"


def output_locations(environ=None) -> dict:
    """Where Vertex AI wants a custom job's outputs, when it says (baseOutputDirectory set):
    {"base", "model", "checkpoints", "logs"}, or {} outside Vertex.

    Vertex sets AIP_MODEL_DIR=<base>/model/, AIP_CHECKPOINT_DIR=<base>/checkpoints/ and
    AIP_TENSORBOARD_LOG_DIR=<base>/logs/ (the folder a Vertex TensorBoard instance reads)."""
    environ = os.environ if environ is None else environ
    model = environ.get("AIP_MODEL_DIR", "").rstrip("/")
    if not model:
        return {}
    base = model.rsplit("/", 1)[0]
    return {"base": base, "model": model,
            "checkpoints": environ.get("AIP_CHECKPOINT_DIR", "").rstrip("/") or f"{base}/checkpoints",
            "logs": environ.get("AIP_TENSORBOARD_LOG_DIR", "").rstrip("/") or f"{base}/logs"}


class HypertuneReporter:
    def __init__(self, environ=None, enabled=True):
        environ = os.environ if environ is None else environ
        # In a multi-worker trial every worker has the variables; only the chief reports.
        self.enabled = enabled and ("CLOUD_ML_TRIAL_ID" in environ or "CLOUD_ML_HP_METRIC_FILE" in environ)
        self.path = environ.get("CLOUD_ML_HP_METRIC_FILE") or HYPERTUNE_DEFAULT_PATH
        self.trial = str(environ.get("CLOUD_ML_TRIAL_ID", "0"))
        self.entries = collections.deque(maxlen=HYPERTUNE_MAX_ENTRIES)

    def report(self, value: float, step: int, tag: str = HYPERTUNE_METRIC) -> None:
        """One entry; the last one reported is the trial's result (the best model's loss)."""
        if not self.enabled:
            return
        self.entries.append({tag: str(value), "global_step": str(int(step)), "timestamp": time.time(),
                             "trial": self.trial})
        filesystem.write_text(self.path, "".join(json.dumps(e, sort_keys=True) + "\n" for e in self.entries))
