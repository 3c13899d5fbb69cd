"""Reading real files right: CSV values as written, lines that end only at \\n, a BOM
dropped with a note, plain-text document separators, one streaming record reader
(iter_records) under read_documents/read_examples, and the doctor's hard-wrapping check."""

import json
import os
import random
import textwrap

import pytest

from configs import default
from trainer import data, filesystem, settings
from trainer.data import read
from trainer.diagnosis import audit
from trainer.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BOM = b"\xef\xbb\xbf"


def records(path, fields=None, separator="blank_line", log=None):
    return list(data.iter_records(str(path), fields or {"text": "text"}, separator, log))


@pytest.fixture
def whole_file_reads_fail(monkeypatch):
    """Streaming readers never load a file whole (JSON arrays aside)."""
    def refuse(path):
        raise AssertionError(f"{path} was read whole")
    monkeypatch.setattr(filesystem, "read_bytes", refuse)
    monkeypatch.setattr(filesystem, "read_text", refuse)


# ----------------------------------------------------------------------------- CSV and Parquet


def test_csv_values_arrive_exactly_as_written(tmp_path, whole_file_reads_fail):
    path = tmp_path / "pairs.csv"
    path.write_bytes(b'prompt,completion\r\n'
                     b'Code:,007\r\n'
                     b'Answer:,42\r\n'
                     b'Price:,1.50\r\n'
                     b'Missing:,NA\r\n'
                     b'Null:,None\r\n'
                     b'"Two\nlines:"," a, b\nand c"\r\n'
                     b'Empty:,\r\n')
    assert data.read_examples(str(path), "f", "prompt", "completion") == [
        ("Code:", "007"), ("Answer:", "42"), ("Price:", "1.50"), ("Missing:", "NA"), ("Null:", "None"),
        ("Two\nlines:", " a, b\nand c"), ("Empty:", "")]
    # The line each record starts on; a quoted field may hold line breaks.
    assert [line for line, _ in records(path, {"prompt": "prompt", "completion": "completion"})] == \
        [2, 3, 4, 5, 6, 7, 10]


def test_csv_missing_column_names_the_file_the_columns_and_the_flag(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("id,body\n1,hello\n")
    with pytest.raises(UserError, match=r"t.csv: no column 'text' \(columns: \['id', 'body'\]\). Set "
                                        r"--config.data.text_field to the column that holds the text"):
        data.read_documents(str(path), "f", "text", "blank_line")


def test_parquet_streams_and_gives_typed_columns_their_string_form(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "p.parquet"
    table = pa.table({"q": ["a", None, "c", "d"], "a": pa.array([7, 42, None, 150], pa.int64()),
                      "text": ["one", None, " ", "four"]})
    pq.write_table(table, path, row_group_size=2)
    batches = []
    real = pq.ParquetFile.iter_batches

    def spy(self, *args, **kwargs):
        batches.append(kwargs.get("columns"))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "iter_batches", spy)
    assert records(path, {"prompt": "q", "completion": "a"}) == [
        (1, ("a", "7")), (2, ("", "42")), (3, ("c", "")), (4, ("d", "150"))]
    assert batches == [["q", "a"]]  # only the columns asked for
    assert [values for _, values in records(path)] == [("one",), (" ",), ("four",)]  # a null text is skipped
    assert data.read_documents(str(path), "f", "text", "blank_line") == ["one", "four"]
    with pytest.raises(UserError, match=r"p.parquet: no column 'body' \(columns: \['q', 'a', 'text'\]\)"):
        records(path, {"text": "body"})


# ----------------------------------------------------------------------------- lines


# Characters str.splitlines() breaks at that are not \n: JSON writers emit them raw.
NOT_LINE_ENDS = "\u2028\u2029\u0085\x0b\x0c\x1c\x1d\x1e"


def test_jsonl_and_text_lines_end_only_at_newline(tmp_path, whole_file_reads_fail):
    texts = [f"before{c}after" for c in NOT_LINE_ENDS]
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_bytes("".join(json.dumps({"text": t}, ensure_ascii=False) + "\r\n" for t in texts).encode())
    assert data.read_documents(str(jsonl), "f", "text", "line") == texts
    text = tmp_path / "a.txt"
    text.write_bytes("\n".join(texts).encode() + b"\r\nlast\r\n")
    assert data.read_documents(str(text), "f", "text", "line") == texts + ["last"]
    assert data.read_documents(str(text), "f", "text", "") == texts + ["last"]  # "" is the old "line"


def test_a_bom_is_dropped_with_one_note_per_file(tmp_path, whole_file_reads_fail):
    files = {"a.txt": b"first doc\n\nsecond doc\n", "b.jsonl": b'{"text": "json doc"}\n{"text": "two"}\n',
             "c.csv": b"text\ncsv doc\nmore\n"}
    for name, content in files.items():
        (tmp_path / name).write_bytes(BOM + content)
    notes = []
    spec = ",".join(str(tmp_path / name) for name in files)
    assert data.read_documents(spec, "f", "text", "blank_line", log=notes.append) == [
        "first doc", "second doc", "json doc", "two", "csv doc", "more"]
    assert len(notes) == 3 and all("byte order mark" in n for n in notes)
    assert [name for name in files if any(name in n for n in notes)] == list(files)


def test_a_bom_before_a_json_array(tmp_path):
    path = tmp_path / "a.json"
    path.write_bytes(BOM + json.dumps([{"text": "one"}, {"text": "two"}]).encode())
    notes = []
    assert data.read_documents(str(path), "f", "text", "blank_line", log=notes.append) == ["one", "two"]
    assert len(notes) == 1


def test_bad_bytes_name_the_file_and_line_while_streaming(tmp_path, whole_file_reads_fail, monkeypatch):
    monkeypatch.setattr(read, "CHUNK_BYTES", 5)  # lines cross chunk boundaries
    path = tmp_path / "a.txt"
    path.write_bytes(b"fine line\n\nanother fine line\ncaf\xe9\n")
    with pytest.raises(UserError, match=r"a.txt, line 4: byte 0xe9 is not valid UTF-8. Re-encode the file as "
                                        r"UTF-8, e.g. `iconv -f latin1 -t utf-8 .*a.txt > fixed.txt`"):
        data.read_documents(str(path), "f", "text", "blank_line")
    for content in (b"", b" \n\n", BOM):
        path.write_bytes(content)
        with pytest.raises(UserError, match="a.txt is empty"):
            data.read_documents(str(path), "f", "text", "blank_line")


# ----------------------------------------------------------------------------- plain-text documents


def test_default_separates_plain_text_documents_at_blank_lines():
    config = default.get_config()
    assert config.data.text_separator == "blank_line"
    config.data.train_files = "data/train.txt"  # the one field without a default
    settings.check(config)
    for value in ("line", "", "\n\n\n", "<|endoftext|>"):
        config.data.text_separator = value
        settings.check(config)
    config.data.text_separator = "blank_lines"  # a misspelt mode would silently be a separator inside words
    with pytest.raises(UserError, match="--config.data.text_separator='blank_lines' is not valid: use blank_line"):
        settings.check(config)


def test_text_separators_stream(tmp_path, whole_file_reads_fail, monkeypatch):
    monkeypatch.setattr(read, "CHUNK_BYTES", 7)
    path = tmp_path / "book.txt"
    path.write_bytes(b"It was a dark\r\nand stormy night.\r\n \t\r\n\r\nThe end\ncame soon.\n\n\n---\nCoda\n")
    assert records(path, separator="blank_line") == [
        (1, ("It was a dark\nand stormy night.",)), (5, ("The end\ncame soon.",)), (9, ("---\nCoda",))]
    assert [values for _, values in records(path, separator="line")] == [
        ("It was a dark",), ("and stormy night.",), ("The end",), ("came soon.",), ("---",), ("Coda",)]
    assert [line for line, _ in records(path, separator="line")] == [1, 2, 5, 6, 9, 10]
    assert data.read_documents(str(path), "f", "text", "\n---\n") == [
        "It was a dark\nand stormy night.\n \t\n\nThe end\ncame soon.", "Coda"]
    assert records(path, separator="\n---\n")[1][0] == 10
    assert data.read_documents(str(path), "f", "text", "night.") == [
        "It was a dark\nand stormy", "The end\ncame soon.\n\n\n---\nCoda"]


# ----------------------------------------------------------------------------- iter_records


def test_iter_records_gives_start_lines_and_values_in_field_order(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text('{"a": "one", "q": "Q1"}\n\n{"a": "two", "q": "Q2"}\n')
    assert records(path, {"prompt": "q", "completion": "a"}) == [(1, ("Q1", "one")), (3, ("Q2", "two"))]
    array = tmp_path / "pairs.json"
    array.write_text(json.dumps([{"q": "Q1", "a": "one"}]))  # a JSON array: loaded whole
    assert records(array, {"prompt": "q", "completion": "a"}) == [(1, ("Q1", "one"))]
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "ok"}\n{"text": "cut\n')
    with pytest.raises(UserError, match=r"broken.jsonl, line 2: not valid JSON"):
        records(broken)
    with pytest.raises(UserError, match=r"x.xml: unknown format '.xml'"):
        records(tmp_path / "x.xml")


# ----------------------------------------------------------------------------- the hard-wrapping check

PROSE = [
    "The river rose overnight and carried away the old wooden bridge near the mill.",
    "My grandmother kept her recipes in a tin box that smelled of cinnamon and cloves.",
    "Researchers measured the glacier's retreat using photographs taken a century apart.",
    "A small bakery on the corner sells bread that is still warm at dawn.",
    "He forgot his umbrella, so he waited under the station roof until the storm passed.",
    "The committee postponed its decision because two members were travelling abroad.",
    "Owls hunt mostly by sound, tilting their heads to locate mice beneath the snow.",
    "She repaired the bicycle chain with pliers borrowed from a neighbour.",
    "Most of the village gathered in the square to watch the lanterns drift upward.",
    "Learning a second language changes how you notice the grammar of your first.",
    "The orchestra tuned for several minutes while latecomers searched for their seats.",
    "Frost had painted delicate ferns across every window of the farmhouse.",
    "Engineers tested the new pump at twice its rated pressure without a single leak.",
    "Children collected smooth pebbles along the shore and sorted them by colour.",
    "Nobody expected the quiet librarian to win the regional chess tournament.",
    "Heavy clouds gathered over the hills, and the farmers hurried to bring in the hay.",
    "A good editor cuts the sentences that the writer loved most.",
    "The ferry crossing took longer than usual because of fog in the channel.",
    "Bees communicate the direction of flowers through a dance performed inside the hive.",
    "After the power cut, we played cards by candlelight and told ghost stories.",
]


def paragraphs(n, seed=0):
    rng = random.Random(seed)
    return [" ".join(rng.sample(PROSE, rng.randint(3, 8))) for _ in range(n)]


def gutenberg(n=80):
    """Paragraphs hard-wrapped at 70 columns, a blank line between them, as Project Gutenberg's texts."""
    return "\n\n".join(textwrap.fill(p, width=70) for p in paragraphs(n))


# Public-domain verse: Shakespeare's sonnets 18 and 116, and Milton's blank verse (few
# line-end stops, but every line starts with a capital).
VERSE = ["""Shall I compare thee to a summer's day?
Thou art more lovely and more temperate:
Rough winds do shake the darling buds of May,
And summer's lease hath all too short a date;
Sometime too hot the eye of heaven shines,
And often is his gold complexion dimm'd;
And every fair from fair sometime declines,
By chance or nature's changing course untrimm'd;
But thy eternal summer shall not fade,
Nor lose possession of that fair thou ow'st;
Nor shall Death brag thou wander'st in his shade,
When in eternal lines to time thou grow'st:
So long as men can breathe or eyes can see,
So long lives this, and this gives life to thee.""", """Let me not to the marriage of true minds
Admit impediments. Love is not love
Which alters when it alteration finds,
Or bends with the remover to remove:
O no! it is an ever-fixed mark
That looks on tempests and is never shaken;
It is the star to every wandering bark,
Whose worth's unknown, although his height be taken.
Love's not Time's fool, though rosy lips and cheeks
Within his bending sickle's compass come;
Love alters not with his brief hours and weeks,
But bears it out even to the edge of doom.
If this be error and upon me proved,
I never writ, nor no man ever loved.""", """Of Man's first disobedience, and the fruit
Of that forbidden tree whose mortal taste
Brought death into the World, and all our woe,
With loss of Eden, till one greater Man
Restore us, and regain the blissful Seat,
Sing, Heavenly Muse, that, on the secret top
Of Oreb, or of Sinai, didst inspire
That shepherd who first taught the chosen seed
In the beginning how the heavens and earth
Rose out of Chaos: or, if Sion hill
Delight thee more, and Siloa's brook that flowed
Fast by the oracle of God, I thence
Invoke thy aid to my adventurous song,
That with no middle flight intends to soar
Above the Aonian mount, while it pursues
Things unattempted yet in prose or rhyme."""]


def wrapping_findings(documents, separator=None):
    return audit.wrapping_findings(audit.wrapping_stats(documents), separator)


def test_hard_wrapped_text_is_found_in_either_mode(tmp_path):
    path = tmp_path / "book.txt"
    path.write_text(gutenberg())
    for separator in ("blank_line", "line"):
        documents = data.read_documents(str(path), "f", "text", separator)
        stats = audit.wrapping_stats(documents)
        assert stats["lines"] >= 200 and 60 <= stats["width"] <= 70, stats
        [finding] = audit.wrapping_findings(stats, separator)
        assert finding.check == "wrapping" and finding.severity == "warning"
        assert f"~{stats['width']} characters" in finding.figure and "%" in finding.figure
        assert "newline" in finding.why and "fmt" in finding.fix
        if separator == "line":
            assert "EOS" in finding.why and "--config.data.text_separator=blank_line" in finding.fix
    # Through the whole audit too (the doctor's path).
    findings, stats = audit.audit_corpus(data.read_documents(str(path), "f", "text", "blank_line"), [], None,
                                         block_size=64, batching="packed", text_separator="blank_line")
    assert "wrapping" in [f.check for f in findings if f.severity == "warning"]
    assert stats["wrapping"]["lines"] >= 200


def test_the_wrapping_check_stays_quiet_on_ordinary_text(tmp_path):
    sample = [json.loads(line)["text"] for line in open(os.path.join(ROOT, "data", "sample", "corpus.jsonl"))]
    one_line_paragraphs = "\n\n".join(paragraphs(80))
    code = open(read.__file__).read() + open(audit.__file__).read()
    quotes = [f"{i}. {s.split(',')[0].rstrip('.')}" for i, s in enumerate(PROSE * 15)]
    shopping = ["- " + w for w in "eggs milk bread butter flour sugar apples pears tea coffee".split()] * 30
    corpora = {"sample": {"blank_line": sample}, "quotes": {"line": quotes}, "list": {"line": shopping}}
    for name, text in (("paragraphs", one_line_paragraphs), ("code", code), ("verse", "\n\n".join(VERSE * 8))):
        path = tmp_path / f"{name}.txt"
        path.write_text(text)
        corpora[name] = {s: data.read_documents(str(path), "f", "text", s) for s in ("blank_line", "line")}
    for name, modes in corpora.items():
        for separator, documents in modes.items():
            assert wrapping_findings(documents, separator) == [], (name, separator, audit.wrapping_stats(documents))


# ----------------------------------------------------------------------------- gs://


def test_files_on_gcs_stream_as_local_ones(gcs_server, tmp_path, monkeypatch):
    import uuid

    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.gcs_server import BUCKET

    monkeypatch.setattr(read, "CHUNK_BYTES", 16)  # several ranged reads per object
    pq.write_table(pa.table({"text": ["parquet one", None, "parquet two"]}), tmp_path / "d.parquet",
                   row_group_size=2)
    files = {"a.txt": BOM + b"para one\nstill one\n\npara two\r\n", "b.jsonl": b'{"text": "json \xe2\x80\xa8 one"}\n',
             "c.csv": b'id,text\n1,"csv\nrow"\n', "d.parquet": (tmp_path / "d.parquet").read_bytes()}
    base = f"gs://{BUCKET}/read-{uuid.uuid4().hex[:8]}"
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
        filesystem.write_bytes(f"{base}/{name}", content)
    with filesystem.open_bytes(f"{base}/b.jsonl") as f:
        assert f.read(8) == b'{"text":' and f.read() == files["b.jsonl"][8:]
    local = data.read_documents(",".join(str(tmp_path / n) for n in files), "f", "text", "blank_line")
    assert local == ["para one\nstill one", "para two", "json \u2028 one", "csv\nrow", "parquet one", "parquet two"]
    notes = []
    remote = data.read_documents(f"{base}/*.txt,{base}/*.jsonl,{base}/*.csv,{base}/*.parquet", "f", "text",
                                 "blank_line", log=notes.append)
    assert remote == local and len(notes) == 1
