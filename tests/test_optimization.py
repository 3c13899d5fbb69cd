"""Learning-rate schedules, the derived plan, and which weights are decayed."""

import math

import numpy as np
import pytest

from configs import default
from trainer import optimization
from trainer.errors import UserError


def plan(total=100, warmup=10, peak=1e-3):
    return optimization.TrainingPlan(steps_per_epoch=total, epochs=1, total_steps=total, warmup_steps=warmup,
                                     learning_rate=peak, eval_every_steps=10, checkpoint_every_steps=10,
                                     tokens_per_step=1, derived={})


def optim(schedule, final=0.1):
    config = default.get_config().optim
    config.schedule, config.final_lr_ratio = schedule, final
    return config


@pytest.mark.parametrize("schedule", optimization.SCHEDULES)
def test_warmup_is_linear_and_reaches_the_peak(schedule):
    p = plan()
    assert optimization.lr_value(0, p, optim(schedule)) == pytest.approx(1e-4)  # peak / 10
    assert optimization.lr_value(4, p, optim(schedule)) == pytest.approx(5e-4)
    assert optimization.lr_value(9, p, optim(schedule)) == pytest.approx(1e-3)


def test_decay_values():
    p = plan()  # decay runs from step 10 to step 99 (89 steps)
    assert optimization.lr_value(10, p, optim("linear")) == pytest.approx(1e-3)
    assert optimization.lr_value(99, p, optim("linear")) == pytest.approx(1e-4)  # final_lr_ratio 0.1
    mid = 10 + 89 / 2
    assert optimization.lr_value(mid, p, optim("linear")) == pytest.approx(5.5e-4)
    assert optimization.lr_value(mid, p, optim("cosine")) == pytest.approx(5.5e-4)
    quarter = 10 + 89 / 4
    assert optimization.lr_value(quarter, p, optim("cosine")) == pytest.approx(
        1e-4 + 9e-4 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert optimization.lr_value(39, p, optim("inverse_sqrt")) == pytest.approx(1e-3 * math.sqrt(10 / 40))
    assert optimization.lr_value(99, p, optim("constant")) == pytest.approx(1e-3)
    assert optimization.lr_value(99, p, optim("cosine", final=0.0)) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("schedule", optimization.SCHEDULES)
def test_tensorflow_schedule_matches_the_python_one(schedule):
    p = plan(total=50, warmup=5)
    tf_schedule = optimization.make_schedule(p, optim(schedule))
    for step in (0, 3, 4, 5, 6, 20, 49, 60):
        assert float(tf_schedule(step)) == pytest.approx(optimization.lr_value(step, p, optim(schedule)),
                                                         rel=1e-5)


def test_unknown_schedule_is_a_user_error():
    with pytest.raises(UserError, match="optim.schedule"):
        optimization.lr_value(0, plan(), optim("step"))


def test_derived_epochs_follow_the_stated_rule():
    assert optimization.derived_epochs(20) == 10     # 300 / 20 = 15, capped at 10 epochs
    assert optimization.derived_epochs(100) == 3     # 300 steps
    assert optimization.derived_epochs(500) == 3     # 1,500 steps
    assert optimization.derived_epochs(2000) == 2    # ~3,000 steps
    assert optimization.derived_epochs(10000) == 1


def test_derived_learning_rate_scales_with_width_and_batch():
    assert optimization.derived_learning_rate(768, 8192) == pytest.approx(1e-4)
    assert optimization.derived_learning_rate(1536, 8192) == pytest.approx(5e-5)
    assert optimization.derived_learning_rate(768, 4 * 8192) == pytest.approx(2e-4)
    assert optimization.derived_learning_rate(768, 1000 * 8192) == pytest.approx(2e-4)  # factor capped at 2
    assert optimization.derived_learning_rate(16, 8192) == pytest.approx(1e-3)  # kept in range
    # A randomly initialised model starts from the pre-training rate, 6e-4 at width 768.
    assert optimization.derived_learning_rate(128, 2048, from_scratch=True) == pytest.approx(1.8e-3)
    assert optimization.derived_learning_rate(768, 8192, from_scratch=True) == pytest.approx(6e-4)


def test_plan_derives_what_is_unset_and_keeps_what_is_set():
    config = default.get_config()
    config.data.block_size, config.train.batch_size = 128, 16
    p = optimization.plan_training(config, train_rows=1600, n_embd=768)  # 100 steps/epoch
    assert (p.steps_per_epoch, p.epochs, p.total_steps) == (100, 3, 300)
    assert p.warmup_steps == 18  # 0.06 x 300
    assert p.eval_every_steps == 15  # 300 / 20
    assert p.learning_rate == pytest.approx(1e-4 * math.sqrt(2048 / 8192))
    assert set(p.derived) == {"train.epochs", "optim.learning_rate", "optim.warmup_steps",
                              "train.eval_every_steps"}
    config.optim.learning_rate, config.train.epochs, config.train.max_steps = 3e-5, 5, 120
    p = optimization.plan_training(config, train_rows=1600, n_embd=768)
    assert (p.learning_rate, p.epochs, p.total_steps) == (3e-5, 5, 120)
    assert "optim.learning_rate" not in p.derived


def test_plan_refuses_data_smaller_than_one_batch():
    config = default.get_config()
    with pytest.raises(UserError, match="fewer than one batch"):
        optimization.plan_training(config, train_rows=config.train.batch_size - 1, n_embd=768)


def test_biases_and_layernorm_are_not_decayed(tiny_model_dir):
    from trainer import model as model_lib

    model, _ = model_lib.load_model(tiny_model_dir, log=lambda m: None)
    optimizer = optimization.make_optimizer(plan(), default.get_config().optim)
    optimizer.build(model.trainable_variables)
    decayed = {v.name for v in model.trainable_variables if optimizer._use_weight_decay(v)}
    assert any("c_attn/weight" in n for n in decayed)
    assert any("wte" in n for n in decayed)
    assert not any("bias" in n or "ln_" in n for n in decayed)
    assert np.isclose(optimizer.weight_decay, 0.01)
