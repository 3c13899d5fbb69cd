"""The hyperparameter-tuning metric file, in cloudml-hypertune's format, from a real run."""

import json

import pytest

from tests.conftest import quiet, small_config
from trainer.run import train
from trainer import vertex


def test_file_format_and_the_100_latest_entries(tmp_path):
    path = tmp_path / "hp" / "output.metrics"
    reporter = vertex.HypertuneReporter({"CLOUD_ML_HP_METRIC_FILE": str(path), "CLOUD_ML_TRIAL_ID": "7"})
    for step in range(1, 131):
        reporter.report(3.0 - step / 100, step)
    lines = path.read_text().splitlines()
    assert len(lines) == 100
    first, last = json.loads(lines[0]), json.loads(lines[-1])
    assert list(last) == ["eval_loss", "global_step", "timestamp", "trial"]  # keys sorted
    assert lines[-1].startswith('{"eval_loss": "1.7", "global_step": "130", "timestamp": ')
    assert first["global_step"] == "31" and last["trial"] == "7"
    assert isinstance(last["timestamp"], float) and all(isinstance(v, str) for k, v in last.items()
                                                         if k != "timestamp")


def test_nothing_is_written_outside_a_trial(tmp_path):
    reporter = vertex.HypertuneReporter({})
    reporter.report(1.0, 1)
    assert not reporter.enabled and reporter.path == "/tmp/hypertune/output.metrics"
    assert vertex.HypertuneReporter({"CLOUD_ML_TRIAL_ID": "3"}).trial == "3"


def test_a_trial_reports_each_evaluation_then_the_best_loss(tmp_path, corpus_file, tiny_model_dir,
                                                            monkeypatch):
    path = tmp_path / "output.metrics"
    monkeypatch.setenv("CLOUD_ML_HP_METRIC_FILE", str(path))
    monkeypatch.delenv("CLOUD_ML_TRIAL_ID", raising=False)
    config = small_config(tmp_path / "out", corpus_file, tiny_model_dir, **{
        "train.epochs": 1, "train.eval_every_steps": 10, "preflight": "off"})
    report = train.train_and_evaluate(config, log=quiet)
    entries = [json.loads(line) for line in path.read_text().splitlines()]
    evaluations = [p for p in report["history"]["validation"]]
    assert [e["global_step"] for e in entries[:-1]] == [str(p["step"]) for p in evaluations]
    assert float(entries[-1]["eval_loss"]) == pytest.approx(report["best_val_loss"], rel=1e-12)
    assert entries[-1]["global_step"] == str(report["steps"]) and entries[-1]["trial"] == "0"


def test_vertex_output_locations_replace_a_local_output_dir(monkeypatch):
    from configs import default
    from trainer.training import checkpoints
    from trainer import settings

    config = default.get_config()
    config.data.train_files = "data/sample/corpus.jsonl"
    monkeypatch.setenv("AIP_MODEL_DIR", "gs://b/job1/model/")
    monkeypatch.setenv("AIP_CHECKPOINT_DIR", "gs://b/job1/checkpoints/")
    monkeypatch.setenv("AIP_TENSORBOARD_LOG_DIR", "gs://b/job1/logs/")
    resolved = settings.resolve(config)
    assert resolved.output_dir == "gs://b/job1"  # runs/default would vanish with the job's VM
    layout = checkpoints.Layout.of(resolved.output_dir)
    assert (layout.export, layout.checkpoints, layout.logs) == ("gs://b/job1/model", "gs://b/job1/checkpoints",
                                                                "gs://b/job1/logs")
    assert layout.export_pytorch == "gs://b/job1/export_pytorch"
    config.output_dir = "gs://mine/run"  # chosen by the user: everything stays under it
    resolved = settings.resolve(config)
    assert resolved.output_dir == "gs://mine/run"
    assert checkpoints.Layout.of(resolved.output_dir).export == "gs://mine/run/export"
