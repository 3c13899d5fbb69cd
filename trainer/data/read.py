"""Reading: files to documents (or prompt/completion pairs), normalised, split into
training and validation before any packing."""

import csv
import dataclasses
import glob
import json
import os
import re
import unicodedata
from typing import Iterator


from trainer import filesystem, settings
from trainer.data.keys import split_documents, split_test
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


# Bytes read at a time. Memory per file is one chunk plus the line (or document) being
# assembled, never the file: 100 MB of text decoded whole is 95 MB of str, or 381 MB
# once one character is not Latin-1 (CPython then stores 4 bytes per character).
CHUNK_BYTES = 1 << 20
BOM = b"\xef\xbb\xbf"
# data.text_separator's two modes; any other non-empty string is a literal separator.
# "" is the old spelling of "line": old configs and resumed runs keep their meaning.
LINE_MODES = ("line", "")
BLANK_LINE = "blank_line"
# One CSV cell may hold a whole document (a book): csv's own limit is 131,072 characters.
CSV_FIELD_LIMIT = 2**31 - 1


def _no_log(message: str) -> None:
    pass


def _empty(path: str) -> UserError:
    return UserError(f"{path} is empty: it holds no text to train on. Remove it from the file list or fill it.")


def _lines(path: str, log) -> Iterator[tuple[int, str]]:
    """(line number, text) of a UTF-8 file, streamed in CHUNK_BYTES.

    A line ends only at "\n" (a trailing "\r" is dropped, so "\r\n" files read the
    same): str.splitlines() would also break at U+2028, U+2029, U+0085, form feed and
    \x1c-\x1e, which JSON writers emit raw inside strings (ensure_ascii=False). A UTF-8
    byte order mark at the start is dropped, with a note. "\n" is never part of a
    multi-byte UTF-8 character, so splitting the bytes first is safe."""
    state = {"number": 0, "text": False}

    def decode(raw: bytes) -> str:
        state["number"] += 1
        if state["number"] == 1 and raw.startswith(BOM):
            raw = raw[len(BOM):]
            log(f"{path}: dropped the UTF-8 byte order mark (BOM) at its start.")
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        state["text"] = state["text"] or bool(raw.strip())
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise UserError(
                f"{path}, line {state['number']}: byte 0x{raw[e.start]:02x} is not valid UTF-8. Re-encode the "
                f"file as UTF-8, e.g. `iconv -f latin1 -t utf-8 {path} > fixed.txt`.") from None

    pieces = []  # of the line not yet ended
    with filesystem.open_bytes(path) as f:
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
            start = 0
            while (end := chunk.find(b"\n", start)) != -1:
                pieces.append(chunk[start:end])
                yield state["number"] + 1, decode(b"".join(pieces))
                pieces, start = [], end + 1
            pieces.append(chunk[start:])
    tail = b"".join(pieces)
    if tail:  # the last line, without a final "\n"
        yield state["number"] + 1, decode(tail)
    if not state["text"]:
        raise _empty(path)


def _starting_line(start: int, document: str) -> int:
    """The line of a document's first non-blank character, its text starting on line `start`."""
    return start + document.count("\n", 0, len(document) - len(document.lstrip()))


def _text_documents(path: str, separator: str, log) -> Iterator[tuple[int, str]]:
    """Non-blank documents of a plain-text file: one per line ("line", or ""), separated
    by blank lines ("blank_line": a line of only whitespace is blank), or split at a
    literal separator, which may span lines (e.g. "\n\n\n" or "<|endoftext|>")."""
    lines = _lines(path, log)
    if separator in LINE_MODES:
        yield from ((number, line) for number, line in lines if line.strip())
    elif separator == BLANK_LINE:
        start, paragraph = 0, []
        for number, line in lines:
            if line.strip():
                start = start if paragraph else number
                paragraph.append(line)
            elif paragraph:
                yield start, "\n".join(paragraph)
                paragraph = []
        if paragraph:
            yield start, "\n".join(paragraph)
    else:
        # A buffer holds the text since the last separator: the longest document, not the file.
        start, buffer = 1, ""
        for _, line in lines:
            searched = max(0, len(buffer) - len(separator) + 1)  # a separator may end in the new line
            buffer += line + "\n"
            while (at := buffer.find(separator, searched)) != -1:
                if buffer[:at].strip():
                    yield _starting_line(start, buffer[:at]), buffer[:at]
                start += buffer.count("\n", 0, at + len(separator))
                buffer, searched = buffer[at + len(separator):], 0
        if buffer.strip():
            yield _starting_line(start, buffer), buffer


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


def _json_records(path: str, fields: dict, log) -> Iterator[tuple[int, tuple[str, ...]]]:
    lines = _lines(path, log)
    for number, line in lines:
        if not line.strip():
            continue
        if line.lstrip().startswith("["):
            # A JSON array of records: parsed whole (the json module has no streaming
            # parser), so such a file must fit in memory; JSONL streams. Its records are
            # numbered, not lined.
            content = "\n".join([line] + [rest for _, rest in lines])
            try:
                records = json.loads(content)
            except json.JSONDecodeError as e:
                raise UserError(f"{path}, line {number - 1 + e.lineno}: not valid JSON ({e.msg}).") from None
            for i, record in enumerate(records):
                yield i + 1, _json_values(record, path, i + 1, fields)
            return
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}, line {number}: not valid JSON ({e.msg}). Each line of a JSONL "
                            "file must be one JSON object, e.g. {\"text\": \"...\"}.") from None
        yield number, _json_values(record, path, number, fields)


def _missing_column(path: str, role: str, field: str, columns: list) -> UserError:
    return UserError(f"{path}: no column '{field}' (columns: {columns}). Set {FIELD_FLAGS[role]} to the "
                     f"column that holds the {role}.")


def _csv_records(path: str, fields: dict, log) -> Iterator[tuple[int, tuple[str, ...]]]:
    """Every cell a string exactly as written: `007`, `1.50`, `NA` and `None` stay so
    (pandas would read 7.0, 1.5 and two empty strings). A quoted cell may hold line breaks."""
    csv.field_size_limit(max(csv.field_size_limit(), CSV_FIELD_LIMIT))
    reader = csv.reader(line + "\n" for _, line in _lines(path, log))
    header, read = None, 0  # read: lines the reader has consumed
    try:
        for row in reader:
            start, read = read + 1, reader.line_num
            if not row:  # a blank line
                continue
            if header is None:
                header = row
                for role, field in fields.items():
                    if field not in header:
                        raise _missing_column(path, role, field, header)
                columns = [header.index(field) for field in fields.values()]
                continue
            yield start, tuple(row[i] if i < len(row) else "" for i in columns)  # a short row: cells left empty
    except csv.Error as e:
        raise UserError(f"{path}, line {reader.line_num}: not valid CSV ({e}).") from None


def _parquet_records(path: str, fields: dict) -> Iterator[tuple[int, tuple[str, ...]]]:
    """Rows streamed a batch at a time, only the columns asked for. A column of another
    declared type (numbers, dates) is read in its string form; a null prompt or
    completion is "", a row whose text is null is skipped. Records are numbered by row."""
    import pyarrow as pa  # heavy import, only for Parquet
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    if filesystem.size(path) == 0:
        raise UserError(f"{path} is empty: it holds no text to train on.")
    with filesystem.open_bytes(path) as f:
        try:
            parquet = pq.ParquetFile(f)
        except pa.ArrowException as e:
            raise UserError(f"{path}: not a readable Parquet file ({e}).") from None
        names = parquet.schema_arrow.names
        for role, field in fields.items():
            if field not in names:
                raise _missing_column(path, role, field, names)

        def strings(batch, field: str) -> list:
            column = batch.column(field)
            if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
                try:
                    column = pc.cast(column, pa.string())
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                    raise UserError(f"{path}: column '{field}' is {column.type}, not text.") from None
            return column.to_pylist()

        row = 0
        for batch in parquet.iter_batches(columns=list(dict.fromkeys(fields.values()))):
            for values in zip(*(strings(batch, field) for field in fields.values())):
                row += 1
                if "text" in fields and values[0] is None:
                    continue
                yield row, tuple("" if v is None else v for v in values)


def iter_records(path: str, fields: dict, text_separator: str, log=None) -> Iterator[tuple[int, tuple[str, ...]]]:
    """The records of one file, streamed: (the line a record starts on, its values in
    `fields` order). Raw: neither normalised nor stripped.

    fields: {"text": name} or {"prompt": p, "completion": c}: JSON keys or columns of
    .jsonl/.ndjson/.json, .csv and .parquet files (for Parquet and JSON arrays, the
    record's number stands for its line). Plain text (.txt, .text, .md, no extension)
    ignores them: one value, a non-blank document, split by text_separator
    ("blank_line", "line" or "", or a literal separator). log(message) hears notes such
    as a dropped byte order mark. Errors name the file and line.

    One implementation of reading: read_documents and read_examples are built on it, and
    a pipeline engine calls it per file."""
    log = log or _no_log
    ext = os.path.splitext(path)[1].lower()
    if ext in TEXT_EXTENSIONS or ext == "":
        yield from ((number, (text,)) for number, text in _text_documents(path, text_separator, log))
    elif ext in JSON_EXTENSIONS:
        yield from _json_records(path, fields, log)
    elif ext == ".csv":
        yield from _csv_records(path, fields, log)
    elif ext == ".parquet":
        yield from _parquet_records(path, fields)
    else:
        raise UserError(f"{path}: unknown format '{ext}'. Use .txt, .jsonl/.json, .csv or .parquet.")


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


def file_documents(path: str, text_field: str, text_separator: str, normalize=(), log=None) -> Iterator[str]:
    """The non-blank documents of one file, streamed, normalised by the `normalize`
    steps (parse_normalize) when given, then stripped. Raises when the file has none."""
    found = False
    for _, (text,) in iter_records(path, {"text": text_field}, text_separator, log):
        text = (normalize_text(text, normalize) if normalize else text).strip()
        if text:
            found = True
            yield text
    if not found:
        raise UserError(f"{path} holds no non-blank text in field '{text_field}'.")


def read_documents(spec: str, flag: str, text_field: str, text_separator: str, normalize=(),
                   log=None) -> list[str]:
    """All non-blank documents of the files in `spec`, in file order (file_documents)."""
    return [text for path in expand_files(spec, flag)
            for text in file_documents(path, text_field, text_separator, normalize, log)]


def file_examples(path: str, prompt_field: str, completion_field: str, normalize=(),
                  log=None) -> Iterator[tuple[str, str]]:
    """(prompt, completion) records of one JSONL/JSON/CSV/Parquet file, streamed.

    Not stripped: a prompt's trailing separator ("Answer:", "\n\n###\n\n") and a
    completion's leading space are what the model is trained and prompted with. A
    record whose prompt and completion are both blank is skipped; an empty
    completion is kept (the doctor counts them)."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in JSON_EXTENSIONS + TABLE_EXTENSIONS:
        raise UserError(f"{path}: prompt/completion data (--config.data.prompt_field and "
                        "--config.data.completion_field) must be .jsonl/.json, .csv or .parquet records; "
                        f"'{ext or 'no extension'}' holds free text. Unset both fields to train on it as "
                        "free text.")
    found = False
    fields = {"prompt": prompt_field, "completion": completion_field}
    for _, (prompt, completion) in iter_records(path, fields, "", log):
        if normalize:
            prompt, completion = normalize_text(prompt, normalize), normalize_text(completion, normalize)
        if prompt.strip() or completion.strip():
            found = True
            yield prompt, completion
    if not found:
        raise UserError(f"{path} holds no record with a non-blank '{prompt_field}' or '{completion_field}'.")


def read_examples(spec: str, flag: str, prompt_field: str, completion_field: str,
                  normalize=(), log=None) -> list[tuple[str, str]]:
    """(prompt, completion) records of the files in `spec`, in file order (file_examples)."""
    return [pair for path in expand_files(spec, flag)
            for pair in file_examples(path, prompt_field, completion_field, normalize, log)]


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
    # The test split (data.test_files, or data.test_fraction of the training files): scored
    # once, on the exported model, and used for nothing else.
    test: list[str] = dataclasses.field(default_factory=list)
    test_source: str = "none"  # "files", "split", "prepared" or "none"
    test_pairs: list[tuple[str, str]] | None = None


def load_documents(data_config, seed: int, log=None) -> Documents:
    """log(message) hears the readers' notes (e.g. a dropped byte order mark)."""
    normalize = parse_normalize(data_config.normalize)
    if settings.is_prompt_completion(data_config):
        def read(spec, flag):
            return read_examples(spec, flag, data_config.prompt_field, data_config.completion_field, normalize,
                                 log)
    else:
        def read(spec, flag):
            return read_documents(spec, flag, data_config.text_field, data_config.text_separator, normalize,
                                  log)
    train = read(data_config.train_files, "--config.data.train_files")
    if data_config.test_files:
        test, test_source = read(data_config.test_files, "--config.data.test_files"), "files"
    else:
        train, test = split_test(train, data_config.test_fraction, seed)
        test_source = "split" if test else "none"
    if data_config.validation_files:
        validation, source = read(data_config.validation_files, "--config.data.validation_files"), "files"
    else:
        train, validation = split_documents(train, data_config.validation_fraction,
                                            data_config.validation_max_examples, seed)
        source = "split"
    if not settings.is_prompt_completion(data_config):
        return Documents(train, validation, source, test=test, test_source=test_source)
    return Documents([p + c for p, c in train], [p + c for p, c in validation], source, train, validation,
                     [p + c for p, c in test], test_source, test)


# ----------------------------------------------------------------------------- tokenizing


# ----------------------------------------------------------------------------- blocks


# ----------------------------------------------------------------------------- tf.data
