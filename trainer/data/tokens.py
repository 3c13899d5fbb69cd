"""Tokens: documents and prompt/completion pairs to token ids, EOS appended, with a
cache keyed by the documents and the tokenizer's identity (tokenizer_hash)."""

import hashlib
import io
import json
import zipfile

import numpy as np

from trainer import filesystem


def tokenize(documents: list[str], tokenizer, num_proc: int = 1, desc: str = "Tokenizing",
             cache_dir: str = "", append_eos: bool = True):
    """Token ids per document with EOS appended, so the model learns where text ends
    (append_eos=False: prompts, which the completion continues).

    With cache_dir (local or gs://), the ids are kept in CACHE_DIR/tokens/<key>.npz, where the key
    is a sha256 of the tokenizer (its vocabulary and merges) and of every
    document's text: a second run on the same data does not tokenize again, and
    any change to either misses the cache. Written to a temporary name and
    renamed, so a kill mid-write leaves no half file; an unreadable entry is
    tokenized again and replaced.
    """
    path = _token_cache_path(documents, tokenizer, cache_dir, append_eos) if cache_dir else None
    cached = _read_token_cache(path, len(documents)) if path else None
    if cached is not None:
        return cached
    import datasets

    def encode(batch):
        return {"input_ids": encode_batch(batch["text"], tokenizer, append_eos)}

    dataset = datasets.Dataset.from_dict({"text": documents})
    dataset = dataset.map(encode, batched=True, remove_columns=["text"], desc=desc,
                          num_proc=num_proc if num_proc > 1 else None, keep_in_memory=True)
    token_ids = [np.asarray(ids, dtype=np.int32) for ids in dataset["input_ids"]]
    if path:
        _write_token_cache(path, token_ids)
    return token_ids


def encode_batch(texts: list[str], tokenizer, append_eos: bool = True) -> list[list[int]]:
    """Token ids of each text, EOS appended unless append_eos=False: the one encoding both the
    in-process path (tokenize) and the Beam pipeline's workers call."""
    ids = tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
    return [x + [tokenizer.eos_token_id] for x in ids] if append_eos else ids


def encode_examples(pairs, tokenizer) -> list[tuple[np.ndarray, np.ndarray]]:
    """(prompt ids, completion ids + EOS) of each pair, tokenized apart as they meet at
    inference; an empty prompt becomes EOS (see tokenize_examples)."""
    prompts = encode_batch([p for p, _ in pairs], tokenizer, append_eos=False)
    completions = encode_batch([c for _, c in pairs], tokenizer)
    eos = [tokenizer.eos_token_id]
    return [(np.asarray(p or eos, np.int32), np.asarray(c, np.int32)) for p, c in zip(prompts, completions)]


def _token_cache_path(documents: list[str], tokenizer, cache_dir: str, append_eos: bool = True) -> str:
    key = hashlib.sha256(tokenizer_hash(tokenizer).encode())
    if not append_eos:
        key.update(b"no-eos\0")  # the same texts without EOS are another entry
    for text in documents:
        key.update(text.encode("utf-8", "surrogatepass"))
        key.update(b"\0")  # ["ab", "c"] and ["a", "bc"] are different corpora
    return filesystem.join(filesystem.expand(cache_dir), "tokens", key.hexdigest() + ".npz")


def _read_token_cache(path: str, documents: int) -> list[np.ndarray] | None:
    """The cached ids, or None when there is no entry or it is damaged (a disk error, a
    copy cut short): the caller then tokenizes again and replaces it."""
    try:
        with np.load(io.BytesIO(filesystem.read_bytes(path))) as cached:
            ids, ends = cached["ids"], cached["ends"]
    except Exception as e:  # noqa: BLE001  (gs:// adds its own error types to the disk's)
        if isinstance(e, (OSError, ValueError, KeyError, zipfile.BadZipFile)) or type(e).__name__ in (
                "NotFoundError", "PermissionDeniedError", "UnavailableError"):
            return None
        raise
    if len(ends) != documents:
        return None
    return np.split(ids, ends[:-1]) if len(ends) else []


def _write_token_cache(path: str, token_ids: list[np.ndarray]) -> None:
    """Best effort: a read-only or full disk costs the next run a tokenization, nothing more.
    Written whole under a temporary name, then renamed (one object write on gs://): every
    worker of a job may write the same entry, and each write is complete."""
    ids = np.concatenate(token_ids) if token_ids else np.zeros([0], np.int32)
    ends = np.cumsum([len(t) for t in token_ids], dtype=np.int64)

    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, ids=ids, ends=ends)
    try:
        filesystem.write_file(path, write)
    except Exception as e:  # noqa: BLE001
        if not isinstance(e, OSError) and type(e).__name__ not in ("PermissionDeniedError", "UnavailableError",
                                                                    "NotFoundError"):
            raise


def tokenize_examples(pairs: list[tuple[str, str]], tokenizer, num_proc: int = 1, desc: str = "Tokenizing",
                      cache_dir: str = ""):
    """Prompt ids (no EOS) and completion ids + EOS, tokenized apart as they meet at
    inference: the prompt alone, then the model writes. An empty prompt becomes EOS,
    GPT-2's document start, so the completion's first token is still scored."""
    prompts = tokenize([p for p, _ in pairs], tokenizer, num_proc, desc + " (prompts)", cache_dir, append_eos=False)
    completions = tokenize([c for _, c in pairs], tokenizer, num_proc, desc + " (completions)", cache_dir)
    eos = np.array([tokenizer.eos_token_id], np.int32)
    return [p if len(p) else eos for p in prompts], completions


def tokenizer_hash(tokenizer) -> str:
    """sha256 of what decides the token ids: vocabulary, merges, special tokens.

    Two tokenizers with the same hash turn any text into the same ids, so shards
    made with one can train a model with the other. Built from the vocabulary
    and merge lists, not from tokenizer.json as a whole, so a tokenizers release
    that spells its JSON differently (merges as "a b" or ["a", "b"]) does not
    orphan prepared folders."""
    merges = []
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        model = json.loads(backend.to_str()).get("model", {})
        merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    elif hasattr(tokenizer, "bpe_ranks"):  # a slow GPT-2 tokenizer
        merges = [" ".join(pair) for pair, _ in sorted(tokenizer.bpe_ranks.items(), key=lambda kv: kv[1])]
    identity = {"vocab": tokenizer.get_vocab(), "merges": merges,
                "special_tokens": tokenizer.special_tokens_map,
                "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,
                "add_prefix_space": getattr(tokenizer, "add_prefix_space", None)}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()
