"""Entry point: the learning-rate range test.

    python -m trainer.lr_find --config=configs/NAME.py [--config.key=value ...]
        [--num_steps=200] [--min_lr=1e-7] [--max_lr=1.0]

Trains the run's own model on its own data while the learning rate grows, and
suggests a rate (trainer/run/lr_find.py does the work). Writes OUTPUT_DIR/lr_find/.
"""

import sys

import trainer  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from absl import app, flags, logging

from trainer import cli
from trainer import reporting
from trainer.errors import UserError
from trainer.run.lr_find import find_learning_rate

flags.DEFINE_integer("num_steps", 200, "Optimizer steps of the sweep (an upper bound: it stops when the "
                     "loss blows up).")
flags.DEFINE_float("min_lr", 1e-7, "Learning rate of the first step.")
flags.DEFINE_float("max_lr", 1.0, "Learning rate of the last step.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # TensorFlow's INFO lines drown the progress bar
    try:
        find_learning_rate(cli.CONFIG.value, flags.FLAGS.num_steps, flags.FLAGS.min_lr, flags.FLAGS.max_lr,
                           log=reporting.say)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    app.run(main, flags_parser=cli.parse_flags)
