"""Entry point: say why a fine-tune will fail before any compute is spent.

    python -m trainer.doctor --config=configs/NAME.py [--config.key=value ...] [--overfit_batch]

Runs the data audit, checks the settings against the data and the model, and
the labels the trainer will feed (trainer/run/checkup.py; the checks are in
trainer/diagnosis/). trainer.task runs the same checks as a pre-flight
(--config.preflight=strict|warn|off). Writes OUTPUT/doctor.json and OUTPUT/doctor.md;
exits 1 when a check found an error.
"""

import os
import sys

import trainer  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from absl import app, flags

from trainer import cli
from trainer import diagnosis
from trainer.errors import UserError
from trainer.run import checkup

flags.DEFINE_bool("overfit_batch", False, "Also train on one batch and check the loss nears zero.")


def main(argv):
    try:
        config, findings, stats = checkup.check_up(cli.CONFIG.value, flags.FLAGS.overfit_batch)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(diagnosis.terminal_summary(findings))
    diagnosis.write_outputs(findings, stats, config.output_dir)
    print(f"Written: {os.path.join(config.output_dir, 'doctor.json')} and doctor.md")
    sys.exit(1 if any(f.severity == "error" for f in findings) else 0)


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    app.run(main, flags_parser=cli.parse_flags)
