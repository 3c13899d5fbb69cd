"""Training: the step, the optimiser and its schedule, the learning-rate range test,
checkpoints and run state, and distribution.

    steps.py          the update and eval steps, written as a single-replica view
    optimization.py   the plan (steps, epochs, warm-up, evaluation interval), schedules, AdamW
    lr_range.py       the range test's sweep and optim.learning_rate=auto
    checkpoints.py    config.json, the latest and best checkpoints, resume safety
    distribution.py   the only module that knows strategies, TF_CONFIG, the chief and agreed stops

It uses data and model, never evaluation, the doctor, reporting or the run.
Callers import the modules: `from trainer.training import checkpoints, steps`.
"""
