"""The doctor: before, during and after a run, say in plain words what will go or went
wrong, and what to change.

    audit/        the data audit, one module per family of checks, one registry (CHECKS)
    preflight.py  the audit plus the settings and label checks, overfit-one-batch, doctor.json/md
    monitors.py   while training: generation health, warnings from the curves
    after_run.py  after it: the run's class from its curves, with the next configuration

It uses data, model and training (the overfit-one-batch check trains); the run
calls it. It never imports evaluation or reporting.
"""

from trainer.diagnosis.after_run import (DATA, HEALTHY, LR_TOO_HIGH, LR_TOO_LOW, NOT_LEARNING, OVERFIT,
                                         TASK_DISAGREEMENT, TRUNCATION, UNDERFIT, diagnose,
                                         task_metric_disagreement)
from trainer.diagnosis.monitors import TrainingNgrams, generation_health, monitor
from trainer.diagnosis.preflight import (AUDIT_TEXT_BYTES, audit_bound, estimate_parameters, label_findings, markdown,
                                         overfit_one_batch, prepared_findings, run_checks, sample_finding,
                                         settings_findings, terminal_summary, text_bytes, write_outputs)
