"""The run: the stories that use every concern, in named stages.

    train.py        train_and_evaluate: the training run's table of contents (stages.py: what they exchange)
    inputs.py       prepare: the one place that turns a config plus data into rows and a plan
    loop.py         restore, then the loop: train, log, evaluate, early-stop, checkpoint
    finish.py       best weights, exports, review sheet, report
    preparation.py  prepare_data: rows written as shards once (trainer.prepare)
    checkup.py      the doctor on its own (trainer.doctor)
    lr_find.py      the learning-rate range test (trainer.lr_find)
    inspection.py   which rows each worker reads in an epoch (trainer.prepare --inspect)

Only the entry points (trainer/task.py, prepare.py, doctor.py, lr_find.py)
import this package; it imports every concern and the foundation.
"""
