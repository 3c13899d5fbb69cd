"""Every bad input ends with a message naming the file, line or flag, a non-zero
exit, and an earlier run's results left exactly as they were."""

import hashlib
import json
import os

import pytest

from tests.conftest import make_documents, quiet, run_cli, small_config, write_jsonl
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


def cli_args(config, **overrides):
    values = {"output_dir": config.output_dir, "data.train_files": config.data.train_files,
              "model.name_or_path": config.model.name_or_path, "data.block_size": 32,
              "train.batch_size": 8, "train.epochs": 1, "optim.learning_rate": 3e-3,
              "eval.max_new_tokens": 4, "eval.num_prompts": 1, **overrides}
    return ["--config=configs/default.py"] + [f"--config.{k}={v}" for k, v in values.items()]


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
    before = tree_digest(earlier_run.output_dir)
    for path, message in bad_files(tmp_path).items():
        result = run_cli("trainer.task", *cli_args(earlier_run, **{"data.train_files": path}))
        assert result.returncode == 2, (path, result.stderr[-2000:])
        assert message in result.stderr, (message, result.stderr[-2000:])
        assert "Traceback" not in result.stderr
    assert tree_digest(earlier_run.output_dir) == before


@pytest.mark.parametrize("override, exit_code, message", [
    ({"optim.learning_rate": -1e-4}, 2, "--config.optim.learning_rate=-0.0001 must be positive"),
    ({"optim.learning_rate": 0.0}, 2, "--config.optim.learning_rate=0.0 must be positive"),
    ({"data.block_size": 128}, 2, "--config.data.block_size=128 is longer than the model's 64 positions"),
    ({"train.batch_size": 512}, 2, "fewer than one batch of --config.train.batch_size=512"),
    ({"data.train_files": "/nonexistent/*.jsonl"}, 2, "--config.data.train_files: no file matches"),
    ({"train.learning_rate": 1e-4}, 2,  # unknown key: it lives in optim
     "--config.train.learning_rate is not a config key (see configs/default.py). Did you mean "
     "--config.optim.learning_rate?"),
    ({"train.batch_size": "sixteen"}, 2, "--config.train.batch_size=sixteen: invalid literal"),
])
def test_bad_settings_through_the_cli(earlier_run, override, exit_code, message):
    before = tree_digest(earlier_run.output_dir)
    result = run_cli("trainer.task", *cli_args(earlier_run, **override))
    assert result.returncode == exit_code, result.stderr[-2000:]
    assert message in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert tree_digest(earlier_run.output_dir) == before


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
