"""Entry point: python -m trainer.task --config=configs/NAME.py [--config.key=value ...]

Kept short on purpose: it parses flags and calls train.train_and_evaluate.
"""

import sys

import trainer  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from absl import app, flags
from ml_collections import config_flags

from trainer.errors import UserError

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/local.py; override fields with --config.section.key=value.",
    lock_config=True)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from absl import logging

    from trainer import train  # after flag parsing: --help stays fast

    logging.set_verbosity(logging.WARNING)  # TensorFlow's per-save INFO lines drown the progress bar

    try:
        train.train_and_evaluate(_CONFIG.value)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except train.Interrupted as e:
        print(str(e), file=sys.stderr)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    app.run(main)
