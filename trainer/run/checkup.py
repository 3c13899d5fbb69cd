"""The doctor on its own (`python -m trainer.doctor`): the run's inputs prepared as the
trainer would, every pre-flight check, and optionally overfit-one-batch; nothing trains
and only doctor.json and doctor.md are written."""

from trainer import diagnosis
from trainer import filesystem
from trainer.errors import UserError
from trainer.run import inputs
from trainer.training import checkpoints


def check_up(config, overfit_batch: bool = False) -> tuple[object, list, dict]:
    """(the checked config, findings most severe first, the audit's stats). UserError when an
    input is wrong; the output folder is checked but not written."""
    prep = inputs.prepare(config)
    config = prep.config  # checked, paths expanded
    filesystem.check_output_location(config.output_dir)  # before TensorFlow retries forever
    checkpoints.OutputDir(config.output_dir)  # refuses a folder that is not a run (a model's, say)
    findings, stats = diagnosis.run_checks(config, prep, diagnosis.estimate_parameters(prep.model_config))
    if overfit_batch:
        if prep.train_blocks is None:
            raise UserError("--overfit_batch trains on rows in memory: unset --config.data.prepared_dir "
                            "to run it on the raw files.")
        findings.append(diagnosis.overfit_one_batch(config, prep))
    return config, findings, stats
