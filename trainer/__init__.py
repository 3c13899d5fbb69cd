"""tunewell: fine-tune GPT-2-family causal language models with TensorFlow.

transformers' TF model classes are written against Keras 2, which TensorFlow
2.16+ only provides as the separate `tf-keras` package. TensorFlow picks the
Keras flavour once, when it is first imported, from TF_USE_LEGACY_KERAS; every
entry point imports this package first, so this is the one place that sets it.
"""

import importlib.metadata
import os
import sys
import time

from trainer import native_logs

# When this process started, near enough (the interpreter's own start-up comes
# first, ~30 ms): the report's time-to-first-step counts from here.
LAUNCHED_AT = time.time()

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
# A command (`python -m trainer.task`, ...: while Python imports the package of a -m
# module, sys.argv[0] is still "-m") gets a clean terminal: TensorFlow's C++ start-up
# lines and CUDA probes filtered at the file descriptor (native_logs says why the
# environment variable is not enough). Tests and library use keep stderr untouched.
if sys.argv[:1] == ["-m"]:
    native_logs.quiet_for_command()

# transformers finds TensorFlow by its distribution's name (tensorflow, tensorflow-cpu,
# ...), and tensorflow-tpu, the TPU image's, is not on its list: without this every TF
# model class raises "requires the TensorFlow library" there (seen in make docker-smoke).
try:
    importlib.metadata.version("tensorflow")
except importlib.metadata.PackageNotFoundError:
    os.environ.setdefault("FORCE_TF_AVAILABLE", "1")

__version__ = "0.1.0"
