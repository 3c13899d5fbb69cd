"""Optimisation: the training plan derived from data and model, the learning-rate
schedule, and AdamW.

`plan_training` turns the config's "derive it" fields (None) into numbers from
the corpus and the model, and says why, so a user can see and override them.
"""

import dataclasses
import math

from trainer import settings
from trainer.errors import UserError
from trainer.settings import SCHEDULES

# Learning-rate rule (used when optim.learning_rate is None). Fine-tuning GPT-2
# small (width 768) with AdamW is stable and quick at about 1e-4 with warm-up and
# decay on ~8k-token steps. Wider models want smaller steps (the update of a
# width-d matrix grows with d, so lr ~ 1/d, as in muP), and bigger batches carry
# less gradient noise, so they take larger steps (lr ~ sqrt(batch), the usual
# Adam scaling). gpt2-xl (1600) at 8k tokens: 1e-4 x 768/1600 = 4.8e-5.
REFERENCE_LR = 1e-4
REFERENCE_WIDTH = 768
REFERENCE_TOKENS_PER_STEP = 8192
LR_RANGE = (1e-5, 1e-3)
# A randomly initialised model (model.bootstrap_tiny) is pre-training, not
# fine-tuning: it has everything to learn and nothing to forget. GPT-2 small
# was pre-trained at 6e-4 (nanoGPT's value), so the same width and batch rules
# start from there. The embedded 128-wide tiny model at 2,048 tokens/step:
# 6e-4 x 768/128 x 0.5 = 1.8e-3 (measured on the sample: validation loss 5.55
# at 2e-3 against 6.16 at the fine-tuning rate's 3e-4, same 200 steps).
REFERENCE_LR_FROM_SCRATCH = 6e-4
LR_RANGE_FROM_SCRATCH = (1e-4, 3e-3)

# Epoch rule (used when train.epochs is None): 3 passes is the usual sweet spot
# for fine-tuning, but a small corpus needs more passes to get enough updates and
# a large one needs fewer to keep the run affordable. Early stopping on
# validation guards the upper end. Whole epochs only, so the 3,000-step cap
# rounds DOWN: 1,200 steps/epoch -> 2 epochs (2,400 steps), never 3 (3,600).
DEFAULT_EPOCHS = 3
MIN_STEPS, MAX_STEPS_TARGET, MAX_EPOCHS = 300, 3000, 10
EVALS_PER_RUN = 20
# The wsd schedule (warm-up, stable, decay) needs no budget in advance: it holds the peak
# while validation improves and decays when it stops, so its plan is a cap, not a guess.
# The issue-25 grids found the best fine-tuning runs near epoch 13 on both a 28-step and a
# 116-step-an-epoch corpus, while the rule above planned 10 and 3 epochs; a cap of 20
# epochs (the grid's longest plan) or 20,000 steps leaves room past both. Evaluations come
# twice as often as on a fixed plan (about 40 over the cap: every half epoch at 20 epochs),
# because they decide when to decay, and a decay started an epoch late costs an epoch.
WSD_MAX_EPOCHS, WSD_MAX_STEPS, WSD_EVALS_PER_CAP = 20, 20_000, 40
# A validation pass may cost at most this share of the training between two
# evaluations. Per token, a forward pass costs ~1/3 of a training step (2N of 6N
# FLOPs), so an interval of k steps needs k >= val_tokens / (3 x 0.1 x tokens/step):
# 400k validation tokens at 4,096 tokens/step -> every 326 steps or more.
MAX_EVAL_SHARE = 0.1


@dataclasses.dataclass
class TrainingPlan:
    steps_per_epoch: int
    epochs: int
    total_steps: int
    warmup_steps: int
    learning_rate: float
    eval_every_steps: int
    checkpoint_every_steps: int
    tokens_per_step: int
    derived: dict  # field -> sentence saying how it was derived
    early_stopping_patience: int = 3  # evaluations without improvement; 0 = never stop early
    # wsd: evaluations without a new best that start the decay (it ends the run); 0 = only at the cap.
    decay_patience: int = 0
    schedule: str = "linear"  # optim.schedule with "auto" decided (a plan stored before it: linear)
    # A range test picks the peak rate before training (trainer/training/lr_range.py): asked
    # for (optim.learning_rate=auto), or derived (None) on a pretrained model under wsd. A plan
    # stored before this field: False, so a resumed run keeps the rate it began with.
    range_test: bool = False


def derived_learning_rate(n_embd: int, tokens_per_step: int, from_scratch: bool = False) -> float:
    batch_factor = min(2.0, max(0.5, math.sqrt(tokens_per_step / REFERENCE_TOKENS_PER_STEP)))
    reference, (low, high) = ((REFERENCE_LR_FROM_SCRATCH, LR_RANGE_FROM_SCRATCH) if from_scratch
                              else (REFERENCE_LR, LR_RANGE))
    lr = reference * (REFERENCE_WIDTH / n_embd) * batch_factor
    return float(min(high, max(low, lr)))


def derived_epochs(steps_per_epoch: int, schedule: str = "linear") -> int:
    """wsd: a cap of 20 epochs, fewer to stay within 20,000 steps (at least 1): 24 steps/epoch
    -> 20 (480 steps); 1,500 -> 13; 30,000 -> 1. The schedule ends the run sooner.

    Otherwise 3 epochs; more to reach 300 steps (at most 10 epochs); fewer to stay within
    3,000 steps (at least 1 epoch, which alone may be longer).

    20 steps/epoch -> ceil(300/20) = 15 -> 10 epochs (200 steps); 500 -> 3 (1,500 steps);
    1,200 -> 3,000 // 1,200 = 2 (2,400 steps); 1,501 -> 1 (1,501 steps); 10,000 -> 1.
    """
    if schedule == "wsd":
        return max(1, min(WSD_MAX_EPOCHS, WSD_MAX_STEPS // steps_per_epoch))
    if DEFAULT_EPOCHS * steps_per_epoch < MIN_STEPS:
        return min(MAX_EPOCHS, math.ceil(MIN_STEPS / steps_per_epoch))
    if DEFAULT_EPOCHS * steps_per_epoch > MAX_STEPS_TARGET:
        return max(1, MAX_STEPS_TARGET // steps_per_epoch)
    return DEFAULT_EPOCHS


def plan_training(config, train_rows: int, n_embd: int, val_tokens: int = 0) -> TrainingPlan:
    """Resolve steps, epochs, learning rate and intervals for this corpus and model.

    A model built by model.bootstrap_tiny counts as randomly initialised.
    """
    t, o = config.train, config.optim
    block = config.data.block_size
    steps_per_epoch = train_rows // t.batch_size
    if steps_per_epoch < 1:
        raise UserError(
            f"The training data makes {train_rows} row(s) of {block} tokens, fewer than one batch of "
            f"--config.train.batch_size={t.batch_size}. Add data, or lower the batch size or "
            "--config.data.block_size.")
    derived = {}
    tokens_per_step = t.batch_size * block
    epochs = t.epochs
    schedule = settings.schedule_of(config)  # "auto" decided, as settings.resolve does
    wsd = schedule == "wsd"
    if epochs is None:
        epochs = derived_epochs(steps_per_epoch, schedule)
        derived["train.epochs"] = (
            f"{epochs}: at most, since the wsd schedule decays and ends the run when validation stops "
            f"improving; {WSD_MAX_EPOCHS} epochs of {steps_per_epoch} steps, fewer to stay within "
            f"{WSD_MAX_STEPS:,} steps" if wsd else
            f"{epochs}: {steps_per_epoch} steps/epoch; 3 epochs, raised to reach "
            f"{MIN_STEPS} steps (max {MAX_EPOCHS} epochs), lowered to stay within "
            f"{MAX_STEPS_TARGET} steps (min 1 epoch)")
    total_steps = epochs * steps_per_epoch
    if t.max_steps:
        total_steps = min(total_steps, t.max_steps)
    lr = o.learning_rate
    range_test = lr == "auto" or (lr is None and range_test_by_default(schedule, config.model.bootstrap_tiny))
    if lr is None or lr == "auto":  # the rule's rate until a range test replaces it (trainer/training/lr_range.py)
        from_scratch = config.model.bootstrap_tiny
        lr = derived_learning_rate(n_embd, tokens_per_step, from_scratch)
        reference = REFERENCE_LR_FROM_SCRATCH if from_scratch else REFERENCE_LR
        rule = (f"{reference:g} ({'from-scratch' if from_scratch else 'fine-tuning'} rate) x {REFERENCE_WIDTH}/{n_embd} "
                f"(width) x sqrt({tokens_per_step}/{REFERENCE_TOKENS_PER_STEP}) (tokens/step, factor kept in [0.5, 2])")
        derived["optim.learning_rate"] = (
            f"a range test's pick before training, within x3 of the rule's {lr:.3g} = {rule}"
            + (": a pretrained model under wsd, where it reached a validation-selected grid's quality at about "
               "half the rule's tokens" if o.learning_rate is None else "") if range_test else f"{lr:.3g}: {rule}")
    warmup = o.warmup_steps
    if warmup is not None and 0 < total_steps <= warmup:
        raise UserError(
            f"--config.optim.warmup_steps={warmup} is not below the run's {total_steps} steps: the learning "
            f"rate would never reach its peak and never decay. Use fewer, e.g. "
            f"--config.optim.warmup_steps={min(total_steps - 1, max(1, round(0.06 * total_steps)))} (about 6%), "
            "or leave it unset.")
    if warmup is None:
        # wsd: of the steps before the decay would start at the cap (total / (1 + decay_ratio)),
        # so warm-up is the same share of the stable phase as of a linear plan's run.
        basis = round(total_steps / (1 + o.decay_ratio)) if wsd else total_steps
        warmup = max(1, round(o.warmup_ratio * basis))
        derived["optim.warmup_steps"] = f"{warmup}: {o.warmup_ratio:g} x {basis} steps" + (
            " (the stable phase at the cap)" if wsd else "")
    eval_every = t.eval_every_steps
    if eval_every is None:
        evals = WSD_EVALS_PER_CAP if wsd else EVALS_PER_RUN
        by_count = math.ceil(total_steps / evals)
        by_cost = math.ceil(val_tokens / (3 * MAX_EVAL_SHARE * tokens_per_step))
        eval_every = max(1, min(steps_per_epoch, max(by_count, by_cost)))
        derived["train.eval_every_steps"] = (
            f"{eval_every}: about {evals} evaluations over {total_steps} steps"
            + (f", fewer so that a pass over {val_tokens:,} validation tokens costs at most "
               f"{MAX_EVAL_SHARE:.0%} of the training between two" if by_cost > by_count else "")
            + ", at least one per epoch")
    ckpt_every = t.checkpoint_every_steps or eval_every
    patience = t.early_stopping_patience
    if patience is None:
        select_by = settings.select_by_of(config)  # "auto" decided, as settings.resolve does
        patience, why = derived_patience(select_by, math.ceil(total_steps / eval_every))
        if select_by != "loss":  # 3 for the loss goes without saying
            derived["train.early_stopping_patience"] = f"{patience}: {why}"
    decay_patience = 0
    if wsd:
        # One evaluation fewer than early stopping's patience (2 for the loss): the decay
        # must start before early stopping would end the run at the peak rate.
        decay_patience = max(1, patience - 1) if patience else 0  # 0: the decay waits for the cap
        derived["optim.schedule"] = (
            f"wsd: warm-up {warmup} steps, then the peak rate until validation has not improved for "
            f"{decay_patience} evaluations, then a linear decay over {o.decay_ratio:.0%} of the steps "
            f"trained so far; the run ends when the decay does (at step {total_steps} at the latest)")
    return TrainingPlan(steps_per_epoch=steps_per_epoch, epochs=epochs, total_steps=total_steps,
                        warmup_steps=int(warmup), learning_rate=float(lr),
                        eval_every_steps=int(eval_every), checkpoint_every_steps=int(ckpt_every),
                        tokens_per_step=tokens_per_step, derived=derived, early_stopping_patience=int(patience),
                        decay_patience=int(decay_patience), schedule=schedule, range_test=bool(range_test))


def range_test_by_default(schedule: str, from_scratch: bool) -> bool:
    """optim.learning_rate=None: a range test picks the rate when a pretrained model is
    fine-tuned under wsd, where it was measured (bench/recipe.md: within 0.1% and 2.0% of a
    validation-selected grid's best test perplexity on short and long READMEs at 52% and 56%
    of its tokens, against 100% and 107% at the rule's rate, which is 1.8-2.6% better for
    twice the compute); the rule elsewhere (from scratch, or a task metric selecting under a
    linear schedule: not measured)."""
    return schedule == "wsd" and not from_scratch


def decay_window(start_step: int, total_steps: int, decay_ratio: float) -> tuple[int, int]:
    """wsd: (first decay step, decay length) for a decay that starts at start_step, or, when
    validation never stopped improving (start_step None), the one that ends at the cap.

    Started at step 400 with decay_ratio 0.2: steps 400..479, the run ends at 480 (or at the
    cap if sooner). At the cap of 480 steps: start = 480 / 1.2 = 400, the same window.
    """
    if start_step is None:
        start_step = round(total_steps / (1 + decay_ratio))
    length = max(1, round(decay_ratio * start_step))
    return int(start_step), int(max(1, min(length, total_steps - start_step)))


# Early stopping's patience, in evaluations. The loss: 3 (a validation loss over thousands of
# tokens is smooth, so 3 evaluations without a new low is a turn). A task metric on 64
# prompts moves by 100/64 = 1.6 points an example and plateaus before it climbs (the task
# sample: patience 3 stopped a run at token F1 20 that reached 55 with 6), so it gets 30% of
# the planned evaluations, at least 3: 6 of the usual 20.
PATIENCE_BY_LOSS = 3
PATIENCE_SHARE_BY_METRIC = 0.3


def derived_patience(select_by: str, evaluations: int) -> tuple[int, str]:
    """(patience, why) for train.early_stopping_patience=None."""
    if select_by == "loss":
        return PATIENCE_BY_LOSS, "3 evaluations without a new validation-loss low (a loss is smooth)"
    patience = max(PATIENCE_BY_LOSS, math.ceil(PATIENCE_SHARE_BY_METRIC * evaluations))
    return patience, (f"{PATIENCE_SHARE_BY_METRIC:.0%} of the {evaluations} planned evaluations (at least 3): "
                      f"{select_by} on a few dozen prompts plateaus before it climbs")


# ----------------------------------------------------------------------------- schedule


def learning_rate_at(step, peak, warmup_steps, total_steps, schedule, final_ratio, ops=math, decay=None):
    """Learning rate used by optimizer step `step` (0-based).

    Warm-up is linear and reaches the peak at step warmup_steps - 1, so step 0
    already moves (peak / warmup_steps). Then, with progress p running 0 -> 1
    from warmup_steps to total_steps - 1 and floor = final_ratio x peak:
      linear:       peak - (peak - floor) p
      cosine:       floor + (peak - floor) (1 + cos(pi p)) / 2
      inverse_sqrt: peak x sqrt(warmup_steps / (step + 1))
      constant:     peak
      wsd:          peak until decay = (first decay step d, length n), then
                    peak - (peak - floor) min(1, (step - d + 1) / n): the floor at step d + n - 1
    `ops` is math (numbers) or a TF shim, so the plan, the tests and the
    optimizer share one definition.
    """
    warmup = max(1, warmup_steps)
    warm = peak * ops.minimum(1.0, (step + 1.0) / warmup)
    floor = final_ratio * peak
    span = max(1, total_steps - 1 - warmup_steps)
    p = ops.minimum(1.0, ops.maximum(0.0, (step - warmup_steps) / span))
    if schedule == "linear":
        decayed = peak - (peak - floor) * p
    elif schedule == "cosine":
        decayed = floor + (peak - floor) * 0.5 * (1.0 + ops.cos(math.pi * p))
    elif schedule == "inverse_sqrt":
        decayed = peak * ops.sqrt(warmup / ops.maximum(step + 1.0, float(warmup)))
    elif schedule == "constant":
        decayed = peak
    elif schedule == "wsd":
        start, length = decay
        decayed = peak - (peak - floor) * ops.minimum(1.0, ops.maximum(0.0, (step - start + 1.0) / length))
    else:
        raise UserError(f"--config.optim.schedule={schedule!r}: use one of {', '.join(SCHEDULES)}.")
    return ops.where(step < warmup_steps, warm, decayed)


class _MathOps:
    minimum, maximum, cos, sqrt = min, max, math.cos, math.sqrt

    @staticmethod
    def where(cond, a, b):
        return a if cond else b


def schedule_of(plan: TrainingPlan, optim_config) -> str:
    """The schedule a config names, or the plan's when the config says auto (the plan decided it)."""
    return plan.schedule if optim_config.schedule == "auto" else optim_config.schedule


def lr_value(step: int, plan: TrainingPlan, optim_config, decay_start: int | None = None) -> float:
    """decay_start: wsd's first decay step once validation started it (the run state's), else None."""
    decay = decay_window(decay_start, plan.total_steps, optim_config.decay_ratio)
    return float(learning_rate_at(step, plan.learning_rate, plan.warmup_steps, plan.total_steps,
                                  schedule_of(plan, optim_config), optim_config.final_lr_ratio, _MathOps, decay))


def make_schedule(plan: TrainingPlan, optim_config):
    """The plan's schedule for the optimizer. wsd's decay window is a variable (first step,
    length) that `start_decay` moves from the host when validation stops improving: created
    in strategy.scope() with the optimizer, so every replica reads the same window."""
    import tensorflow as tf

    class _TFOps:
        minimum, maximum, cos, sqrt, where = (tf.minimum, tf.maximum, tf.cos, tf.sqrt, tf.where)

    class WarmupDecay(tf.keras.optimizers.schedules.LearningRateSchedule):
        def __init__(self):
            self.decay = tf.Variable(decay_window(None, plan.total_steps, optim_config.decay_ratio),
                                     dtype=tf.float32, trainable=False, name="decay_window",
                                     aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

        def __call__(self, step):
            step = tf.cast(step, tf.float32)
            return learning_rate_at(step, plan.learning_rate, plan.warmup_steps, plan.total_steps,
                                    schedule_of(plan, optim_config), optim_config.final_lr_ratio, _TFOps,
                                    (self.decay[0], self.decay[1]))

        def start_decay(self, start_step: int | None) -> None:
            self.decay.assign(decay_window(start_step, plan.total_steps, optim_config.decay_ratio))

        def get_config(self):
            return {"plan": dataclasses.asdict(plan), "schedule": schedule_of(plan, optim_config)}

    return WarmupDecay()


# ----------------------------------------------------------------------------- optimizer

# Variables that are never decayed: biases and LayerNorm scales/offsets. Decaying
# them pulls normalisation toward zero and hurts, as every GPT recipe notes.
NO_DECAY = ["bias", "ln_", "LayerNorm", "layer_norm", "gamma", "beta"]


def ema_momentum(eval_every_steps: int) -> float:
    """optim.weight_averaging=ema: an average over about one evaluation interval, so each
    evaluation compares the weights with their own recent past. Every 11 steps: 1 - 1/11 =
    0.909; every 250: 0.996; kept in [0.9, 0.999]."""
    return min(0.999, max(0.9, 1.0 - 1.0 / max(1, eval_every_steps)))


def make_optimizer(plan: TrainingPlan, optim_config, schedule=None, loss_scaling: bool = False):
    """AdamW on the plan's schedule (or `schedule`, e.g. lr_find's sweep); create it
    inside strategy.scope() so its slots are distributed like the weights.

    loss_scaling (mixed_float16): wrapped in a dynamic LossScaleOptimizer, which
    skips a step whose gradients overflow and halves the scale (doubling it after
    2,000 clean steps)."""
    import tensorflow as tf

    averaging = plan is not None and optim_config.weight_averaging == "ema"
    optimizer = tf.keras.optimizers.AdamW(
        learning_rate=schedule or make_schedule(plan, optim_config), weight_decay=optim_config.weight_decay,
        beta_1=optim_config.beta_1, beta_2=optim_config.beta_2, epsilon=optim_config.epsilon,
        # Keras keeps the average as an optimizer slot ("average"), updated after every step and
        # saved in every checkpoint with the other slots; it never overwrites the weights itself.
        use_ema=averaging, ema_momentum=ema_momentum(plan.eval_every_steps) if averaging else 0.99)
    optimizer.exclude_from_weight_decay(var_names=NO_DECAY)
    if loss_scaling:
        optimizer = tf.keras.mixed_precision.LossScaleOptimizer(optimizer)
    return optimizer


class averaged_weights:
    """`with averaged_weights(model, optimizer):` the model holds the optimizer's moving
    average of its weights (optim.weight_averaging=ema), and its own weights again after.

    Keras exposes the average only as a whole-model overwrite (finalize_variable_values), so
    this reads its slot list the way that method does (_model_variables_moving_average,
    indexed by _index_dict[_var_key(var)]; tf-keras 2.21). Assigned in cross-replica context,
    so every replica of a mirrored variable takes the same value."""

    def __init__(self, model, optimizer):
        self.model = model
        self.inner = getattr(optimizer, "inner_optimizer", optimizer)  # under a LossScaleOptimizer

    def __enter__(self):
        import tensorflow as tf

        inner = self.inner
        self.variables = list(self.model.trainable_variables)
        self.kept = [tf.identity(v) for v in self.variables]
        for var in self.variables:
            var.assign(inner._model_variables_moving_average[inner._index_dict[inner._var_key(var)]])
        return self

    def __exit__(self, *exc):
        for var, value in zip(self.variables, self.kept):
            var.assign(value)
        self.kept = []
