"""tunewell: fine-tune GPT-2-family causal language models with TensorFlow.

transformers' TF model classes are written against Keras 2, which TensorFlow
2.16+ only provides as the separate `tf-keras` package. TensorFlow picks the
Keras flavour once, when it is first imported, from TF_USE_LEGACY_KERAS; every
entry point imports this package first, so this is the one place that sets it.
"""

import importlib.metadata
import os
import time

# When this process started, near enough (the interpreter's own start-up comes
# first, ~30 ms): the report's time-to-first-step counts from here.
LAUNCHED_AT = time.time()

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# TensorFlow's C++ start-up chatter (CUDA probes on a CPU machine) hides the
# messages users need; errors still show.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# transformers finds TensorFlow by its distribution's name (tensorflow, tensorflow-cpu,
# ...), and tensorflow-tpu, the TPU image's, is not on its list: without this every TF
# model class raises "requires the TensorFlow library" there (seen in make docker-smoke).
try:
    importlib.metadata.version("tensorflow")
except importlib.metadata.PackageNotFoundError:
    os.environ.setdefault("FORCE_TF_AVAILABLE", "1")

__version__ = "0.1.0"
