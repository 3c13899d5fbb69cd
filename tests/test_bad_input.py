"""Every bad input ends with a message naming the file, line or flag, a non-zero
exit, and an earlier run's results left exactly as they were."""

import hashlib
import json
import os

import pytest

from tests.conftest import cli_args, make_documents, quiet, run_cli, small_config, write_jsonl
from trainer import train
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
