"""Write a serving SavedModel (README "Serve the model") from any transformers TF export:
a run that finished before OUTPUT/serving/ existed, or a model folder of your own.

    python -m trainer.export_serving --model_dir=runs/local/export --output_dir=runs/local/serving
"""

import sys

import trainer  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from absl import app, flags

from trainer.errors import UserError

flags.DEFINE_string("model_dir", None, "A transformers TF model folder, e.g. runs/local/export (local or gs://).")
flags.DEFINE_string("output_dir", None, "Where the SavedModel goes, e.g. runs/local/serving (local or gs://).")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from trainer import model as model_lib  # after flag parsing: --help stays fast

    try:
        model_lib.export_serving(FLAGS.model_dir, FLAGS.output_dir)
    except UserError as e:
        print(f"error: {str(e).replace('--config.model.name_or_path=', '--model_dir=')}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    flags.mark_flags_as_required(["model_dir", "output_dir"])
    app.run(main)
