"""Model: find, load and verify GPT-2-family checkpoints; build tiny ones; export.

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

from trainer import faults, filesystem
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
    with h5py.File(path, "r") as f:
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
            model = TFAutoModelForCausalLM.from_pretrained(
                folder, use_safetensors=chosen.format == "tf-safetensors")
            stored = (read_tf_h5(chosen.path) if chosen.format == "tf-h5"
                      else read_safetensors([chosen.path]))
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


def load_tokenizer(name_or_path: str, new_tokens_file: str = "", log=print):
    """The fast tokenizer; GPT-2 has no pad token, so padding reuses EOS (masked by position).

    new_tokens_file (config.model.add_tokens): its tokens are added here, so every
    path that tokenizes the run's data (in memory, trainer.prepare, its manifest
    check) gets the same ids from one call."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_dir(name_or_path), use_fast=True)
    if tokenizer.eos_token_id is None:
        raise UserError(f"The tokenizer at {name_or_path} has no EOS token; causal-LM fine-tuning "
                        "needs one so the model learns where text ends.")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if new_tokens_file:
        add_tokens(tokenizer, read_new_tokens(new_tokens_file), log)
    return tokenizer


def match_vocabulary(model, tokenizer, log=print) -> int:
    """Grow the embeddings to the tokenizer's size (its added tokens), new rows at the mean.

    Call right after load_model, inside strategy.scope() and before a checkpoint
    restore: a resumed run's checkpoint holds the grown matrix. Returns the rows added."""
    return resize_embeddings_with_mean(model, len(tokenizer), log)


# ----------------------------------------------------------------------------- new tokens

# Longer than any domain word (a long drug name has ~30 characters): such a line is a
# sentence or a whole list pasted on one line, not a token.
MAX_TOKEN_CHARS = 100


def read_new_tokens(path: str) -> list[str]:
    """The tokens of a config.model.add_tokens file, in file order.

    One token per line, taken verbatim: a leading space is kept, because GPT-2's
    byte-level BPE writes a word after a space as a different token. " aspirin"
    is the mid-sentence form (what most occurrences are); "aspirin" matches at the
    start of a text or line, and also inside longer words ("Antiaspirins"). List
    both forms when both matter. Trailing whitespace is refused (such a token takes
    the space away from the next word; in an editor it is invisible), and so are
    tabs and other control characters (a two-column file). Blank lines are skipped.
    There are no comments: "#include" or "#hashtag" can be tokens. A UTF-8 BOM
    (Windows editors) is ignored.
    """
    import codecs
    import unicodedata

    flag = f"--config.model.add_tokens={path}"
    path = filesystem.expand(path)
    if not filesystem.exists(path) or filesystem.isdir(path):
        raise UserError(f"{flag}: no such file. Give a UTF-8 text file with one new token per line, or "
                        '--config.model.add_tokens="" to add none.')
    raw = filesystem.read_bytes(path).removeprefix(codecs.BOM_UTF8)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise UserError(f"{flag}, line {line}: not UTF-8 (byte 0x{raw[e.start]:02x}). Save the file as "
                        "UTF-8.") from None
    tokens, first_line = [], {}
    # Lines split on "\n" only: str.splitlines() would also split on \x0c, \x1c or U+2028.
    for number, line in enumerate(text.split("\n"), start=1):
        token = line.removesuffix("\r")
        where = f"{flag}, line {number}"
        if not token.strip():
            continue
        if any(unicodedata.category(c) == "Cc" for c in token):
            raise UserError(f"{where}: {token!r} holds a tab or another control character. Give one token "
                            "per line and nothing else on it (no counts or second column).")
        if len(token) > MAX_TOKEN_CHARS:
            raise UserError(f"{where}: a token of {len(token)} characters ({token[:40]!r}...); tokens are "
                            f"words or short phrases of at most {MAX_TOKEN_CHARS}. Put one token per line.")
        if token != token.rstrip():
            raise UserError(f"{where}: {token!r} ends with whitespace, which would take the space away from "
                            "the word after it. Remove the trailing space (a leading space is meant: "
                            "' aspirin' is the mid-sentence form).")
        if token in first_line:
            raise UserError(f"{where}: {token!r} repeats line {first_line[token]}. List each token once.")
        first_line[token] = number
        tokens.append(token)
    if not tokens:
        raise UserError(f"{flag}: no tokens (the file is empty or blank). Add one token per line, or set "
                        '--config.model.add_tokens="" to add none.')
    return tokens


def add_tokens(tokenizer, tokens: list[str], log=print) -> list[str]:
    """Adds to `tokenizer` the tokens that are not single tokens of it yet; returns those added.

    Call before any text is tokenized. A token the vocabulary already has as one
    piece (" the", or one added by an earlier run whose export is the model now)
    is skipped and named in the log. New ids follow the vocabulary in file order.
    """
    from tokenizers import AddedToken

    def one_id(token):
        return len(tokenizer.encode(token, add_special_tokens=False)) == 1

    tokens = list(dict.fromkeys(tokens))  # once each, first place kept
    present = [t for t in tokens if one_id(t)]
    new = [t for t in tokens if t not in present]
    if present:
        log(f"Already single tokens of the vocabulary, not added: {present}.")
    if not new:
        return []
    # Measured (tokenizers 0.22, GPT-2's byte-level BPE, "Take aspirin daily."):
    #   "aspirin" (plain str, what add_tokens(str) gives) -> 'Take' 'Ġ' 'aspirin' 'Ġdaily': the space
    #     stays a token of its own, and "Antiaspirins" becomes 'Anti' 'aspirin' 's';
    #   " aspirin"                      -> 'Take' ' aspirin' 'Ġdaily': one id, decodes exactly; not
    #     matched at the start of a text or after "\n" (there it is "aspirin");
    #   "aspirin", lstrip=True          -> one id, but the space is swallowed: decodes "Takeaspirin";
    #   normalized=True or False        -> the same (GPT-2 has no normalizer);
    #   single_word=True                -> stops the in-word match, keeps 'Ġ' 'aspirin' mid-sentence.
    # So the file's leading space does the work and the defaults stay (normalized=True: a
    # tokenizer that has a normalizer matches the token in normalized text).
    tokenizer.add_tokens([AddedToken(t, single_word=False, lstrip=False, rstrip=False, normalized=True,
                                     special=False) for t in new])
    ids = tokenizer.convert_tokens_to_ids(new)
    split = [t for t, i in zip(new, ids) if tokenizer.encode(t, add_special_tokens=False) != [i]]
    if split:  # e.g. "x<|endoftext|>y": the special token inside is matched first
        raise UserError(f"--config.model.add_tokens: {split} still do not tokenize as one id once added "
                        "(a special token such as <|endoftext|> inside them?). Remove them from the file.")
    log(f"Added {len(new)} token(s) to the tokenizer, ids {ids[0]}-{ids[-1]}: {new}.")
    # tokenizers' ByteLevel decoder reads an added token as byte symbols when each of its
    # characters is one (every Latin-1 letter is): "paracétamol" decodes as "parac\ufffdtamol".
    # One character outside that alphabet (a space, CJK) makes it use the UTF-8 text, so
    # " paracétamol" decodes right. Tokenizing (what training sees) is exact either way.
    garbled = [t for t, i in zip(new, ids) if tokenizer.decode([i]) != t]
    if garbled:
        log(f"Warning: {garbled} tokenize correctly but come out garbled when decoded (generated text, "
            "samples): a limit of the byte-level decoder for added tokens with accented letters and no "
            "leading space. The forms with a leading space decode correctly.")
    unspaced = [t for t in new if not t.startswith(" ") and " " + t not in tokens]
    if unspaced:
        log(f"Note: {unspaced[:5]} have no leading space: they match at the start of a text or line (and "
            f"inside words). Mid-sentence, after a space, the text holds {' ' + unspaced[0]!r}, a different "
            "token; list that form too for it to be one id there.")
    return new


def resize_embeddings_with_mean(model, vocab_size: int, log=print) -> int:
    """Grows GPT-2's token embedding (also its output layer: GPT-2 ties them) to vocab_size rows,
    each new row the mean of the existing ones; returns the number of rows added (0: nothing to do).

    Not random rows (what transformers gives): their norm is unlike the trained rows', so
    the new tokens' logits are arbitrary and the first steps' loss on them is too. At the
    mean, each new token's logit is the average logit of the old ones, so the model's
    predictions barely move until training teaches the new rows (Hewitt 2021,
    "Initializing new word embeddings for pretrained language models").

    transformers' resize_token_embeddings does the growing: it keeps the variable name
    ('.../transformer/wte/embeddings:0', so the tf_model.h5, the PyTorch export and the
    checkpoints' 'transformer/wte/embeddings' key are unchanged) and updates config.vocab_size.
    It fills the new rows from a TruncatedNormal(0.02); they are overwritten here. Works
    inside strategy.scope(): the new variable is created there, and the whole matrix is
    assigned from the host, which every replica's copy receives.
    """
    embedding = model.get_input_embeddings()
    old_size = int(embedding.embeddings.shape[0])
    if vocab_size <= old_size:
        return 0
    if model.get_output_embeddings() is not embedding or model.get_bias() is not None:
        raise UserError(f"{type(model).__name__} has an output layer separate from its token embedding; "
                        "tunewell grows tied embeddings (GPT-2's) only, so tokens cannot be added to it.")
    old = embedding.embeddings.numpy()
    # Summed in float64: over 50,257 rows, float32 sums would lose the last bits of the mean.
    mean = old.astype(np.float64).mean(axis=0).astype(old.dtype)
    model.resize_token_embeddings(vocab_size)
    grown = model.get_input_embeddings().embeddings
    grown.assign(np.concatenate([old, np.broadcast_to(mean, (vocab_size - old_size, old.shape[1]))]))
    log(f"Token embeddings grown {old_size:,} -> {vocab_size:,} rows for added tokens; the new rows start "
        "at the mean of the existing ones.")
    return vocab_size - old_size


# ----------------------------------------------------------------------------- tiny models


def build_tiny(folder: str, documents: list[str], tiny_config, seed: int, log=print) -> None:
    """A from-scratch GPT-2 and byte-level BPE tokenizer saved as a normal model folder.

    The tokenizer is trained on `documents` (the training split), the weights are
    random: what gets fine-tuned is then loaded back with from_pretrained, the
    same path a downloaded distilgpt2 takes.
    """
    tokenizer = train_tokenizer(documents, tiny_config.vocab_size, tiny_config.n_positions)
    save_random_gpt2(folder, tokenizer, seed, n_positions=tiny_config.n_positions, n_embd=tiny_config.n_embd,
                     n_layer=tiny_config.n_layer, n_head=tiny_config.n_head, resid_pdrop=tiny_config.dropout,
                     embd_pdrop=tiny_config.dropout, attn_pdrop=tiny_config.dropout)
    log(f"Built a tiny GPT-2 ({tiny_config.n_layer} layers x {tiny_config.n_embd}, vocabulary {len(tokenizer)}) "
        f"at {folder}.")


def train_tokenizer(documents: list[str], vocab_size: int, max_length: int):
    """A byte-level BPE (GPT-2's scheme) of vocab_size tokens trained on `documents`,
    with GPT-2's <|endoftext|> as EOS (and BOS/UNK)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2TokenizerFast

    eos = "<|endoftext|>"
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(documents, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[eos], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return GPT2TokenizerFast(tokenizer_object=bpe, bos_token=eos, eos_token=eos, unk_token=eos,
                             model_max_length=max_length)


def save_random_gpt2(folder: str, tokenizer, seed: int, vocab_size: int | None = None, **shape) -> None:
    """A randomly initialised TFGPT2LMHeadModel of `shape` (GPT2Config fields) published with
    `tokenizer` as a model folder. vocab_size defaults to the tokenizer's."""
    import tensorflow as tf
    from transformers import GPT2Config, TFGPT2LMHeadModel

    config = GPT2Config(vocab_size=vocab_size or len(tokenizer), bos_token_id=tokenizer.eos_token_id,
                        eos_token_id=tokenizer.eos_token_id, **shape)
    tf.keras.utils.set_random_seed(seed)
    model = TFGPT2LMHeadModel(config)
    model.build_in_name_scope()

    def write(tmp):
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    filesystem.publish_dir(folder, write)


# ----------------------------------------------------------------------------- exporting


def export_tf(model, tokenizer, folder: str) -> None:
    """tf_model.h5 + config + tokenizer: loads with TFAutoModelForCausalLM and the TF pipeline.

    No PyTorch-format model.safetensors may sit here: TF's from_pretrained would
    try it first and hit the bug described at the top of this module."""
    def write(tmp):
        model.save_pretrained(tmp)
        faults.point("export_write")
        tokenizer.save_pretrained(tmp)
        faults.point("export_swap")
    filesystem.publish_dir(folder, write)
    faults.point("after_export")


def pytorch_state_dict(model) -> dict:
    """The model's weights under PyTorch names and layouts, tied weights written once."""
    from transformers.modeling_tf_pytorch_utils import apply_transpose

    state = {}
    for weight in model.weights:
        name, transpose = pt_name(weight)
        array = apply_transpose(transpose, weight.numpy(), pt_to_tf=False)
        # TF keeps the Conv1D biases of GPT-2 as [1, n]; PyTorch expects [n] and refuses the rest.
        if name.endswith(".bias") and array.ndim == 2 and array.shape[0] == 1:
            array = array[0]
        state[name] = np.ascontiguousarray(array)
    return state


def export_pytorch(model, tokenizer, folder: str) -> None:
    """config + tokenizer + PyTorch-format model.safetensors, for torch-based stacks."""
    from safetensors.numpy import save_file

    def write(tmp):
        config = model.config.to_dict()
        config["architectures"] = [type(model).__name__.removeprefix("TF")]
        config.pop("transformers_version", None)
        filesystem.write_json(os.path.join(tmp, "config.json"), config)
        if model.generation_config is not None:
            model.generation_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        save_file(pytorch_state_dict(model), os.path.join(tmp, SAFETENSORS), metadata={"format": "pt"})
    filesystem.publish_dir(folder, write)


def count_parameters(model) -> int:
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))
