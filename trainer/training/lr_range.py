"""The learning-rate range test's pieces, and optim.learning_rate=auto.

A sweep trains while the rate grows geometrically and records the loss at each
step (Smith 2015, "Cyclical Learning Rates", section 3.3; fast.ai's lr_find).
`python -m trainer.lr_find` runs a long one for a person to read;
`auto_learning_rate` runs a short one before a run (optim.learning_rate=auto).
This module defines no flags, so the trainer can import it.
"""

import math
import time

from trainer import data as data_lib
from trainer.training import optimization
from trainer.training import steps as steps_lib
from trainer.errors import UserError

# Exponential moving average of the loss: beta 0.9 averages over ~10 steps, a
# third of a decade of the default sweep, enough to see through batch-to-batch
# noise without hiding the turn of the curve.
SMOOTHING = 0.9
# Stop once the smoothed loss is 4x the best one seen: past that point the
# curve only says "too high", and each further step costs time.
DIVERGENCE_FACTOR = 4.0


def sweep_learning_rate(step, min_lr: float, max_lr: float, num_steps: int):
    """Rate used by optimizer step `step` (0-based): min_lr at 0, max_lr at num_steps - 1.

    Works on numbers (the record) and on float tensors (the optimizer's schedule),
    so both use one definition."""
    return min_lr * (max_lr / min_lr) ** (step / (num_steps - 1))


class SmoothedLoss:
    """Bias-corrected EMA: the raw average starts at 0, so step i divides by
    1 - beta^(i+1) (Adam's correction); without it the first ~20 points read low."""

    def __init__(self, beta: float = SMOOTHING):
        self.beta, self.average, self.count = beta, 0.0, 0

    def add(self, loss: float) -> float:
        self.count += 1
        self.average = self.beta * self.average + (1 - self.beta) * loss
        return self.average / (1 - self.beta ** self.count)


def suggest(lrs, smoothed) -> dict:
    """steepest_lr, lr_at_min_loss and the suggested_learning_rate for one sweep.

    Steepest descent: most negative d(smoothed loss)/d(log10 lr), looked for only
    before the minimum (after it the curve rises, and its slopes say nothing about
    a good rate). The suggestion is the SMALLER of the steepest rate and
    lr_at_min_loss / 10, as fast.ai does: the minimum is where training already
    breaks down, so a rate a decade below it is safe, and the steepest point on a
    noisy curve can sit right next to that minimum; taking the smaller keeps the
    conservative answer whichever of the two is fooled. steepest_lr is None when
    the loss never fell (the minimum is the first point).
    """
    import numpy as np

    lrs, smoothed = np.asarray(lrs, np.float64), np.asarray(smoothed, np.float64)
    if not np.isfinite(smoothed).any():
        raise UserError("The loss was not finite from the first step of the sweep, at the smallest learning "
                        "rate: the model or the data is broken, not the learning rate.")
    at_min = int(np.nanargmin(smoothed))
    lr_at_min = float(lrs[at_min])
    steepest = None
    if at_min >= 1:
        slopes = np.gradient(smoothed[: at_min + 1], np.log10(lrs[: at_min + 1]))
        steepest = float(lrs[int(np.argmin(slopes))])
    conservative = lr_at_min / 10
    suggested = conservative if steepest is None else min(steepest, conservative)
    return {"suggested_learning_rate": suggested, "steepest_lr": steepest, "lr_at_min_loss": lr_at_min}


def run_sweep(train_step, batches, min_lr: float, max_lr: float, num_steps: int, smoothing: float, bar=None):
    """Train on `batches` while the rate grows from min_lr to max_lr; stop when the smoothed
    loss is not finite or DIVERGENCE_FACTOR x its best. Returns (lrs, losses, smoothed,
    stopped_because, why). The loss of a step is the global batch's (all-reduced sums),
    so every worker of a multi-worker job stops at the same step."""
    lrs, losses, smoothed = [], [], []
    smoother = SmoothedLoss(smoothing)
    best = math.inf
    stopped_because, why = "completed", f"all {num_steps} steps ran"
    try:
        for step, batch in enumerate(batches):
            out = train_step(batch)
            loss = float(out["loss_sum"]) / max(float(out["count"]), 1.0)
            lr = sweep_learning_rate(step, min_lr, max_lr, num_steps)
            lrs.append(lr)
            losses.append(loss)
            smoothed.append(smoother.add(loss))
            best = min(best, smoothed[-1])
            if bar is not None:
                bar.update(1)
                bar.set_postfix(lr=f"{lr:.1e}", loss=f"{smoothed[-1]:.3f}")
            if not math.isfinite(smoothed[-1]):
                stopped_because, why = "diverged", f"the loss became {loss} at lr {lr:.1e}"
                break
            if smoothed[-1] > DIVERGENCE_FACTOR * best:
                stopped_because = "diverged"
                why = (f"smoothed loss {smoothed[-1]:.3g} > {DIVERGENCE_FACTOR:g} x best {best:.3g} "
                       f"at lr {lr:.1e}")
                break
    except KeyboardInterrupt:  # Ctrl-C once the curve has turned: still report what was measured
        stopped_because, why = "interrupted", "Ctrl-C"
        if len(lrs) < 2:
            raise
    return lrs, losses, smoothed, stopped_because, why


def make_sweep_optimizer(optim_config, min_lr: float, max_lr: float, num_steps: int, loss_scaling: bool = False):
    """AdamW as optimization.make_optimizer builds it (same betas, epsilon, weight decay,
    no decay on biases and LayerNorm, loss scaling under mixed_float16: unscaled float16
    gradients underflow to 0 or overflow to inf, and the sweep would read that as a
    loss that never falls or one that diverges), on the sweep's schedule. Create it
    inside strategy.scope()."""
    import tensorflow as tf

    class ExponentialSweep(tf.keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            return sweep_learning_rate(tf.cast(step, tf.float32), min_lr, max_lr, num_steps)

        def get_config(self):
            return {"min_lr": min_lr, "max_lr": max_lr, "num_steps": num_steps}

    return optimization.make_optimizer(None, optim_config, schedule=ExponentialSweep(), loss_scaling=loss_scaling)


# ----------------------------------------------------------------------------- optim.learning_rate=auto

# The range test before a run may cost this share of the run's steps, within
# [AUTO_MIN_STEPS, AUTO_MAX_STEPS]: 300 steps -> 20 (6.7%), 1,000 -> 50, 3,000 -> 100 (3.3%).
AUTO_SHARE = 0.05
AUTO_MIN_STEPS, AUTO_MAX_STEPS = 20, 100
# It sweeps from a tenth of the derived rule to 100x it: the loss minimum (where a
# higher rate stops helping) must be able to fall past 10x the rule, or "a tenth of
# the minimum" could never pick above the rule (the first version swept to 10x and,
# on every measured run, returned the rule itself). The pick stays within a factor
# AUTO_BOUND of the rule (the sanity bound).
AUTO_SPAN_LOW, AUTO_SPAN_HIGH = 10.0, 100.0
AUTO_BOUND = 3.0


def auto_budget(total_steps: int) -> int:
    return int(min(AUTO_MAX_STEPS, max(AUTO_MIN_STEPS, round(AUTO_SHARE * total_steps))))


def auto_learning_rate(model, strategy, blocks, plan, config, log=print, document_eos_id: int | None = None,
                       loss_scaling: bool = False) -> dict:
    """optim.learning_rate=auto: a short range test on the run's own model and data, then
    the weights are put back as they were.

    Sweeps derived/10 -> derived x 100 geometrically over auto_budget(total) steps
    (the batches of the run's first steps), stopping early when the loss blows up, and
    picks a tenth of the rate at the smoothed loss minimum (fast.ai's "minimum / 10";
    the steepest descent is not used: over 20 steps it moved with the seed, 1e-4 to
    3e-4 on one corpus), kept within a factor 3 of the derived rule; falls back to the
    rule when the loss never fell.
    Returns what config.json and the report keep: the curve, the pick and why, and
    the cost in steps (and as a share of the run)."""
    derived = plan.learning_rate
    num_steps = auto_budget(plan.total_steps)
    min_lr, max_lr = derived / AUTO_SPAN_LOW, derived * AUTO_SPAN_HIGH
    # EMA over ~a sixth of the sweep (beta 0.85 at 20 steps, 0.9 from 30): the default
    # 0.9 lags ~10 steps, half of a 20-step sweep.
    smoothing = min(SMOOTHING, 1 - 3 / num_steps)
    log(f"Learning rate auto: a range test of {num_steps} steps ({num_steps / plan.total_steps:.1%} of the run's "
        f"{plan.total_steps}), {min_lr:.1e} -> {max_lr:.1e} around the derived {derived:.2g}.")
    initial = [w.numpy() for w in model.trainable_weights]
    with strategy.scope():
        optimizer = make_sweep_optimizer(config.optim, min_lr, max_lr, num_steps, loss_scaling)
    train_step = steps_lib.make_train_step(model, optimizer, strategy, config.train.grad_accum_steps,
                                           config.optim.max_grad_norm, document_eos_id=document_eos_id)
    batches = data_lib.distributed_train_data(strategy, blocks, config.train.batch_size, plan.steps_per_epoch,
                                              num_steps, 0, config.seed)
    started = time.perf_counter()
    lrs, losses, smoothed, stopped_because, why = run_sweep(train_step, batches, min_lr, max_lr, num_steps,
                                                            smoothing)
    seconds = time.perf_counter() - started
    for variable, value in zip(model.trainable_weights, initial):  # the run starts from the model as loaded
        variable.assign(value)
    finite = [v if math.isfinite(v) else float("nan") for v in smoothed]
    try:
        picked = suggest(lrs, finite)
    except UserError:
        picked = {"suggested_learning_rate": None, "steepest_lr": None, "lr_at_min_loss": None}
    if picked["steepest_lr"] is None:  # the minimum is the first point: the loss never fell
        chosen, suggestion = derived, None
        reason = "the loss never fell during the sweep: the derived rule is kept"
    else:
        suggestion = picked["lr_at_min_loss"] / 10
        chosen = min(max(suggestion, derived / AUTO_BOUND), derived * AUTO_BOUND)
        reason = (f"a tenth of the loss minimum at {picked['lr_at_min_loss']:.2g}"
                  + (" (the sweep's last rate: the loss was still falling)" if stopped_because == "completed"
                     and picked["lr_at_min_loss"] == lrs[-1] else "")
                  + ("" if chosen == suggestion else f", kept within x{AUTO_BOUND:g} of the derived {derived:.2g}"))
    picked["suggested_learning_rate"] = suggestion
    log(f"Learning rate auto: {chosen:.3g} ({reason}); cost {len(lrs)} steps, {seconds:.1f} s.")
    return {"learning_rate": chosen, "derived_learning_rate": derived, "reason": reason, "loss_scaling": loss_scaling,
            "sweep_steps": len(lrs), "budget_steps": num_steps, "share_of_run": len(lrs) / plan.total_steps,
            "seconds": seconds, "stopped_because": stopped_because, "why_stopped": why,
            "lrs": lrs, "losses": finite_or_none(losses), "smoothed": finite_or_none(smoothed), **picked}


def finite_or_none(values):
    """JSON has no NaN or Infinity: a loss that blew up is written as null."""
    return [float(v) if math.isfinite(v) else None for v in values]
