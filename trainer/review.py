"""Entry point: the blinded review's result.

    python -m trainer.review --run=OUTPUT [--ratings=PATH/TO/review.csv]

Reads the filled sheet against OUTPUT/review_key.csv and prints the fine-tuned
model's win rate (trainer/evaluation/review_sheet.py does the work).
"""

import sys

import trainer  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads, if a gs:// path loads it)
from absl import app, flags

from trainer import filesystem
from trainer.errors import UserError
from trainer.evaluation import review_sheet

flags.DEFINE_string("run", None, "The run's output_dir (local or gs://), where review_key.csv is.")
flags.DEFINE_string("ratings", None, "The filled review.csv (local or gs://); default: the run's own review.csv.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    run = flags.FLAGS.run
    try:
        result = review_sheet.summarise(run, flags.FLAGS.ratings or filesystem.join(filesystem.expand(run),
                                                                                   review_sheet.SHEET))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(review_sheet.report(result))
    print(f"Written: {filesystem.join(filesystem.expand(run), review_sheet.RESULT)}")


if __name__ == "__main__":
    flags.mark_flag_as_required("run")
    app.run(main)
