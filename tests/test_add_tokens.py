"""config.model.add_tokens: the file, the tokenizer, the embedding rows, the exports.

The tiny tokenizer is byte-level BPE like GPT-2's, trained on conftest's grammar,
so "aspirin" is many pieces in it, as a domain word is in GPT-2's.
"""

import json
import os
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file

from tests.conftest import ROOT
from trainer import model as model_lib
from trainer.errors import UserError


def quiet(_):
    pass


def write(tmp_path, content: bytes, name="tokens.txt"):
    path = tmp_path / name
    path.write_bytes(content)
    return str(path)


# ----------------------------------------------------------------------------- the file


def test_lines_are_taken_verbatim(tmp_path):
    path = write(tmp_path, "\ufeff aspirin\r\naspirin\n\n   \n#include\n ibuprofène\n New York".encode())
    assert model_lib.read_new_tokens(path) == [" aspirin", "aspirin", "#include", " ibuprofène", " New York"]


@pytest.mark.parametrize("content, message", [
    (b"", "no tokens"),
    (b"\n  \n", "no tokens"),
    (b" aspirin\nibuprof\xe8ne\n", r"line 2: not UTF-8 \(byte 0xe8\)"),
    (b" aspirin\n ibuprofen\n aspirin\n", r"line 3: ' aspirin' repeats line 1"),
    (b" aspirin \n", r"line 1: ' aspirin ' ends with whitespace"),
    (b"aspirin\t532\n", r"line 1: 'aspirin\\t532' holds a tab"),
    (b"ok\n" + b"aspirin, " * 20 + b"\n", r"line 2: a token of 180 characters"),
])
def test_file_errors_name_file_and_line(tmp_path, content, message):
    path = write(tmp_path, content)
    with pytest.raises(UserError, match=rf"--config.model.add_tokens={path}(, |: ){message}"):
        model_lib.read_new_tokens(path)


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match=r"add_tokens=.*nope.txt: no such file"):
        model_lib.read_new_tokens(str(tmp_path / "nope.txt"))


# ----------------------------------------------------------------------------- the tokenizer


def test_added_tokens_tokenize_as_one_id(tiny_model_dir):
    tokenizer = model_lib.load_tokenizer(tiny_model_dir)
    base = len(tokenizer)
    assert len(tokenizer.encode(" aspirin")) > 1  # a domain word the vocabulary splits
    messages = []
    added = model_lib.add_tokens(tokenizer, [" aspirin", "aspirin", " the", " paracétamol", "paracétamol"],
                                 messages.append)
    assert added == [" aspirin", "aspirin", " paracétamol", "paracétamol"]  # " the" is one token already
    assert "not added: [' the']" in messages[0]
    # tokenizers' byte-level decoder garbles an added token of Latin-1 letters only: said, not hidden.
    assert any("['paracétamol'] tokenize correctly but come out garbled" in m for m in messages)
    assert len(tokenizer) == base + 4
    spaced, plain, accented, _ = tokenizer.convert_tokens_to_ids(added)
    text = "aspirin is cheap. Take aspirin or paracétamol daily.\naspirin"
    ids = tokenizer.encode(text)
    assert ids.count(spaced) == 1 and ids.count(plain) == 2 and ids.count(accented) == 1
    assert tokenizer.decode(ids) == text
    assert model_lib.add_tokens(tokenizer, [" aspirin"], quiet) == []  # a second call adds nothing


def test_a_token_that_cannot_be_one_id_is_refused(tiny_model_dir):
    tokenizer = model_lib.load_tokenizer(tiny_model_dir)
    with pytest.raises(UserError, match="endoftext"):
        model_lib.add_tokens(tokenizer, ["x<|endoftext|>y"], quiet)


# ----------------------------------------------------------------------------- the model


@pytest.fixture
def grown(tiny_model_dir, tmp_path):
    """A tiny model and tokenizer with two tokens added through the config path; the model
    as loaded before growing, and its embedding matrix then."""
    tokens = write(tmp_path, b" aspirin\n paracetamol\n")
    tokenizer = model_lib.load_tokenizer(tiny_model_dir, new_tokens_file=tokens, log=quiet)
    model, _ = model_lib.load_model(tiny_model_dir, log=quiet)
    old = model.get_input_embeddings().embeddings.numpy()
    ids = np.array([[5, 17, 42, 8, 99, 3], [250, 1, 2, 3, 4, 5]], np.int32)
    before = model(ids).logits.numpy()
    assert model_lib.match_vocabulary(model, tokenizer, quiet) == 2
    return model, tokenizer, old, ids, before


def test_new_rows_are_the_mean_and_old_logits_unchanged(grown):
    model, tokenizer, old, ids, before = grown
    assert model.config.vocab_size == len(tokenizer) == old.shape[0] + 2
    matrix = model.get_input_embeddings().embeddings.numpy()
    np.testing.assert_array_equal(matrix[:len(old)], old)
    mean = old.astype(np.float64).mean(axis=0).astype(np.float32)
    np.testing.assert_array_equal(matrix[len(old):], np.stack([mean, mean]))
    assert model.get_output_embeddings() is model.get_input_embeddings()  # the LM head is the same matrix
    after = model(ids).logits.numpy()
    assert after.shape == before.shape[:2] + (len(old) + 2,)
    np.testing.assert_allclose(after[..., :len(old)], before, rtol=0, atol=1e-6)  # measured: 0.0
    np.testing.assert_array_equal(after[..., -1], after[..., -2])  # both new tokens: the mean row's logit
    assert model_lib.match_vocabulary(model, tokenizer, quiet) == 0


def test_exports_reload_with_the_new_vocabulary(grown, tmp_path):
    model, tokenizer, old, ids, _ = grown
    aspirin = tokenizer.convert_tokens_to_ids(" aspirin")
    new_size = len(old) + 2

    model_lib.export_tf(model, tokenizer, str(tmp_path / "export"))
    reloaded, loaded = model_lib.load_model(str(tmp_path / "export"), log=quiet)
    assert loaded.format == "tf-h5"  # every weight verified against the file, by name
    assert reloaded.config.vocab_size == new_size
    np.testing.assert_array_equal(reloaded(ids).logits.numpy(), model(ids).logits.numpy())
    tokenizer_back = model_lib.load_tokenizer(str(tmp_path / "export"))
    assert len(tokenizer_back) == new_size
    assert aspirin in tokenizer_back.encode("Take aspirin daily.")

    folder = str(tmp_path / "export_pytorch")
    model_lib.export_pytorch(model, tokenizer, folder)
    state = load_file(os.path.join(folder, "model.safetensors"))
    assert state["transformer.wte.weight"].shape == (new_size, old.shape[1])
    assert json.load(open(os.path.join(folder, "config.json")))["vocab_size"] == new_size
    torch = pytest.importorskip("torch")  # installed by `make install` (the torch extra)
    from transformers import GPT2LMHeadModel

    pt_model = GPT2LMHeadModel.from_pretrained(folder).eval()
    assert pt_model.lm_head.weight.shape == (new_size, old.shape[1])  # tied, grown with it
    with torch.no_grad():
        pt_logits = pt_model(torch.from_numpy(ids.astype(np.int64))).logits.numpy()
    np.testing.assert_allclose(pt_logits, model(ids).logits.numpy(), rtol=0, atol=1e-4)


def test_a_resumed_run_restores_the_grown_rows(grown, tiny_model_dir, tmp_path):
    """Resume = load the base model, grow it, then restore: the checkpoint's key for the
    embedding is the same before and after growing, and its shape is the grown one."""
    import tensorflow as tf

    model, tokenizer, _, ids, _ = grown
    model.get_input_embeddings().embeddings.assign_add(tf.ones_like(model.get_input_embeddings().embeddings))
    path = tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt"))
    resumed, _ = model_lib.load_model(tiny_model_dir, log=quiet)
    model_lib.match_vocabulary(resumed, tokenizer, quiet)
    tf.train.Checkpoint(model=resumed).read(path).assert_existing_objects_matched()
    np.testing.assert_array_equal(resumed.get_input_embeddings().embeddings.numpy(),
                                  model.get_input_embeddings().embeddings.numpy())
    np.testing.assert_array_equal(resumed(ids).logits.numpy(), model(ids).logits.numpy())


GROW_MIRRORED = """
import json, sys
import numpy as np
import trainer
from configs import default
from trainer.training import distribution
from trainer import model as model_lib
config = default.get_config().runtime
config.strategy, config.cpu_devices = "mirrored", 2
strategy = distribution.get_strategy(config, log=lambda m: None)
with strategy.scope():
    model, _ = model_lib.load_model(sys.argv[1], log=lambda m: None)
    old = model.get_input_embeddings().embeddings.numpy()
    added = model_lib.resize_embeddings_with_mean(model, old.shape[0] + 3, log=lambda m: None)
variable = model.get_input_embeddings().embeddings
mean = old.astype(np.float64).mean(axis=0).astype(np.float32)
expected = np.concatenate([old, np.stack([mean] * 3)])
copies = strategy.experimental_local_results(variable)
ids = np.array([[1, 2, 3, 4]] * 2, np.int32)
logits = strategy.run(lambda x: model(x).logits, args=(ids[:1],))
print("RESULT" + json.dumps({
    "replicas": strategy.num_replicas_in_sync, "added": added, "type": type(variable).__name__,
    "copies": len(copies), "devices": sorted(c.device for c in copies),
    "copies_equal": all(np.array_equal(c.numpy(), expected) for c in copies),
    "logit_columns": [int(t.shape[-1]) for t in strategy.experimental_local_results(logits)]}))
"""


def test_grows_inside_a_mirrored_strategy_scope(tiny_model_dir):
    """Two logical CPUs must be set before TensorFlow starts: a fresh process."""
    import subprocess

    done = subprocess.run([sys.executable, "-c", GROW_MIRRORED, tiny_model_dir], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.split("RESULT", 1)[1])
    assert out["replicas"] == 2 and out["added"] == 3
    assert out["type"] == "MirroredVariable" and out["copies"] == 2 and len(set(out["devices"])) == 2
    assert out["copies_equal"]  # the mean rows reached both replicas' copies
    assert out["logit_columns"] == [303, 303]
