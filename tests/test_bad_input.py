"""Every bad input ends with a message naming the file, line or flag, a non-zero
exit, and an earlier run's results left exactly as they were."""

import hashlib
import json
import os

import pytest

from tests.conftest import cli_args, make_documents, quiet, run_cli, small_config, write_jsonl
from trainer.run import train
from trainer.errors import UserError


def tree_digest(folder):
    digest = hashlib.sha256()
    for root, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            path = os.path.join(root, name)
            digest.update(path.encode())
            digest.update(open(path, "rb").read())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory, corpus_file, tiny_model_dir):
    output = tmp_path_factory.mktemp("earlier") / "out"
    config = small_config(output, corpus_file, tiny_model_dir, **{"train.epochs": 1})
    train.train_and_evaluate(config, log=quiet)
    return config


def bad_files(tmp_path):
    good = [json.dumps({"text": d}) for d in make_documents(30)]
    cases = {
        "empty.jsonl": (b"", "is empty"),
        "notjson.jsonl": ("\n".join(good[:5] + ["{oops"]).encode(), "notjson.jsonl, line 6: not valid JSON"),
        "nofield.jsonl": ("\n".join(good[:3] + [json.dumps({"body": "x"})]).encode(),
                          "nofield.jsonl, line 4: no field 'text'"),
        "latin1.jsonl": ("\n".join(good[:2]).encode() + b'\n{"text": "caf\xe9"}\n',
                         "latin1.jsonl, line 3: byte 0xe9 is not valid UTF-8"),
    }
    for name, (content, _) in cases.items():
        (tmp_path / name).write_bytes(content)
    return {str(tmp_path / n): message for n, (_, message) in cases.items()}


def test_bad_data_files_through_the_cli(tmp_path, earlier_run):
    output = tmp_path / "new-run"
    for path, message in bad_files(tmp_path).items():
        result = run_cli("trainer.task", *cli_args(earlier_run, **{"data.train_files": path,
                                                                   "output_dir": output}))
        assert result.returncode == 2, (path, result.stderr[-2000:])
        assert message in result.stderr, (message, result.stderr[-2000:])
        assert "Traceback" not in result.stderr
    assert not output.exists()  # nothing written for a run that could not start


# existing=True: aimed at a finished run, which must stay byte for byte as it was;
# False: needs the data or the model to detect, aimed at a new folder that must not appear.
@pytest.mark.parametrize("override, existing, message", [
    ({"optim.learning_rate": -1e-4}, True, "--config.optim.learning_rate=-0.0001 is not valid: use positive"),
    ({"optim.learning_rate": 0.0}, True, "--config.optim.learning_rate=0.0 is not valid: use positive"),
    ({"train.log_every_steps": 0}, True, "--config.train.log_every_steps=0 is not valid: use at least 1"),
    ({"eval.batch_size": 0}, True, "--config.eval.batch_size=0 is not valid: use at least 1"),
    ({"train.keep_checkpoints": 0}, True, "--config.train.keep_checkpoints=0 is not valid: use at least 1"),
    ({"optim.warmup_ratio": 1.5}, True, "--config.optim.warmup_ratio=1.5 is not valid: use in [0, 1)"),
    ({"optim.warmup_ratio": -0.1}, True, "--config.optim.warmup_ratio=-0.1 is not valid: use in [0, 1)"),
    ({"optim.max_grad_norm": -1.0}, True, "--config.optim.max_grad_norm=-1.0 is not valid: use 0 (no clipping)"),
    ({"train.learning_rate": 1e-4}, True,  # unknown key: it lives in optim
     "--config.train.learning_rate is not a config key (see configs/default.py). Did you mean "
     "--config.optim.learning_rate?"),
    ({"train.batch_size": "sixteen"}, True, "--config.train.batch_size=sixteen: invalid literal"),
    ({"optim.warmup_steps": 40}, False, "--config.optim.warmup_steps=40 is not below the run's 40 steps"),
    ({"data.block_size": 128}, False, "--config.data.block_size=128 is longer than the model's 64 positions"),
    ({"train.batch_size": 512}, False, "fewer than one batch of --config.train.batch_size=512"),
    ({"data.train_files": "/nonexistent/*.jsonl"}, False, "--config.data.train_files: no file matches"),
])
def test_bad_settings_through_the_cli(tmp_path, earlier_run, override, existing, message):
    output = earlier_run.output_dir if existing else tmp_path / "new-run"
    before = tree_digest(earlier_run.output_dir)
    result = run_cli("trainer.task", *cli_args(earlier_run, output_dir=output, **override))
    assert result.returncode == 2, result.stderr[-2000:]
    assert message in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert tree_digest(earlier_run.output_dir) == before
    assert existing or not output.exists()


def test_every_schema_field_has_a_rule():
    from configs import default
    from trainer import settings

    assert set(settings.flatten(default.get_config())) == set(settings.RULES)
    config = default.get_config()
    config.data.train_files = "x.jsonl"
    settings.check(config)  # the defaults themselves pass


def test_a_different_run_in_the_output_dir_is_not_overwritten(earlier_run):
    before = tree_digest(earlier_run.output_dir)
    changed = small_config(earlier_run.output_dir, earlier_run.data.train_files,
                           earlier_run.model.name_or_path, **{"train.epochs": 1, "optim.learning_rate": 1e-3})
    with pytest.raises(UserError, match=r"optim.learning_rate: 0.003 -> 0.001.*new --config.output_dir"):
        train.train_and_evaluate(changed, log=quiet)
    assert tree_digest(earlier_run.output_dir) == before


def test_too_few_documents_to_hold_out_validation(tmp_path, tiny_model_dir):
    path = write_jsonl(tmp_path / "one.jsonl", ["a single document"])
    with pytest.raises(UserError, match="1 document.*validation_files"):
        train.train_and_evaluate(small_config(tmp_path / "out", path, tiny_model_dir), log=quiet)
    assert not os.path.exists(tmp_path / "out")


def test_unreadable_weights_leave_the_output_folder_empty(tmp_path, tiny_model_dir, corpus_file):
    """Issue 26: the weights were loaded after config.json was written, so the relaunch with a
    good model was refused as a run with "other settings (model.name_or_path ...)"."""
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    for name in os.listdir(broken):
        if name.endswith((".h5", ".safetensors")):
            (broken / name).write_bytes(b"truncated by a failed download")
    with pytest.raises(UserError, match=str(broken)):
        train.train_and_evaluate(small_config(tmp_path / "out", corpus_file, str(broken)), log=quiet)
    assert not os.path.exists(tmp_path / "out") or not os.listdir(tmp_path / "out")


def test_a_model_folder_is_not_taken_for_an_earlier_run(tiny_model_dir, corpus_file):
    """A model folder has a config.json too; it used to be read as a run 'with other settings'."""
    before = tree_digest(tiny_model_dir)
    config = small_config(tiny_model_dir, corpus_file, tiny_model_dir)
    with pytest.raises(UserError, match=r"holds something other than a tunewell run \(.*config.json, .*"
                                        r"refusing to write there"):
        train.train_and_evaluate(config, log=quiet)
    doctor = run_cli("trainer.doctor", *cli_args(config))  # the doctor writes there too: same refusal
    assert doctor.returncode == 2 and "holds something other than a tunewell run" in doctor.stderr
    assert tree_digest(tiny_model_dir) == before


@pytest.fixture
def interrupted_run(tmp_path, corpus_file, tiny_model_dir):
    """A run stopped by Ctrl-C at step 20 of 80 (2 epochs of 40 steps)."""
    import signal

    def interrupt_at_step_20(message):
        if message.startswith("Step 20:"):
            os.kill(os.getpid(), signal.SIGINT)

    corpus = tmp_path / "train.jsonl"  # a copy of its own, for the test that edits it
    corpus.write_text(open(corpus_file).read())
    config = small_config(tmp_path / "out", str(corpus), tiny_model_dir, **{"train.eval_every_steps": 10})
    with pytest.raises(train.Interrupted):
        train.train_and_evaluate(config, log=interrupt_at_step_20)
    return config


def test_resume_with_a_max_steps_that_changes_the_plan_is_refused(interrupted_run):
    config = interrupted_run
    before = tree_digest(config.output_dir)
    capped = small_config(config.output_dir, config.data.train_files, config.model.name_or_path,
                          **{"train.eval_every_steps": 10, "train.max_steps": 50})
    with pytest.raises(UserError, match=r"--config.train.max_steps changed from 0 to 50: that changes this "
                                        r"run's plan \(total_steps 80 -> 50.*--config.train.max_steps=0"):
        train.train_and_evaluate(capped, log=quiet)
    assert tree_digest(config.output_dir) == before
    # A cap above the planned 80 steps leaves the plan as it was: resuming is fine.
    loose = small_config(config.output_dir, config.data.train_files, config.model.name_or_path,
                         **{"train.eval_every_steps": 10, "train.max_steps": 500})
    report = train.train_and_evaluate(loose, log=quiet)
    assert report["steps"] == report["planned_steps"] == 80


def test_resume_on_edited_data_is_refused(interrupted_run, tmp_path):
    config = interrupted_run
    lines = open(config.data.train_files).read().splitlines()
    # Same path as the run started with, one word changed in the last document.
    open(config.data.train_files, "w").write("\n".join(lines[:-1] + [lines[-1].replace("Note", "Memo")]) + "\n")
    before = tree_digest(config.output_dir)
    with pytest.raises(UserError, match=r"The data differs from the data this run .* started on .*"
                                        r"they were edited"):
        train.train_and_evaluate(config, log=quiet)
    assert tree_digest(config.output_dir) == before


def test_resume_uses_the_stored_plan_when_the_rules_change(interrupted_run, monkeypatch):
    """Another version deriving another warm-up must not bend the schedule mid-run."""
    import dataclasses

    from trainer.training import optimization

    stored = json.load(open(os.path.join(interrupted_run.output_dir, "config.json")))["plan"]
    plan_training = optimization.plan_training
    monkeypatch.setattr(optimization, "plan_training", lambda *a, **k: dataclasses.replace(
        plan_training(*a, **k), warmup_steps=stored["warmup_steps"] + 30))
    report = train.train_and_evaluate(interrupted_run, log=quiet)
    expected = optimization.TrainingPlan(**stored, derived={})
    logged = {p["step"]: p["learning_rate"] for p in report["history"]["train"]}
    for step in (30, 40):  # after the resume at step 20: the stored warm-up, not the new one
        assert logged[step] == pytest.approx(optimization.lr_value(step - 1, expected, interrupted_run.optim))
