"""Learning-rate range test (`python -m trainer.lr_find`).

Trains the run's own model on the run's own data for num_steps steps while the
learning rate grows geometrically from min_lr to max_lr, records the loss at
every step, and suggests the rate at which the loss fell fastest (Smith 2015,
"Cyclical Learning Rates", section 3.3; fast.ai's lr_find). The default sweep
spans 7 decades in 200 steps: each step multiplies the rate by
10^(7/199) = 1.084, about 28 steps per decade.

Everything it writes goes to OUTPUT_DIR/lr_find/ (lr_find.json, lr_find.png,
logs/ for TensorBoard), swapped in whole at the end; the rest of OUTPUT_DIR (a
training run and its checkpoints) is never read or touched, and the model
folder is only read. Nothing is written when an input is wrong.

Sections of find_learning_rate: settings -> data -> model files and tokenizer
-> tokens -> strategy, model, sweep optimizer -> sweep -> suggestion -> outputs.
"""

import math
import os

from trainer import data as data_lib
from trainer import filesystem
from trainer import model as model_lib
from trainer import settings
from trainer.errors import UserError
from trainer.run import inputs
from trainer.training import checkpoints
from trainer.training import distribution
from trainer.training import steps as steps_lib
# The sweep's pieces live in trainer/training/lr_range.py (the trainer's
# optim.learning_rate=auto uses them too); the names stay reachable here.
from trainer.training.lr_range import (DIVERGENCE_FACTOR, SMOOTHING, SmoothedLoss, finite_or_none,  # noqa: F401
                                       make_sweep_optimizer, run_sweep, suggest, sweep_learning_rate)

DIRECTORY = "lr_find"


# ----------------------------------------------------------------------------- pieces


def write_plot(path: str, result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    as_float = lambda values: [math.nan if v is None else v for v in values]  # noqa: E731  (JSON nulls)
    figure, axes = plt.subplots(figsize=(8, 5))
    axes.plot(result["lrs"], as_float(result["losses"]), color="lightgray", linewidth=1, label="loss")
    axes.plot(result["lrs"], as_float(result["smoothed"]), color="tab:blue", linewidth=2,
              label=f"smoothed loss (EMA, beta {SMOOTHING})")
    suggested = result["suggested_learning_rate"]
    axes.axvline(suggested, color="tab:red", linestyle="--", label=f"suggested {suggested:.1e}")
    axes.set_xscale("log")
    axes.set_xlabel("learning rate")
    axes.set_ylabel("training loss (nats/token)")
    # The blown-up tail (4x the best smoothed loss, far more raw) would flatten the part that
    # matters, from the starting loss down to the minimum: show that, plus half again above.
    start = result["smoothed"][0]
    low = min(v for v in as_float(result["losses"]) + as_float(result["smoothed"]) if math.isfinite(v))
    if start is not None and start > low:
        span = start - low
        axes.set_ylim(low - 0.1 * span, start + 0.5 * span)
    axes.set_title(f"Learning-rate range test: {result['num_steps_run']} steps, "
                   f"stopped: {result['stopped_because']}")
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_outputs(folder: str, result: dict, log) -> None:
    """lr_find.json, lr_find.png and logs/, written beside `folder` and swapped in
    whole (filesystem.publish_dir): a rerun replaces an earlier sweep, never mixes with it."""
    import tensorflow as tf

    def write(tmp):
        filesystem.write_json(os.path.join(tmp, "lr_find.json"), result)
        writer = tf.summary.create_file_writer(os.path.join(tmp, "logs"))
        with writer.as_default():
            # Step = updates done, as in the training logs: step s shows the rate of update s - 1.
            for i, (lr, loss, smoothed) in enumerate(zip(result["lrs"], result["losses"], result["smoothed"])):
                nan = float("nan")
                tf.summary.scalar("lr_find/loss", nan if loss is None else loss, step=i + 1)
                tf.summary.scalar("lr_find/smoothed_loss", nan if smoothed is None else smoothed, step=i + 1)
                tf.summary.scalar("lr_find/learning_rate", lr, step=i + 1)
        writer.close()
        try:
            write_plot(os.path.join(tmp, "lr_find.png"), result)
        except ImportError:
            log("lr_find.png not written: matplotlib is not installed (pip install matplotlib).")

    filesystem.publish_dir(folder, write)


# ----------------------------------------------------------------------------- the test


def find_learning_rate(config, num_steps: int = 200, min_lr: float = 1e-7, max_lr: float = 1.0,
                       log=print) -> dict:
    """Run the range test for `config`'s model and data; returns what lr_find.json holds,
    plus `output_dir` (OUTPUT_DIR/lr_find)."""
    import numpy as np
    import tensorflow as tf
    from tqdm.auto import tqdm

    # ------------------------------------------------------------------ settings
    if num_steps < 2:
        raise UserError(f"--num_steps={num_steps} must be at least 2 (e.g. 200): a sweep needs two rates.")
    if not 0 < min_lr < max_lr:
        raise UserError(f"--min_lr={min_lr:g} and --max_lr={max_lr:g}: need 0 < min_lr < max_lr "
                        "(e.g. --min_lr=1e-7 --max_lr=1).")
    # ------------------------------------------------------------------ data, tokenizer, tokens
    # The run's own preparation (same files, split, checks): validation documents stay unseen.
    if config.data.prepared_dir:
        raise UserError("lr_find sweeps on the raw files (a few hundred steps): unset "
                        "--config.data.prepared_dir and keep --config.data.train_files.")
    prep = inputs.prepare(config, log)
    config = prep.config  # checked, paths expanded
    filesystem.check_output_location(config.output_dir)  # before TensorFlow retries forever
    checkpoints.OutputDir(config.output_dir)  # refuses a folder that is not a run (a model's, say)
    output_dir = os.path.join(config.output_dir, DIRECTORY)
    blocks, steps_per_epoch = prep.train_blocks, prep.plan.steps_per_epoch
    epochs = num_steps / steps_per_epoch
    # e.g. 200 steps at 8 rows/step over 216 rows (27 steps/epoch) = 7.4 epochs: the
    # data repeats, reshuffled each epoch, exactly as train_dataset does for a run.
    log(f"Sweep: {num_steps} steps of {config.train.batch_size} x {config.data.block_size} tokens "
        f"({epochs:.2g} epoch(s) of {blocks.rows:,} rows), learning rate {min_lr:.1e} -> {max_lr:.1e} "
        f"(x{sweep_learning_rate(1, min_lr, max_lr, num_steps) / min_lr:.3f} per step).")

    # ------------------------------------------------------------------ strategy, model, sweep optimizer
    strategy = distribution.get_strategy(config.runtime, log)
    distribution.check_batch(strategy, config.train.batch_size, config.train.grad_accum_steps)
    with strategy.scope():
        tf.keras.utils.set_random_seed(config.seed)
        model, _ = model_lib.load_model(config.model.name_or_path, log)
        model_lib.match_vocabulary(model, prep.tokenizer, log)
        optimizer = make_sweep_optimizer(config.optim, min_lr, max_lr, num_steps)
    train_step = steps_lib.make_train_step(model, optimizer, strategy, config.train.grad_accum_steps,
                                           config.optim.max_grad_norm, document_eos_id=settings.document_eos_id(
                                               config.data, prep.tokenizer.eos_token_id))
    batches = strategy.experimental_distribute_dataset(data_lib.train_dataset(
        blocks, config.train.batch_size, steps_per_epoch, num_steps, 0, config.seed))

    # ------------------------------------------------------------------ sweep
    bar = tqdm(total=num_steps, unit="step", desc="LR range test", dynamic_ncols=True)
    try:
        lrs, losses, smoothed, stopped_because, why = run_sweep(train_step, batches, min_lr, max_lr, num_steps,
                                                                SMOOTHING, bar)
    finally:
        bar.close()
    log(f"Stopped after {len(lrs)} steps: {why}.")

    # ------------------------------------------------------------------ suggestion
    result = {"lrs": lrs, "losses": finite_or_none(losses), "smoothed": finite_or_none(smoothed),
              **suggest(lrs, [v if math.isfinite(v) else np.nan for v in smoothed]),
              "num_steps_run": len(lrs), "stopped_because": stopped_because}

    # ------------------------------------------------------------------ outputs
    write_outputs(output_dir, result, log)
    suggested, steepest = result["suggested_learning_rate"], result["steepest_lr"]
    steepest_words = (f"steepest descent at {steepest:.1e}" if steepest is not None
                      else "no descent: the loss never fell, lower --min_lr")
    log(f"Suggested learning rate: {suggested:.1e} ({steepest_words}, minimum loss at "
        f"{result['lr_at_min_loss']:.1e}). Use --config.optim.learning_rate={suggested:.1e}")
    if stopped_because == "completed":
        log(f"The loss never blew up below --max_lr={max_lr:g}: the curve may not show where training "
            "breaks down; raise --max_lr to see it.")
    log(f"Curve: {os.path.join(output_dir, 'lr_find.png')}; data: {os.path.join(output_dir, 'lr_find.json')}; "
        f"TensorBoard: {os.path.join(output_dir, 'logs')}.")
    return {**result, "output_dir": output_dir}
