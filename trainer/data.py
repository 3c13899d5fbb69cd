"""Data: read documents, split train/validation, tokenize, pack or pad, tf.data.

The path a corpus takes:

    files --read_documents--> documents (str)
          --split_documents--> train / validation documents   (before any packing)
          --tokenize--> token ids per document, EOS appended
          --pack_blocks | pad_blocks--> Blocks: [rows, block_size] int32 arrays
          --train_dataset | eval_dataset--> tf.data with static shapes

Labels are the input ids themselves, with -100 wherever a position must not be
scored (padding only). The model's loss (trainer/steps.py) shifts them once.
"""

import dataclasses
import glob
import hashlib
import json
import os
import re
import unicodedata
import zipfile

import numpy as np

from trainer import filesystem
from trainer.errors import UserError

IGNORE_INDEX = -100  # label value that the loss skips (transformers' convention)

TEXT_EXTENSIONS = (".txt", ".text", ".md")
JSON_EXTENSIONS = (".jsonl", ".json", ".ndjson")
TABLE_EXTENSIONS = (".csv", ".parquet")


# ----------------------------------------------------------------------------- reading


def expand_files(spec: str, flag: str) -> list[str]:
    """Comma-separated paths or globs -> sorted existing files; errors name the flag."""
    patterns = [p.strip() for p in spec.split(",") if p.strip()]
    if not patterns:
        raise UserError(f"{flag} is empty: give one or more data files, e.g. {flag}=data/train.jsonl")
    files = []
    for pattern in patterns:
        if filesystem.is_remote(pattern):  # gs://bucket/corpus/*.jsonl: wildcards in the file name
            folder, _, name = pattern.rpartition("/")
            matches = [m for m in filesystem.glob_in(folder, name) if not filesystem.isdir(m)]
        else:
            matches = [m for m in sorted(glob.glob(os.path.expanduser(pattern))) if os.path.isfile(m)]
        if not matches:
            raise UserError(f"{flag}: no file matches '{pattern}'. Check the path (relative paths "
                            f"start from {os.getcwd()}).")
        files.extend(matches)
    return files


def _decode_utf8(path: str) -> str:
    raw = filesystem.read_bytes(path)
    if not raw.strip():
        raise UserError(f"{path} is empty: it holds no text to train on. Remove it from the file list "
                        "or fill it.")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise UserError(
            f"{path}, line {line}: byte 0x{raw[e.start]:02x} is not valid UTF-8. Re-encode the file as "
            f"UTF-8, e.g. `iconv -f latin1 -t utf-8 {path} > fixed.txt`.") from None


# The flag that names each field, for error messages.
FIELD_FLAGS = {"text": "--config.data.text_field", "prompt": "--config.data.prompt_field",
               "completion": "--config.data.completion_field"}


def _json_values(record, path: str, line: int, fields: dict) -> tuple[str, ...]:
    """fields: {role: field name}, e.g. {"text": "text"} or {"prompt": "q", "completion": "a"}."""
    values = []
    for role, field in fields.items():
        if not isinstance(record, dict) or field not in record:
            keys = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise UserError(
                f"{path}, line {line}: no field '{field}' (found {keys}). Set "
                f"{FIELD_FLAGS[role]} to the field that holds the {role}.")
        value = record[field]
        if value is None and role != "text":
            value = ""  # a missing completion is reported by the doctor, not a crash here
        if not isinstance(value, str):
            raise UserError(f"{path}, line {line}: field '{field}' is {type(value).__name__}, not text.")
        values.append(value)
    return tuple(values)


def _read_json(path: str, fields: dict) -> list[tuple[str, ...]]:
    content = _decode_utf8(path)
    if content.lstrip().startswith("["):  # a JSON array of records
        try:
            records = json.loads(content)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}, line {e.lineno}: not valid JSON ({e.msg}).") from None
        return [_json_values(r, path, i + 1, fields) for i, r in enumerate(records)]
    rows = []
    for number, line in enumerate(content.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}, line {number}: not valid JSON ({e.msg}). Each line of a JSONL "
                            "file must be one JSON object, e.g. {\"text\": \"...\"}.") from None
        rows.append(_json_values(record, path, number, fields))
    return rows


def _read_table(path: str, fields: dict) -> list[tuple[str, ...]]:
    import datasets  # heavy import, only for the formats that need it

    if path.endswith(".csv"):
        _decode_utf8(path)  # the same empty-file and UTF-8 checks, with line numbers
    elif filesystem.size(path) == 0:
        raise UserError(f"{path} is empty: it holds no text to train on.")
    builder = "csv" if path.endswith(".csv") else "parquet"
    if filesystem.is_remote(path):  # datasets reads local files: a copy, read once
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            copy = os.path.join(tmp, os.path.basename(path))
            with open(copy, "wb") as f:
                f.write(filesystem.read_bytes(path))
            table = getattr(datasets.Dataset, f"from_{builder}")(copy, keep_in_memory=True)
    else:
        table = getattr(datasets.Dataset, f"from_{builder}")(path)
    columns = []
    for role, field in fields.items():
        if field not in table.column_names:
            raise UserError(f"{path}: no column '{field}' (columns: {table.column_names}). Set "
                            f"{FIELD_FLAGS[role]} to the column that holds the {role}.")
        columns.append(["" if t is None else str(t) for t in table[field]])
    return list(zip(*columns))


# data.normalize steps, applied in this order. Off by default: a model fine-tuned on
# normalised text writes normalised text, which is a choice, not a fix.
NORMALIZATIONS = ("control", "nfkc", "whitespace", "lowercase")
HORIZONTAL_SPACE = re.compile(r"[^\S\n]+")  # spaces, tabs, NBSP... but not newlines
BLANK_LINES = re.compile(r"\n\s*\n(\s*\n)+")


def parse_normalize(spec: str) -> tuple[str, ...]:
    """--config.data.normalize="nfkc,whitespace" -> ("nfkc", "whitespace"), in NORMALIZATIONS order."""
    steps = {s.strip().lower() for s in spec.split(",") if s.strip()}
    unknown = sorted(steps - set(NORMALIZATIONS))
    if unknown:
        raise UserError(f"--config.data.normalize={spec!r}: unknown step(s) {', '.join(unknown)}; use a "
                        f"comma-separated subset of {','.join(NORMALIZATIONS)}, or \"\" for none.")
    return tuple(step for step in NORMALIZATIONS if step in steps)


def _collapse_line(line: str) -> str:
    """Runs of spaces and tabs after the indentation -> one space; no trailing space. The
    indentation stays: in code, lists and verse it is content."""
    body = line.lstrip()
    indent = line[: len(line) - len(body)]
    return indent + HORIZONTAL_SPACE.sub(" ", body).rstrip() if body else ""


def normalize_text(text: str, steps) -> str:
    """control: drop control characters (Unicode Cc) but newline and tab; nfkc: Unicode
    NFKC (fullwidth letters, ligatures, non-breaking spaces -> their plain forms);
    whitespace: runs of spaces and tabs inside a line -> one space (indentation kept), no
    spaces at line ends, at most one blank line in a row (paragraphs survive); lowercase."""
    if "control" in steps:
        text = "".join(c for c in text if c in "\n\t" or unicodedata.category(c) != "Cc")
    if "nfkc" in steps:
        text = unicodedata.normalize("NFKC", text)
    if "whitespace" in steps:
        text = "\n".join(_collapse_line(line) for line in text.split("\n"))
        text = BLANK_LINES.sub("\n\n", text)
    if "lowercase" in steps:
        text = text.lower()
    return text


def read_documents(spec: str, flag: str, text_field: str, text_separator: str, normalize=()) -> list[str]:
    """All non-blank documents of the files in `spec`, in file order, normalised by the
    `normalize` steps (parse_normalize) when given."""
    documents = []
    for path in expand_files(spec, flag):
        ext = os.path.splitext(path)[1].lower()
        if ext in JSON_EXTENSIONS:
            texts = [t for (t,) in _read_json(path, {"text": text_field})]
        elif ext in TABLE_EXTENSIONS:
            texts = [t for (t,) in _read_table(path, {"text": text_field})]
        elif ext in TEXT_EXTENSIONS or ext == "":
            content = _decode_utf8(path)
            texts = content.split(text_separator) if text_separator else content.splitlines()
        else:
            raise UserError(f"{path}: unknown format '{ext}'. Use .txt, .jsonl/.json, .csv or .parquet.")
        if normalize:
            texts = [normalize_text(t, normalize) for t in texts]
        texts = [t.strip() for t in texts if t.strip()]
        if not texts:
            raise UserError(f"{path} holds no non-blank text in field '{text_field}'.")
        documents.extend(texts)
    return documents


def is_prompt_completion(data_config) -> bool:
    return bool(data_config.prompt_field and data_config.completion_field)


def batching_of(data_config) -> str:
    """data.batching with "auto" decided: packed for free text, padded for prompt/completion
    data, where an example alone in its row, from position 0 as at inference, learnt the
    task far better than packed ones (README "Fine-tune for a task": exact match 56 against 0
    on the task sample at the same examples seen)."""
    if data_config.batching != "auto":
        return data_config.batching
    return "padded" if is_prompt_completion(data_config) else "packed"


def read_examples(spec: str, flag: str, prompt_field: str, completion_field: str,
                  normalize=()) -> list[tuple[str, str]]:
    """(prompt, completion) records of JSONL/JSON/CSV/Parquet files, in file order.

    Not stripped: a prompt's trailing separator ("Answer:", "\n\n###\n\n") and a
    completion's leading space are what the model is trained and prompted with. A
    record whose prompt and completion are both blank is skipped; an empty
    completion is kept (the doctor counts them)."""
    examples = []
    for path in expand_files(spec, flag):
        ext = os.path.splitext(path)[1].lower()
        fields = {"prompt": prompt_field, "completion": completion_field}
        if ext in JSON_EXTENSIONS:
            pairs = _read_json(path, fields)
        elif ext in TABLE_EXTENSIONS:
            pairs = _read_table(path, fields)
        else:
            raise UserError(f"{path}: prompt/completion data (--config.data.prompt_field and "
                            "--config.data.completion_field) must be .jsonl/.json, .csv or .parquet records; "
                            f"'{ext or 'no extension'}' holds free text. Unset both fields to train on it as "
                            "free text.")
        if normalize:
            pairs = [(normalize_text(p, normalize), normalize_text(c, normalize)) for p, c in pairs]
        pairs = [(p, c) for p, c in pairs if p.strip() or c.strip()]
        if not pairs:
            raise UserError(f"{path} holds no record with a non-blank '{prompt_field}' or '{completion_field}'.")
        examples.extend(pairs)
    return examples


# ----------------------------------------------------------------------------- splitting


@dataclasses.dataclass
class Documents:
    """Texts of each split. Prompt/completion data also keeps its (prompt, completion)
    pairs; its texts are then prompt + completion, for the checks that read text
    (duplicates, leakage, the copy check of generations, a tiny model's tokenizer)."""
    train: list[str]
    validation: list[str]
    validation_source: str  # "files", "split" or "prepared"
    train_pairs: list[tuple[str, str]] | None = None
    validation_pairs: list[tuple[str, str]] | None = None


def split_documents(documents: list[str], fraction: float, max_examples: int, seed: int):
    """Hold out whole documents for validation, BEFORE packing.

    Splitting packed blocks instead would put the two halves of a document on
    both sides, and validation would measure memorisation of its neighbour.
    """
    if len(documents) < 2:
        raise UserError(
            f"The training data has {len(documents)} document(s); at least 2 are needed to hold one out "
            "for validation. Add data or pass --config.data.validation_files.")
    if not 0 < fraction < 1:
        raise UserError(f"--config.data.validation_fraction={fraction} must be between 0 and 1.")
    n_val = int(min(max(1, round(fraction * len(documents))), max_examples, len(documents) - 1))
    order = np.random.default_rng(seed).permutation(len(documents))
    val_ids = set(order[:n_val].tolist())
    train = [d for i, d in enumerate(documents) if i not in val_ids]
    validation = [d for i, d in enumerate(documents) if i in val_ids]
    return train, validation


def load_documents(data_config, seed: int) -> Documents:
    normalize = parse_normalize(data_config.normalize)
    if is_prompt_completion(data_config):
        def read(spec, flag):
            return read_examples(spec, flag, data_config.prompt_field, data_config.completion_field, normalize)
    else:
        def read(spec, flag):
            return read_documents(spec, flag, data_config.text_field, data_config.text_separator, normalize)
    train = read(data_config.train_files, "--config.data.train_files")
    if data_config.validation_files:
        validation, source = read(data_config.validation_files, "--config.data.validation_files"), "files"
    else:
        train, validation = split_documents(train, data_config.validation_fraction,
                                            data_config.validation_max_examples, seed)
        source = "split"
    if not is_prompt_completion(data_config):
        return Documents(train, validation, source)
    return Documents([p + c for p, c in train], [p + c for p, c in validation], source, train, validation)


# ----------------------------------------------------------------------------- tokenizing


def tokenize(documents: list[str], tokenizer, num_proc: int = 1, desc: str = "Tokenizing",
             cache_dir: str = "", append_eos: bool = True):
    """Token ids per document with EOS appended, so the model learns where text ends
    (append_eos=False: prompts, which the completion continues).

    With cache_dir, the ids are kept in CACHE_DIR/tokens/<key>.npz, where the key
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

    eos = tokenizer.eos_token_id

    def encode(batch):
        ids = tokenizer(batch["text"], add_special_tokens=False, verbose=False)["input_ids"]
        return {"input_ids": [x + [eos] for x in ids] if append_eos else ids}

    dataset = datasets.Dataset.from_dict({"text": documents})
    dataset = dataset.map(encode, batched=True, remove_columns=["text"], desc=desc,
                          num_proc=num_proc if num_proc > 1 else None, keep_in_memory=True)
    token_ids = [np.asarray(ids, dtype=np.int32) for ids in dataset["input_ids"]]
    if path:
        _write_token_cache(path, token_ids)
    return token_ids


def _token_cache_path(documents: list[str], tokenizer, cache_dir: str, append_eos: bool = True) -> str:
    from trainer.prepare import tokenizer_hash

    key = hashlib.sha256(tokenizer_hash(tokenizer).encode())
    if not append_eos:
        key.update(b"no-eos\0")  # the same texts without EOS are another entry
    for text in documents:
        key.update(text.encode("utf-8", "surrogatepass"))
        key.update(b"\0")  # ["ab", "c"] and ["a", "bc"] are different corpora
    return os.path.join(os.path.expanduser(cache_dir), "tokens", key.hexdigest() + ".npz")


def _read_token_cache(path: str, documents: int) -> list[np.ndarray] | None:
    """The cached ids, or None when there is no entry or it is damaged (a disk error, a
    copy cut short): the caller then tokenizes again and replaces it."""
    try:
        with np.load(path) as cached:
            ids, ends = cached["ids"], cached["ends"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None
    if len(ends) != documents:
        return None
    return np.split(ids, ends[:-1]) if len(ends) else []


def _write_token_cache(path: str, token_ids: list[np.ndarray]) -> None:
    """Best effort: a read-only or full disk costs the next run a tokenization, nothing more."""
    ids = np.concatenate(token_ids) if token_ids else np.zeros([0], np.int32)
    ends = np.cumsum([len(t) for t in token_ids], dtype=np.int64)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            np.savez(f, ids=ids, ends=ends)
        os.replace(tmp, path)
    except OSError:
        pass


# ----------------------------------------------------------------------------- blocks


@dataclasses.dataclass
class Blocks:
    """Rows of block_size tokens ready for the model, and what it cost to make them."""
    input_ids: np.ndarray       # [rows, block_size] int32
    attention_mask: np.ndarray  # [rows, block_size] int32, 0 on padding
    labels: np.ndarray          # [rows, block_size] int32, IGNORE_INDEX on padding
    documents: int
    tokens: int                 # tokens of all documents, EOS included
    dropped_tokens: int = 0     # packed: the tail shorter than one block
    truncated_documents: int = 0  # padded: documents longer than block_size
    truncated_tokens: int = 0
    document_lengths: np.ndarray | None = None  # tokens per document, EOS included (for the doctor)
    # Prompt/completion data: the prompt's tokens of each example (document_lengths then
    # holds prompt + completion + EOS), and examples whose completion itself was cut.
    prompt_lengths: np.ndarray | None = None
    truncated_completions: int = 0

    @property
    def rows(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def supervised_tokens(self) -> int:
        """Positions the loss scores: a label at t+1 that is not IGNORE_INDEX."""
        return int((self.labels[:, 1:] != IGNORE_INDEX).sum())

    def stats(self) -> dict:
        stats = {"documents": self.documents, "rows": self.rows, "tokens": self.tokens,
                 "dropped_tokens": self.dropped_tokens, "truncated_documents": self.truncated_documents,
                 "truncated_tokens": self.truncated_tokens, "supervised_tokens": self.supervised_tokens}
        if self.prompt_lengths is not None:
            stats["truncated_completions"] = self.truncated_completions
        return stats


def pack_blocks(token_ids: list[np.ndarray], block_size: int, pad_token_id: int = 0,
                keep_tail: bool = False) -> Blocks:
    """Concatenate documents (each ending in EOS) and cut full blocks; no padding.

    A 1,000-token corpus at block_size 128 gives 7 blocks (896 tokens) and drops
    the last 104 tokens: every token of every block is real and supervised.
    keep_tail (validation): the last 104 tokens become an 8th row, padded and
    masked, so every validation token is scored.
    """
    stream = np.concatenate(token_ids) if token_ids else np.zeros([0], np.int32)
    rows = len(stream) // block_size
    tail = len(stream) - rows * block_size
    ids = stream[: rows * block_size].reshape(rows, block_size).astype(np.int32)
    mask = np.ones_like(ids)
    if keep_tail and tail:
        last = np.full([1, block_size], pad_token_id, np.int32)
        last[0, :tail] = stream[rows * block_size:]
        ids = np.concatenate([ids, last])
        mask = np.concatenate([mask, (np.arange(block_size) < tail).astype(np.int32)[None]])
        tail = 0
    labels = np.where(mask == 1, ids, IGNORE_INDEX).astype(np.int32)
    return Blocks(ids, mask, labels, documents=len(token_ids), tokens=len(stream), dropped_tokens=tail,
                  document_lengths=np.array([len(d) for d in token_ids], np.int64))


def pad_blocks(token_ids: list[np.ndarray], block_size: int, pad_token_id: int) -> Blocks:
    """One document per row, truncated to block_size, padding masked out.

    The pad id is often the EOS id (GPT-2 has no pad token), so padding is found
    by position (past the document's length), never by comparing ids: a real EOS
    stays supervised and the model still learns to stop.
    """
    n = len(token_ids)
    ids = np.full([n, block_size], pad_token_id, np.int32)
    mask = np.zeros([n, block_size], np.int32)
    truncated_documents = truncated_tokens = 0
    for row, doc in enumerate(token_ids):
        length = min(len(doc), block_size)
        if len(doc) > block_size:
            truncated_documents += 1
            truncated_tokens += len(doc) - block_size
        ids[row, :length] = doc[:length]
        mask[row, :length] = 1
    labels = np.where(mask == 1, ids, IGNORE_INDEX).astype(np.int32)
    return Blocks(ids, mask, labels, documents=n, tokens=int(sum(len(d) for d in token_ids)),
                  truncated_documents=truncated_documents, truncated_tokens=truncated_tokens,
                  document_lengths=np.array([len(d) for d in token_ids], np.int64))


def fit_example(prompt: np.ndarray, completion: np.ndarray, block_size: int):
    """(prompt, completion) cut to fit block_size: the prompt loses its START (the end,
    next to the completion, is the context that matters most, and the task instruction
    usually sits in a template around it); the completion is cut at the right only when
    it does not fit beside one prompt token. Returns the two and whether each was cut.

    block_size 128, a 150-token prompt and a 30-token completion (EOS included): the
    prompt keeps its last 98 tokens, the completion all 30."""
    cut_completion = len(completion) > block_size - 1
    if cut_completion:  # one prompt token stays, so the completion's first token is scored
        completion = completion[: block_size - 1]
    room = block_size - len(completion)
    cut_prompt = len(prompt) > room
    return prompt[len(prompt) - room:] if cut_prompt else prompt, completion, cut_prompt, cut_completion


def example_blocks(prompts: list[np.ndarray], completions: list[np.ndarray], block_size: int,
                   pad_token_id: int, packed: bool) -> Blocks:
    """Prompt/completion examples in rows: labels IGNORE_INDEX on every prompt token and on
    padding, the completion's tokens and its EOS scored.

    padded: one example per row. packed: whole examples placed one after another in a
    row while they fit (no example is split across rows), the rest of the row padded.
    Within a packed row each example attends to the examples before it (GPT-2 takes
    a 2-D padding mask, not a per-example one); that context is never scored: an
    example's first scored token is its completion's first, predicted from its own
    prompt's last token, and every prompt token (the boundary included) is -100.
    Positions also continue across examples. README "Fine-tune for a task" has the
    measured effect against padded rows, where each example is alone."""
    ids_rows, label_rows = [], []
    current_ids, current_labels = [], []
    truncated = truncated_completions = truncated_tokens = 0
    for prompt, completion in zip(prompts, completions):
        fitted_prompt, fitted_completion, cut_prompt, cut_completion = fit_example(prompt, completion, block_size)
        truncated += cut_prompt or cut_completion
        truncated_completions += cut_completion
        truncated_tokens += len(prompt) + len(completion) - len(fitted_prompt) - len(fitted_completion)
        ids = np.concatenate([fitted_prompt, fitted_completion]).astype(np.int32)
        labels = np.concatenate([np.full(len(fitted_prompt), IGNORE_INDEX, np.int32),
                                 fitted_completion.astype(np.int32)])
        if current_ids and (not packed or sum(map(len, current_ids)) + len(ids) > block_size):
            ids_rows.append(current_ids)
            label_rows.append(current_labels)
            current_ids, current_labels = [], []
        current_ids.append(ids)
        current_labels.append(labels)
    if current_ids:
        ids_rows.append(current_ids)
        label_rows.append(current_labels)
    n = len(ids_rows)
    input_ids = np.full([n, block_size], pad_token_id, np.int32)
    mask = np.zeros([n, block_size], np.int32)
    labels = np.full([n, block_size], IGNORE_INDEX, np.int32)
    for row, (row_ids, row_labels) in enumerate(zip(ids_rows, label_rows)):
        joined = np.concatenate(row_ids)
        input_ids[row, :len(joined)] = joined
        mask[row, :len(joined)] = 1
        labels[row, :len(joined)] = np.concatenate(row_labels)
    lengths = np.array([len(p) + len(c) for p, c in zip(prompts, completions)], np.int64)
    return Blocks(input_ids, mask, labels, documents=len(prompts), tokens=int(lengths.sum()),
                  truncated_documents=truncated, truncated_tokens=truncated_tokens, document_lengths=lengths,
                  prompt_lengths=np.array([len(p) for p in prompts], np.int64),
                  truncated_completions=truncated_completions)


def tokenize_examples(pairs: list[tuple[str, str]], tokenizer, num_proc: int = 1, desc: str = "Tokenizing",
                      cache_dir: str = ""):
    """Prompt ids (no EOS) and completion ids + EOS, tokenized apart as they meet at
    inference: the prompt alone, then the model writes. An empty prompt becomes EOS,
    GPT-2's document start, so the completion's first token is still scored."""
    prompts = tokenize([p for p, _ in pairs], tokenizer, num_proc, desc + " (prompts)", cache_dir, append_eos=False)
    completions = tokenize([c for _, c in pairs], tokenizer, num_proc, desc + " (completions)", cache_dir)
    eos = np.array([tokenizer.eos_token_id], np.int32)
    return [p if len(p) else eos for p in prompts], completions


def make_blocks(documents, tokenizer, data_config, desc, keep_tail=False):
    """documents: texts, or (prompt, completion) pairs when data_config names both fields.
    keep_tail: score every token (validation) rather than only full blocks (training)."""
    if is_prompt_completion(data_config):
        prompts, completions = tokenize_examples(documents, tokenizer, data_config.num_proc, desc,
                                                 data_config.cache_dir)
        return example_blocks(prompts, completions, data_config.block_size, tokenizer.pad_token_id,
                              packed=batching_of(data_config) == "packed")
    token_ids = tokenize(documents, tokenizer, data_config.num_proc, desc, data_config.cache_dir)
    if batching_of(data_config) == "packed":
        return pack_blocks(token_ids, data_config.block_size, tokenizer.pad_token_id, keep_tail)
    return pad_blocks(token_ids, data_config.block_size, tokenizer.pad_token_id)


def decode_pairs(blocks: Blocks, tokenizer, max_examples: int = 2000) -> list[tuple[str, str]]:
    """(prompt, completion) pairs back from prompt/completion rows (prepared data): an
    example starts where an unscored token (a prompt's, attention on) follows a scored
    one or the row's start; its completion is the scored run, EOS dropped."""
    pairs = []
    for ids, mask, labels in zip(blocks.input_ids, blocks.attention_mask, blocks.labels):
        scored = labels != IGNORE_INDEX
        prompt, completion = [], []
        for token, on, is_scored in zip(ids.tolist(), mask.tolist(), scored.tolist()):
            if not on:
                break
            if not is_scored and completion:  # the next example's prompt begins
                pairs.append((prompt, completion))
                prompt, completion = [], []
            (completion if is_scored else prompt).append(token)
        if prompt or completion:
            pairs.append((prompt, completion))
        if len(pairs) >= max_examples:
            break
    eos = tokenizer.eos_token_id
    decoded = []
    for prompt, completion in pairs[:max_examples]:
        prompt = [] if prompt == [eos] else prompt  # the stand-in for an empty prompt
        completion = completion[:-1] if completion and completion[-1] == eos else completion
        decoded.append((tokenizer.decode(prompt), tokenizer.decode(completion)))
    return decoded


def decode_documents(blocks: Blocks, tokenizer, max_documents: int = 2000) -> list[str]:
    """Texts back from rows (prepared data): split at EOS, padding dropped. A packed
    row's first text may be the tail of a document from the row before."""
    eos = tokenizer.eos_token_id
    texts, current = [], []
    for ids, mask in zip(blocks.input_ids, blocks.attention_mask):
        for token in ids[mask == 1].tolist():
            if token == eos:
                texts.append(current)
                current = []
            else:
                current.append(token)
        if blocks.documents == blocks.rows and current:  # padded: one document per row
            texts.append(current)
            current = []
        if len(texts) >= max_documents:
            break
    decoded = tokenizer.batch_decode([t for t in texts[:max_documents] if t])
    return [t.strip() for t in decoded if t.strip()]


# ----------------------------------------------------------------------------- tf.data


FIELDS = ("input_ids", "attention_mask", "labels")
# Rows held in the shuffle buffer when reading prepared shards: about 64 MB
# whatever the corpus size (512-token rows: 64 MB / (512 x 3 arrays x 4 bytes) = 10,922 rows).
SHUFFLE_BUFFER_BYTES = 64 * 2**20


def epoch_order(rows: int, seed: int, epoch: int) -> np.ndarray:
    """The row order of one epoch: a fixed function of (seed, epoch), so a resumed
    run sees exactly the batches the interrupted one would have."""
    return np.random.default_rng([seed, epoch]).permutation(rows)


def train_order(rows: int, global_batch: int, steps_per_epoch: int, total_steps: int, start_step: int,
                seed: int) -> np.ndarray:
    """Row indices of the global batches for steps start_step .. total_steps-1, concatenated.

    Each epoch shuffles the rows and keeps steps_per_epoch full batches
    (static shapes on every step, as TPUs and XLA require)."""
    per_epoch = steps_per_epoch * global_batch
    last_epoch = (total_steps - 1) // steps_per_epoch
    first_epoch = start_step // steps_per_epoch
    order = np.concatenate([epoch_order(rows, seed, e)[:per_epoch] for e in range(first_epoch, last_epoch + 1)])
    skip = (start_step - first_epoch * steps_per_epoch) * global_batch
    return order[skip: skip + (total_steps - start_step) * global_batch]


def _rows_dataset(blocks: Blocks, order: np.ndarray, rows_per_element: int):
    """Elements of `rows_per_element` rows gathered from in-memory blocks in `order`.

    A generator, not tf.constant / from_tensor_slices: the arrays stay numpy on
    the host instead of becoming graph constants (a GraphDef is capped at 2 GB,
    about 170M tokens, and the constant is a second and third copy in memory)."""
    import tensorflow as tf

    width = blocks.input_ids.shape[1]

    def rows():
        for start in range(0, len(order) - rows_per_element + 1, rows_per_element):
            index = order[start: start + rows_per_element]
            yield {k: getattr(blocks, k)[index] for k in FIELDS}

    signature = {k: tf.TensorSpec([rows_per_element, width], tf.int32) for k in FIELDS}
    return tf.data.Dataset.from_generator(rows, output_signature=signature)


def _pipeline_order(order: np.ndarray, global_batch: int, pipelines: int, pipeline: int) -> np.ndarray:
    """This input pipeline's rows of each global batch: replicas are numbered worker
    by worker, so worker i's replicas hold the i-th contiguous slice of every batch,
    and each replica gets the rows it would get from one global batch split in order."""
    per_pipeline = global_batch // pipelines
    return order.reshape(-1, pipelines, per_pipeline)[:, pipeline].reshape(-1)


def train_dataset(blocks: Blocks, global_batch: int, steps_per_epoch: int, total_steps: int,
                  start_step: int, seed: int):
    """Global batches (one device's view) for steps start_step .. total_steps-1."""
    import tensorflow as tf

    order = train_order(blocks.rows, global_batch, steps_per_epoch, total_steps, start_step, seed)
    return _rows_dataset(blocks, order, global_batch).prefetch(tf.data.AUTOTUNE)


@dataclasses.dataclass
class Shards:
    """Training rows prepared by `python -m trainer.prepare`: TFRecord files read in turn."""
    paths: list[str]
    rows: int
    block_size: int


def _shards_dataset(shards: Shards, per_replica_batch: int, local_replicas: int, pipelines: int,
                    pipeline: int, steps_per_epoch: int, total_steps: int, start_step: int, seed: int):
    """Per-replica batches read from shard files, one epoch after another.

    Each epoch: the files in a (seed, epoch) order; FILE sharding (each worker
    reads every N-th file) when there are at least as many files as workers,
    else DATA sharding (every worker reads all files and keeps every N-th row);
    files interleaved, rows shuffled in a bounded seeded buffer, and exactly
    steps_per_epoch batches per replica (a worker whose files hold fewer rows
    wraps around within the epoch), so every worker runs the same number of
    steps. The order is a function of (seed, epoch, worker): a resumed run
    skips the batches already trained in its epoch and sees what an
    uninterrupted one would have.
    """
    import tensorflow as tf

    from trainer import prepare

    files = shards.paths
    by_file = len(files) >= pipelines
    buffer_rows = max(1, SHUFFLE_BUFFER_BYTES // (shards.block_size * 4 * len(FIELDS)))
    elements_per_epoch = steps_per_epoch * local_replicas

    def epoch(e: int):
        ordered = [files[i] for i in np.random.default_rng([seed, e]).permutation(len(files))]
        ds = tf.data.Dataset.from_tensor_slices(ordered)
        if by_file:
            ds = ds.shard(pipelines, pipeline)
        ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=min(len(files), 8),
                           num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.map(lambda record: prepare.parse_example(record, shards.block_size), tf.data.AUTOTUNE)
        if not by_file:
            ds = ds.shard(pipelines, pipeline)
        ds = ds.shuffle(buffer_rows, seed=seed * 100_003 + e * 101 + pipeline)
        return ds.repeat().batch(per_replica_batch, drop_remainder=True).take(elements_per_epoch)

    first_epoch, last_epoch = start_step // steps_per_epoch, (total_steps - 1) // steps_per_epoch
    ds = epoch(first_epoch)
    for e in range(first_epoch + 1, last_epoch + 1):
        ds = ds.concatenate(epoch(e))
    skip = (start_step - first_epoch * steps_per_epoch) * local_replicas
    return ds.skip(skip).take((total_steps - start_step) * local_replicas)


def distributed_train_data(strategy, source, global_batch: int, steps_per_epoch: int, total_steps: int,
                           start_step: int, seed: int):
    """The training input for `strategy`: one pipeline per worker, per-replica batches.

    `source` is in-memory Blocks (rows gathered in the resumable global order
    above) or Shards (files, see _shards_dataset). Either way no row is a graph
    constant and every batch has the same static shape."""
    import tensorflow as tf

    def dataset_fn(context):
        per_replica = context.get_per_replica_batch_size(global_batch)
        local_replicas = context.num_replicas_in_sync // context.num_input_pipelines
        if isinstance(source, Shards):
            ds = _shards_dataset(source, per_replica, local_replicas, context.num_input_pipelines,
                                 context.input_pipeline_id, steps_per_epoch, total_steps, start_step, seed)
        else:
            order = train_order(source.rows, global_batch, steps_per_epoch, total_steps, start_step, seed)
            order = _pipeline_order(order, global_batch, context.num_input_pipelines, context.input_pipeline_id)
            ds = _rows_dataset(source, order, per_replica)
        return ds.prefetch(tf.data.AUTOTUNE)

    return strategy.distribute_datasets_from_function(dataset_fn)


def filled_rows(blocks: Blocks, global_batch: int, pad_token_id: int) -> Blocks:
    """All rows, then fully masked filler rows up to a multiple of global_batch.

    Filler rows have no attention and only IGNORE_INDEX labels, so they add
    nothing to the loss sums while every batch keeps the same static shape."""
    filler = (-blocks.rows) % global_batch
    width = blocks.input_ids.shape[1]
    return dataclasses.replace(
        blocks,
        input_ids=np.concatenate([blocks.input_ids, np.full([filler, width], pad_token_id, np.int32)]),
        attention_mask=np.concatenate([blocks.attention_mask, np.zeros([filler, width], np.int32)]),
        labels=np.concatenate([blocks.labels, np.full([filler, width], IGNORE_INDEX, np.int32)]))


def eval_dataset(blocks: Blocks, global_batch: int, pad_token_id: int):
    """All validation rows in global batches (one device's view), the last one filled."""
    import tensorflow as tf

    filled = filled_rows(blocks, global_batch, pad_token_id)
    return _rows_dataset(filled, np.arange(filled.rows), global_batch).prefetch(tf.data.AUTOTUNE)


def distributed_eval_data(strategy, blocks: Blocks, global_batch: int, pad_token_id: int):
    """Validation rows for `strategy`, each pipeline its slice of every global batch."""
    import tensorflow as tf

    filled = filled_rows(blocks, global_batch, pad_token_id)

    def dataset_fn(context):
        order = _pipeline_order(np.arange(filled.rows), global_batch, context.num_input_pipelines,
                                context.input_pipeline_id)
        per_replica = context.get_per_replica_batch_size(global_batch)
        return _rows_dataset(filled, order, per_replica).prefetch(tf.data.AUTOTUNE)

    return strategy.distribute_datasets_from_function(dataset_fn)
