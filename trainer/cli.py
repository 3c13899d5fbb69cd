"""The flags every entry point shares: --config, a config file of configs/ with its
--config.key=value overrides, and their parsing into clear errors.

Defined once, here: absl refuses a flag defined twice (DuplicateFlagError), and every
entry point that takes a config (task, prepare, doctor, lr_find) imports this module.
"""

import sys

from absl import flags
from ml_collections import config_flags

from trainer import settings

CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/local.py; override fields with --config.section.key=value.",
    lock_config=True)


def parse_flags(argv):
    """absl's parsing, with bad --config.* overrides reported as a user error (exit 2)."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:  # wrong type, malformed value
        print(f"error: {e}", file=sys.stderr)
    except (AttributeError, KeyError):  # a key the schema does not have
        print(f"error: {settings.unknown_key_message(argv)}", file=sys.stderr)
    sys.exit(2)
