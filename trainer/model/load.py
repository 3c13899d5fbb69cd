"""Loading: find, read and verify GPT-2-family checkpoints (TF h5, safetensors, PyTorch).

Every code path that needs a model (training, doctor, generation, evaluation)
calls `load_model`, so a checkpoint that loads for one loads for all.

Why not plain `TFAutoModelForCausalLM.from_pretrained(dir)`: with transformers
4.57 it fails with "'builtins.safe_open' object is not iterable" whenever the
folder holds a PyTorch-format model.safetensors (huggingface/transformers#40028,
never to be fixed: the TF classes are deprecated) -- and distilgpt2 and gpt2 on
the hub hold one next to tf_model.h5. Worse, transformers loads with
allow_missing_keys=True, so a wrong name mapping leaves weights random and the
"fine-tune" trains a random model. Hence the explicit file order below and a
check, after loading, that every weight equals the array it came from.
"""

import dataclasses
import functools
import json
import os

import numpy as np

from trainer import filesystem
from trainer.errors import UserError

TF_H5 = "tf_model.h5"
SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PYTORCH_BIN = "pytorch_model.bin"
PYTORCH_BIN_INDEX = "pytorch_model.bin.index.json"
# Files besides the weights that a model folder needs (config, tokenizer, generation defaults).
SIDE_FILES = ["*.json", "*.txt", "*.model"]


@dataclasses.dataclass
class LoadedFrom:
    path: str      # the weight file (first shard when sharded)
    format: str    # "tf-h5", "tf-safetensors", "pt-safetensors", "pt-safetensors-sharded", "pt-bin"

    def __str__(self):
        return f"{self.path} ({self.format})"


# ----------------------------------------------------------------------------- finding files


def _safetensors_format(path: str) -> str:
    from safetensors import safe_open

    with safe_open(path, framework="np") as f:
        return (f.metadata() or {}).get("format", "pt")


def choose_weights(folder: str) -> LoadedFrom:
    """The weight file to load from a model folder, in order of reliability."""
    has = lambda name: os.path.isfile(os.path.join(folder, name))  # noqa: E731
    if has(TF_H5):
        return LoadedFrom(os.path.join(folder, TF_H5), "tf-h5")
    if has(SAFETENSORS):
        path = os.path.join(folder, SAFETENSORS)
        kind = "tf-safetensors" if _safetensors_format(path) == "tf" else "pt-safetensors"
        return LoadedFrom(path, kind)
    if has(SAFETENSORS_INDEX):
        return LoadedFrom(os.path.join(folder, SAFETENSORS_INDEX), "pt-safetensors-sharded")
    if has(PYTORCH_BIN) or has(PYTORCH_BIN_INDEX):
        return LoadedFrom(os.path.join(folder, PYTORCH_BIN if has(PYTORCH_BIN) else PYTORCH_BIN_INDEX),
                          "pt-bin")
    found = sorted(os.listdir(folder))
    raise UserError(
        f"--config.model.name_or_path={folder}: no weights found (looked for {TF_H5}, {SAFETENSORS}, "
        f"{SAFETENSORS_INDEX}, {PYTORCH_BIN}; the folder has {found}).")


def _download_model_dir(url: str) -> str:
    """A model folder on gs:// (e.g. an earlier run's export) copied to a local cache.

    Only a complete folder (its COMPLETE.json marker written last) is taken, and the
    copy is reused only while its marker matches the bucket's (a re-export replaces it)."""
    import hashlib
    import tempfile

    local = os.path.join(tempfile.gettempdir(), "tunewell-models", hashlib.sha1(url.encode()).hexdigest()[:16])
    marker = os.path.join(local, filesystem.COMPLETE_MARKER)
    remote_marker = filesystem.join(url, filesystem.COMPLETE_MARKER)
    if not filesystem.exists(remote_marker):
        raise UserError(f"--config.model.name_or_path={url}: no {filesystem.COMPLETE_MARKER} there, so not a "
                        "complete model folder (an interrupted export, or a typo). Re-run the job that exports it.")
    if os.path.exists(marker) and filesystem.read_text(marker) == filesystem.read_text(remote_marker):
        return local
    filesystem.remove(local)
    tmp = local + filesystem.TMP_MARK + str(os.getpid())
    filesystem.remove(tmp)
    filesystem.download_dir(url, tmp)
    os.makedirs(os.path.dirname(local), exist_ok=True)
    os.replace(tmp, local)
    return local


@functools.lru_cache(maxsize=None)
def resolve_model_dir(name_or_path: str) -> str:
    """A local folder as is; a hub name downloaded with only the weight file we will load.

    Cached: tokenizer, config and weights all resolve the same name, and a hub
    name should cost one listing and one download per process, not three."""
    name_or_path = filesystem.expand(name_or_path)
    if filesystem.is_remote(name_or_path):
        return _download_model_dir(name_or_path)
    if os.path.isdir(name_or_path):
        return name_or_path
    if os.path.exists(name_or_path) or name_or_path.startswith((".", "/", "~")):
        raise UserError(f"--config.model.name_or_path={name_or_path}: not a model folder. Give a folder "
                        "holding config.json and weights, or a hub name such as distilgpt2.")
    import huggingface_hub

    try:
        files = huggingface_hub.list_repo_files(name_or_path)
    except Exception as e:  # offline, unknown repo, no access: all end the same way for the user
        raise UserError(
            f"--config.model.name_or_path={name_or_path}: not a local folder, and the hub could not be "
            f"reached or has no such model ({type(e).__name__}). On a machine without network, copy "
            "the model folder here and pass its path.") from None
    order = [TF_H5, SAFETENSORS, SAFETENSORS_INDEX, PYTORCH_BIN, PYTORCH_BIN_INDEX]
    weights = next((name for name in order if name in files), None)
    patterns = SIDE_FILES + ([weights] if weights else [])
    if weights == SAFETENSORS_INDEX:
        patterns.append("model-*.safetensors")
    if weights == PYTORCH_BIN_INDEX:
        patterns.append("pytorch_model-*.bin")
    return huggingface_hub.snapshot_download(name_or_path, allow_patterns=patterns)


# ----------------------------------------------------------------------------- reading weights


def canonical_name(tf_name: str) -> str:
    """'tfgpt2lm_head_model/transformer/h_._0/ln_1/gamma:0' -> 'transformer/h_._0/ln_1/gamma:0'.

    The first component is the Keras model's own name, which differs between
    model classes and instances; the rest identifies the weight."""
    return tf_name.split("/", 1)[1] if "/" in tf_name else tf_name


def read_tf_h5(path: str) -> dict:
    """Arrays of a transformers tf_model.h5 by canonical name (layer group/model name/... stripped)."""
    import h5py

    arrays = {}
    try:
        f = h5py.File(path, "r")
    except OSError as e:  # a truncated download, an HTML error page saved under the name
        raise UserError(f"{path}: not a readable HDF5 file ({e}). Re-download or re-export it.") from None
    with f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                # Stored as '<layer>/<model name>/<layer>/.../weight:0'.
                arrays[name.split("/", 2)[2] if name.count("/") >= 2 else name] = obj[()]
        f.visititems(visit)
    return arrays


# safetensors dtypes -> numpy. bfloat16 (how many current checkpoints ship) has
# no numpy dtype of its own, so safetensors.numpy refuses it; ml_dtypes (a
# TensorFlow dependency) reads it, and every float is upcast to the model's
# float32, which holds bfloat16 and float16 values exactly.
_SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
                       "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8",
                       "BOOL": "bool"}


def read_safetensors(paths: list[str]) -> dict:
    """Arrays of safetensors files by name, floats as float32 (bfloat16 included)."""
    import ml_dtypes

    arrays = {}
    for path in paths:
        raw = np.memmap(path, dtype=np.uint8, mode="r")  # one copy of the weights in memory, not two
        header_len = int.from_bytes(raw[:8].tobytes(), "little")
        try:
            header = json.loads(raw[8:8 + header_len].tobytes())
        except ValueError:
            raise UserError(f"{path}: not a safetensors file (unreadable header). Re-download or "
                            "re-export it.") from None
        body = raw[8 + header_len:]
        for name, info in header.items():
            if name == "__metadata__":
                continue
            if info["dtype"] not in _SAFETENSORS_DTYPES:
                raise UserError(f"{path}: tensor {name} has dtype {info['dtype']}, which tunewell cannot "
                                "read. Convert the checkpoint to float32, float16 or bfloat16.")
            name_of_dtype = _SAFETENSORS_DTYPES[info["dtype"]]
            dtype = ml_dtypes.bfloat16 if name_of_dtype == "bfloat16" else np.dtype(name_of_dtype)
            start, end = info["data_offsets"]
            array = body[start:end].view(dtype).reshape(info["shape"])
            arrays[name] = array.astype(np.float32) if info["dtype"] in ("F16", "BF16") else np.array(array)
    return arrays


def read_pytorch_bin(paths: list[str]) -> dict:
    """Arrays of pytorch_model.bin files (torch pickles) by name, floats as float32."""
    import torch

    arrays = {}
    for path in paths:
        state = torch.load(path, map_location="cpu", weights_only=True)
        for name, tensor in state.items():
            tensor = tensor.detach()
            arrays[name] = (tensor.float() if tensor.is_floating_point() else tensor).numpy()
    return arrays


def _shard_paths(index_path: str) -> list[str]:
    shards = sorted(set(filesystem.read_json(index_path)["weight_map"].values()))
    paths = [os.path.join(os.path.dirname(index_path), s) for s in shards]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise UserError(f"{index_path} lists shards that are not there: {missing}.")
    return paths


def pt_name(tf_weight) -> tuple:
    """(PyTorch state-dict name, transpose rule) for a TF weight, by transformers' own mapping."""
    from transformers.modeling_tf_pytorch_utils import convert_tf_weight_name_to_pt_weight_name

    return convert_tf_weight_name_to_pt_weight_name(
        tf_weight.name, start_prefix_to_remove="", tf_weight_shape=tf_weight.shape)


def pt_array_for_tf(array: np.ndarray, transpose, tf_shape) -> np.ndarray:
    """A PyTorch array laid out as the TF weight; shapes must agree up to size-1 axes."""
    from transformers.modeling_tf_pytorch_utils import apply_transpose

    array = apply_transpose(transpose, array)
    if tuple(d for d in array.shape if d != 1) != tuple(d for d in tf_shape if d != 1):
        raise ValueError(f"shape {tuple(array.shape)} in the checkpoint, {tuple(tf_shape)} in the model")
    return array.reshape(tf_shape)


# ----------------------------------------------------------------------------- loading


def load_config(name_or_path: str):
    """The model's config (positions, width) without loading weights."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(resolve_model_dir(name_or_path))


def _verify(model, expected: dict, source: str) -> None:
    """Every TF weight must equal the checkpoint array it was loaded from.

    `expected` maps TF weight names to arrays already laid out as TF's. Missing
    names or unequal values mean the weight kept its random initialisation.
    """
    missing, wrong = [], []
    for weight in model.weights:
        array = expected.get(weight.name)
        if array is None:
            missing.append(weight.name)
        elif tuple(array.shape) != tuple(weight.shape) or not np.array_equal(array, weight.numpy()):
            wrong.append(f"{weight.name} {tuple(array.shape)}")
    if missing or wrong:
        shown = (missing + wrong)[:8]
        raise UserError(
            f"{source}: {len(missing)} weight(s) of the model are missing from the checkpoint and "
            f"{len(wrong)} did not load as stored, e.g. {shown}. The checkpoint does not match its "
            "config.json (a removed layer, another architecture, or a broken conversion); training would "
            "start from random weights. Re-export the checkpoint, or fix config.json.")


def load_model(name_or_path: str, log=print):
    """(TF causal-LM model, LoadedFrom) for a local folder or hub name, weights verified."""
    from transformers import TFAutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    folder = resolve_model_dir(name_or_path)
    chosen = choose_weights(folder)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # our own check below replaces transformers' load warnings
    try:
        if chosen.format in ("tf-h5", "tf-safetensors"):
            # Read first: an unreadable file is a UserError naming it, not transformers' traceback.
            stored = (read_tf_h5(chosen.path) if chosen.format == "tf-h5"
                      else read_safetensors([chosen.path]))
            model = TFAutoModelForCausalLM.from_pretrained(
                folder, use_safetensors=chosen.format == "tf-safetensors")
            expected = {w.name: stored.get(canonical_name(w.name)) for w in model.weights}
            expected = {k: v for k, v in expected.items() if v is not None}
        else:  # PyTorch names and layouts: safetensors, or a .bin that only torch can unpickle
            from transformers import AutoConfig
            from transformers.modeling_tf_pytorch_utils import load_pytorch_state_dict_in_tf2_model

            single = chosen.format in ("pt-safetensors", "pt-bin") and not chosen.path.endswith(".json")
            paths = [chosen.path] if single else _shard_paths(chosen.path)
            if chosen.format == "pt-bin":
                try:
                    import torch  # noqa: F401
                except ImportError:
                    raise UserError(
                        f"{chosen.path}: PyTorch .bin weights need torch, which is not installed. Convert "
                        "them to safetensors once where torch is available (model.save_pretrained(dir, "
                        "safe_serialization=True)) or `pip install torch`.") from None
                state = read_pytorch_bin(paths)
            else:
                state = read_safetensors(paths)
            model = TFAutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
            model.build_in_name_scope()
            expected = {}
            for weight in model.weights:
                name, transpose = pt_name(weight)
                if name in state:
                    try:
                        expected[weight.name] = pt_array_for_tf(state[name], transpose, weight.shape)
                    except ValueError as e:
                        raise UserError(f"{chosen.path}: weight {name} has {e}. The checkpoint does not "
                                        "match its config.json.") from None
            # transformers' mapping does the assignment; _verify proves it did all of it,
            # against the arrays read from the file (never the model against itself).
            load_pytorch_state_dict_in_tf2_model(model, state, tf_inputs=False, allow_missing_keys=True,
                                                 skip_logger_warnings=True)
    finally:
        hf_logging.set_verbosity(verbosity)
    _verify(model, expected, chosen.path)
    log(f"Loaded {count_parameters(model):,} parameters from {chosen}; all {len(model.weights)} "
        "weights verified.")
    return model, chosen


# ----------------------------------------------------------------------------- new tokens


# ----------------------------------------------------------------------------- tiny models


# ----------------------------------------------------------------------------- exporting


def count_parameters(model) -> int:
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))
