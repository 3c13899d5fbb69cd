"""The checkpoints users have: TF h5, TF and PyTorch safetensors (single, sharded,
hub-style beside tf_model.h5), pytorch_model.bin; and the PyTorch export.

PyTorch-format files are written WITHOUT torch, the way transformers'
PyTorch side names and lays them out, from a TF model's weights.
"""

import json
import os
import shutil
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from trainer import model as model_lib
from trainer.errors import UserError


def quiet(_):
    pass


@pytest.fixture(scope="module")
def source(tiny_model_dir):
    model, loaded = model_lib.load_model(tiny_model_dir, log=quiet)
    assert loaded.format == "tf-h5"
    return model


@pytest.fixture(scope="module")
def batch():
    return np.array([[5, 17, 42, 8, 99, 3], [250, 1, 2, 3, 4, 5]], np.int32)


def side_files(src, dst):
    os.makedirs(dst, exist_ok=True)
    for name in os.listdir(src):
        if not name.endswith((".h5", ".safetensors")):
            shutil.copy(os.path.join(src, name), dst)


def pt_checkpoint(source_model, folder, tiny_model_dir, shards=1, drop=()):
    """A PyTorch-format checkpoint folder: model.safetensors, or shards plus an index."""
    side_files(tiny_model_dir, folder)
    state = {k: v for k, v in model_lib.pytorch_state_dict(source_model).items()
             if not any(k.startswith(d) for d in drop)}
    state["lm_head.weight"] = state["transformer.wte.weight"]  # PyTorch saves the tied head too
    if shards == 1:
        save_file(state, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
        return folder
    names = sorted(state)
    weight_map = {}
    for i in range(shards):
        shard = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: state[k] for k in names[i::shards]}
        save_file(part, os.path.join(folder, shard), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, shard))
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": weight_map}, f)
    return folder


def assert_same_model(a, b, batch):
    assert len(a.weights) == len(b.weights)
    by_name = {model_lib.canonical_name(w.name): w.numpy() for w in b.weights}
    for w in a.weights:
        np.testing.assert_array_equal(w.numpy(), by_name[model_lib.canonical_name(w.name)])  # exact
    np.testing.assert_array_equal(a(batch).logits.numpy(), b(batch).logits.numpy())


@pytest.mark.parametrize("shards", [1, 3])
def test_pytorch_safetensors_load_exactly(source, tiny_model_dir, tmp_path, batch, shards):
    folder = pt_checkpoint(source, str(tmp_path / "pt"), tiny_model_dir, shards=shards)
    model, loaded = model_lib.load_model(folder, log=quiet)
    assert loaded.format == ("pt-safetensors" if shards == 1 else "pt-safetensors-sharded")
    assert_same_model(model, source, batch)


def test_plain_transformers_fails_on_pytorch_safetensors(source, tiny_model_dir, tmp_path):
    """Why the loader exists (transformers#40028); if this starts passing, the workaround can go."""
    from transformers import TFAutoModelForCausalLM

    folder = pt_checkpoint(source, str(tmp_path / "pt"), tiny_model_dir)
    with pytest.raises(TypeError, match="safe_open"):
        TFAutoModelForCausalLM.from_pretrained(folder)


def test_hub_style_folder_with_h5_and_pytorch_safetensors(source, tiny_model_dir, tmp_path, batch):
    folder = pt_checkpoint(source, str(tmp_path / "hub"), tiny_model_dir)
    shutil.copy(os.path.join(tiny_model_dir, "tf_model.h5"), folder)
    model, loaded = model_lib.load_model(folder, log=quiet)
    assert loaded.format == "tf-h5"
    assert_same_model(model, source, batch)


def test_tf_format_safetensors(source, tiny_model_dir, tmp_path, batch):
    folder = str(tmp_path / "tfsafe")
    side_files(tiny_model_dir, folder)
    source.save_pretrained(folder, safe_serialization=True)
    assert not os.path.exists(os.path.join(folder, "tf_model.h5"))
    model, loaded = model_lib.load_model(folder, log=quiet)
    assert loaded.format == "tf-safetensors"
    assert_same_model(model, source, batch)


def test_a_missing_layer_is_refused_by_name(source, tiny_model_dir, tmp_path):
    folder = pt_checkpoint(source, str(tmp_path / "cut"), tiny_model_dir, drop=("transformer.h.0.",))
    with pytest.raises(UserError, match=r"12 weight\(s\) of the model are missing.*h_._0") as info:
        model_lib.load_model(folder, log=quiet)
    assert "random weights" in str(info.value)


def test_a_reshaped_weight_is_refused(source, tiny_model_dir, tmp_path):
    folder = pt_checkpoint(source, str(tmp_path / "bad"), tiny_model_dir)
    path = os.path.join(folder, "model.safetensors")
    state = load_file(path)
    w = state["transformer.h.0.attn.c_attn.weight"]
    state["transformer.h.0.attn.c_attn.weight"] = np.ascontiguousarray(w.reshape(w.shape[1], w.shape[0]))
    save_file(state, path, metadata={"format": "pt"})
    with pytest.raises(UserError, match="c_attn.weight has shape"):
        model_lib.load_model(folder, log=quiet)


def test_pytorch_bin_without_torch_says_how_to_convert(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` fails, as on a machine without it
    folder = str(tmp_path / "bin")
    side_files(tiny_model_dir, folder)
    open(os.path.join(folder, "pytorch_model.bin"), "wb").write(b"not read")
    with pytest.raises(UserError, match="need torch.*safe_serialization=True"):
        model_lib.load_model(folder, log=quiet)


def test_transformers5_config_keys_load_without_warnings(source, tiny_model_dir, tmp_path, caplog, batch):
    folder = str(tmp_path / "v5")
    shutil.copytree(tiny_model_dir, folder)
    path = os.path.join(folder, "config.json")
    config = json.load(open(path))
    config.pop("torch_dtype", None)
    config.update(dtype="float32", transformers_version="5.17.0")
    json.dump(config, open(path, "w"))
    with caplog.at_level("WARNING"):
        model, _ = model_lib.load_model(folder, log=quiet)
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    assert_same_model(model, source, batch)


def test_no_weights_names_what_the_folder_has(tiny_model_dir, tmp_path):
    folder = str(tmp_path / "empty")
    side_files(tiny_model_dir, folder)
    with pytest.raises(UserError, match="no weights found.*config.json"):
        model_lib.load_model(folder, log=quiet)


def test_pytorch_export_round_trips(source, tiny_model_dir, tmp_path, batch):
    tokenizer = model_lib.load_tokenizer(tiny_model_dir)
    folder = str(tmp_path / "export_pytorch")
    model_lib.export_pytorch(source, tokenizer, folder)
    state = load_file(os.path.join(folder, "model.safetensors"))
    from safetensors import safe_open

    with safe_open(os.path.join(folder, "model.safetensors"), "np") as f:
        assert f.metadata() == {"format": "pt"}
    assert "lm_head.weight" not in state  # tied to wte: written once
    assert state["transformer.h.0.attn.c_attn.bias"].ndim == 1  # PyTorch layout, not TF's [1, n]
    for w in source.weights:
        name, _ = model_lib.pt_name(w)
        np.testing.assert_array_equal(state[name].reshape(w.shape), w.numpy())
    assert len(state) == len(source.weights)
    config = json.load(open(os.path.join(folder, "config.json")))
    assert config["architectures"] == ["GPT2LMHeadModel"]
    # And it comes back through our loader (the PyTorch path) unchanged.
    model, loaded = model_lib.load_model(folder, log=quiet)
    assert loaded.format == "pt-safetensors"
    assert_same_model(model, source, batch)




def write_bfloat16_safetensors(state: dict, path: str) -> None:
    """safetensors with BF16 tensors, as many current checkpoints ship (numpy cannot write them)."""
    import ml_dtypes

    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name in sorted(state):
        blob = np.ascontiguousarray(state[name].astype(ml_dtypes.bfloat16)).tobytes()
        header[name] = {"dtype": "BF16", "shape": list(state[name].shape),
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    encoded = json.dumps(header).encode()
    encoded += b" " * (-len(encoded) % 8)
    with open(path, "wb") as f:
        f.write(len(encoded).to_bytes(8, "little") + encoded + b"".join(blobs))


def test_bfloat16_safetensors_load_upcast_exactly(source, tiny_model_dir, tmp_path, batch):
    import ml_dtypes

    folder = str(tmp_path / "bf16")
    side_files(tiny_model_dir, folder)
    write_bfloat16_safetensors(model_lib.pytorch_state_dict(source), os.path.join(folder, "model.safetensors"))
    model, loaded = model_lib.load_model(folder, log=quiet)
    assert loaded.format == "pt-safetensors"
    by_name = {model_lib.canonical_name(w.name): w.numpy() for w in source.weights}
    for w in model.weights:  # every weight is the bfloat16 value, upcast without change
        expected = by_name[model_lib.canonical_name(w.name)].astype(ml_dtypes.bfloat16).astype(np.float32)
        np.testing.assert_array_equal(w.numpy(), expected)


def torch_state(source_model, rename=None):
    import torch

    state = {k: torch.from_numpy(v.copy()) for k, v in model_lib.pytorch_state_dict(source_model).items()}
    state["lm_head.weight"] = state["transformer.wte.weight"]
    if rename:
        state[rename[1]] = state.pop(rename[0])
    return state


def test_pytorch_bin_is_verified_against_the_file(source, tiny_model_dir, tmp_path, batch):
    torch = pytest.importorskip("torch")  # installed by `make install` (the torch extra)
    folder = str(tmp_path / "bin")
    side_files(tiny_model_dir, folder)
    torch.save(torch_state(source), os.path.join(folder, "pytorch_model.bin"))
    model, loaded = model_lib.load_model(folder, log=quiet)
    assert loaded.format == "pt-bin"
    assert_same_model(model, source, batch)
    # A naming mismatch used to load "fine" with that weight left random: now it is refused by name.
    torch.save(torch_state(source, rename=("transformer.h.0.attn.c_attn.weight", "transformer.h.0.attn.qkv.weight")),
               os.path.join(folder, "pytorch_model.bin"))
    with pytest.raises(UserError, match=r"1 weight\(s\) of the model are missing.*c_attn/weight"):
        model_lib.load_model(folder, log=quiet)
