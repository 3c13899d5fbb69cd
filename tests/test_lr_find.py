"""The learning-rate range test: sweeps geometrically, stops when the loss blows up,
suggests a rate where the tiny model trains well, and writes only OUTPUT/lr_find/."""

import json
import os

import numpy as np
import pytest

from tests.conftest import quiet, run_cli, small_config
from trainer.training import checkpoints
from trainer.run import lr_find

# 7 decades in 70 steps: x1.263 per step. The tiny model blows up near lr 2.5 (step ~54) and the
# sweep stops at ~57, so the 13 steps left (a factor 20 in lr) keep "diverged" from depending on luck.
MIN_LR, MAX_LR, STEPS = 1e-5, 100.0, 70


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, corpus_file, tiny_model_dir):
    output = tmp_path_factory.mktemp("lr_find") / "out"
    os.makedirs(output)
    # A training run's file: must be left alone.
    (output / "config.json").write_text(json.dumps({"tunewell": {"format": checkpoints.RUN_FORMAT}}))
    config = small_config(output, corpus_file, tiny_model_dir)
    return config, lr_find.find_learning_rate(config, num_steps=STEPS, min_lr=MIN_LR, max_lr=MAX_LR,
                                              log=quiet)


def test_writes_json_plot_and_tensorboard_only_under_lr_find(sweep):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util.tensor_util import make_ndarray

    config, result = sweep
    folder = os.path.join(config.output_dir, "lr_find")
    assert result["output_dir"] == folder
    assert sorted(os.listdir(config.output_dir)) == ["config.json", "lr_find"]
    assert json.load(open(os.path.join(config.output_dir, "config.json"))) == {
        "tunewell": {"format": checkpoints.RUN_FORMAT}}
    on_disk = json.load(open(os.path.join(folder, "lr_find.json")))
    assert set(on_disk) == {"lrs", "losses", "smoothed", "suggested_learning_rate", "steepest_lr",
                            "lr_at_min_loss", "num_steps_run", "stopped_because"}
    assert on_disk["suggested_learning_rate"] == result["suggested_learning_rate"]
    assert os.path.getsize(os.path.join(folder, "lr_find.png")) > 10_000

    events = EventAccumulator(os.path.join(folder, "logs"), size_guidance={"tensors": 0}).Reload()
    assert {"lr_find/loss", "lr_find/smoothed_loss", "lr_find/learning_rate"} <= set(events.Tags()["tensors"])
    logged_lrs = [float(make_ndarray(e.tensor_proto)) for e in events.Tensors("lr_find/learning_rate")]
    assert len(logged_lrs) == result["num_steps_run"]
    np.testing.assert_allclose(logged_lrs, result["lrs"], rtol=1e-6)


def test_sweep_is_geometric_and_stops_when_the_loss_blows_up(sweep):
    _, result = sweep
    lrs = np.array(result["lrs"])
    assert lrs[0] == pytest.approx(MIN_LR)
    np.testing.assert_allclose(lrs[1:] / lrs[:-1], (MAX_LR / MIN_LR) ** (1 / (STEPS - 1)), rtol=1e-9)
    assert result["stopped_because"] == "diverged"
    assert result["num_steps_run"] < STEPS
    assert len(result["losses"]) == len(result["smoothed"]) == result["num_steps_run"]


def test_suggestion_is_inside_the_sweep_and_near_a_rate_that_trains(sweep):
    _, result = sweep
    suggested = result["suggested_learning_rate"]
    assert MIN_LR < suggested < result["lrs"][-1]
    assert suggested == min(result["steepest_lr"], result["lr_at_min_loss"] / 10)
    assert 3e-3 / 100 < suggested < 3e-3 * 100  # the tiny model trains well at 3e-3 (tests/test_train.py)


def test_suggest_picks_the_steepest_descent_before_the_minimum():
    # A made-up curve: flat, falls fastest at 1e-3, lowest at 1e-1, then rises steeply.
    lrs = np.logspace(-6, 0, 61)
    x = np.log10(lrs)
    smoothed = 5 - 2 * np.tanh(2 * (x + 3)) + np.where(x > -1, 30 * (x + 1) ** 2, 0)
    found = lr_find.suggest(lrs, smoothed)
    assert found["steepest_lr"] == pytest.approx(1e-3)
    assert found["lr_at_min_loss"] == pytest.approx(1e-1, rel=0.3)
    assert found["suggested_learning_rate"] == found["steepest_lr"]  # below lr_at_min / 10 here


def test_bad_data_file_through_the_cli(tmp_path, tiny_model_dir):
    result = run_cli("trainer.lr_find", "--config=configs/default.py", f"--config.output_dir={tmp_path}/out",
                     f"--config.model.name_or_path={tiny_model_dir}",
                     "--config.data.train_files=/nonexistent.jsonl", "--num_steps=10")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "error: --config.data.train_files: no file matches '/nonexistent.jsonl'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not os.path.exists(tmp_path / "out")
