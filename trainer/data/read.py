"""Reading: files to documents (or prompt/completion pairs), normalised, split into
training and validation before any packing."""

import dataclasses
import glob
import json
import os
import re
import unicodedata

import numpy as np

from trainer import filesystem, settings
from trainer.errors import UserError


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


HORIZONTAL_SPACE = re.compile(r"[^\S\n]+")  # spaces, tabs, NBSP... but not newlines
BLANK_LINES = re.compile(r"\n\s*\n(\s*\n)+")


def parse_normalize(spec: str) -> tuple[str, ...]:
    """--config.data.normalize="nfkc,whitespace" -> ("nfkc", "whitespace"), in settings.NORMALIZATIONS order."""
    steps = {s.strip().lower() for s in spec.split(",") if s.strip()}
    unknown = sorted(steps - set(settings.NORMALIZATIONS))
    if unknown:
        raise UserError(f"--config.data.normalize={spec!r}: unknown step(s) {', '.join(unknown)}; use a "
                        f"comma-separated subset of {','.join(settings.NORMALIZATIONS)}, or \"\" for none.")
    return tuple(step for step in settings.NORMALIZATIONS if step in steps)


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
    if settings.is_prompt_completion(data_config):
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
    if not settings.is_prompt_completion(data_config):
        return Documents(train, validation, source)
    return Documents([p + c for p, c in train], [p + c for p, c in validation], source, train, validation)


# ----------------------------------------------------------------------------- tokenizing


# ----------------------------------------------------------------------------- blocks


# ----------------------------------------------------------------------------- tf.data
