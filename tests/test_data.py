"""Reading, splitting, packing and padding on hand-made examples."""

import json
import os

import numpy as np
import pytest

from configs import default
from trainer import data
from trainer.data import IGNORE_INDEX
from trainer.errors import UserError

EOS = 0


def docs(*lengths):
    """Documents of distinct ids 1.. with EOS appended, like data.tokenize returns."""
    out, next_id = [], 1
    for n in lengths:
        out.append(np.array(list(range(next_id, next_id + n)) + [EOS], np.int32))
        next_id += n
    return out


def test_packing_concatenates_with_eos_and_drops_only_the_tail():
    blocks = data.pack_blocks(docs(3, 4, 2), block_size=4)  # 4 + 5 + 3 = 12 tokens
    np.testing.assert_array_equal(blocks.input_ids, [[1, 2, 3, EOS], [4, 5, 6, 7], [EOS, 8, 9, EOS]])
    np.testing.assert_array_equal(blocks.labels, blocks.input_ids)  # not shifted: the loss shifts once
    assert blocks.attention_mask.min() == 1
    assert (blocks.tokens, blocks.dropped_tokens, blocks.supervised_tokens) == (12, 0, 9)
    blocks = data.pack_blocks(docs(3, 4, 3), block_size=4)  # 13 tokens: one dropped
    assert (blocks.rows, blocks.dropped_tokens) == (3, 1)


def test_packing_keeps_the_validation_tail_masked():
    blocks = data.pack_blocks(docs(3, 4, 3), block_size=4, pad_token_id=EOS, keep_tail=True)
    assert blocks.rows == 4 and blocks.dropped_tokens == 0
    np.testing.assert_array_equal(blocks.input_ids[3], [EOS, EOS, EOS, EOS])  # last real EOS + 3 pads
    np.testing.assert_array_equal(blocks.attention_mask[3], [1, 0, 0, 0])
    np.testing.assert_array_equal(blocks.labels[3], [EOS, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX])


def test_padding_masks_padding_but_keeps_the_real_eos_supervised():
    # The pad id IS the EOS id, as with GPT-2: masking must go by position, not by id.
    blocks = data.pad_blocks(docs(2, 5), block_size=4, pad_token_id=EOS)
    np.testing.assert_array_equal(blocks.input_ids, [[1, 2, EOS, EOS], [3, 4, 5, 6]])
    np.testing.assert_array_equal(blocks.attention_mask, [[1, 1, 1, 0], [1, 1, 1, 1]])
    np.testing.assert_array_equal(blocks.labels, [[1, 2, EOS, IGNORE_INDEX], [3, 4, 5, 6]])
    assert (blocks.truncated_documents, blocks.truncated_tokens) == (1, 2)  # 6 tokens into 4
    assert blocks.supervised_tokens == 2 + 3  # labels[:, 1:] that are not ignored


def test_split_is_by_document_before_packing_and_seeded():
    documents = [f"document number {i} " + "word " * (i % 7) for i in range(50)]
    train, val = data.split_documents(documents, fraction=0.2, max_examples=1000, seed=3)
    assert len(val) == 10 and len(train) == 40
    assert set(train).isdisjoint(val) and set(train) | set(val) == set(documents)
    assert data.split_documents(documents, 0.2, 1000, seed=3) == (train, val)
    assert data.split_documents(documents, 0.2, 1000, seed=4)[1] != val
    assert len(data.split_documents(documents, 0.5, 7, seed=3)[1]) == 7  # max_examples caps it


def test_split_then_pack_puts_no_validation_token_in_training_blocks():
    # Each document uses its own ids, so any leak across the split would show up as shared ids.
    token_docs = docs(*([5] * 40))
    keyed = {f"doc{i}": t for i, t in enumerate(token_docs)}
    train, val = data.split_documents(list(keyed), 0.25, 1000, seed=0)
    train_blocks = data.pack_blocks([keyed[k] for k in train], 8)
    val_blocks = data.pack_blocks([keyed[k] for k in val], 8, keep_tail=True)
    train_ids = set(train_blocks.input_ids.ravel()) - {EOS}
    val_ids = set(val_blocks.input_ids[val_blocks.attention_mask == 1].ravel()) - {EOS}
    assert val_ids and train_ids.isdisjoint(val_ids)


def test_training_order_resumes_exactly():
    blocks = data.pack_blocks(docs(*([7] * 40)), block_size=4)  # 80 rows
    full = [b["input_ids"].numpy() for b in data.train_dataset(blocks, 8, 10, 25, 0, seed=1)]
    resumed = [b["input_ids"].numpy() for b in data.train_dataset(blocks, 8, 10, 25, 13, seed=1)]
    assert len(full) == 25 and len(resumed) == 12
    for a, b in zip(full[13:], resumed):
        np.testing.assert_array_equal(a, b)
    epoch0 = np.concatenate(full[:10])
    assert sorted(map(tuple, epoch0)) == sorted(map(tuple, blocks.input_ids))  # each row once per epoch
    assert not np.array_equal(full[0], full[10])  # reshuffled next epoch


def test_eval_dataset_fills_the_last_batch_with_masked_rows():
    blocks = data.pack_blocks(docs(*([7] * 10)), block_size=4)  # 20 rows
    batches = list(data.eval_dataset(blocks, 8, EOS))
    assert len(batches) == 3 and all(b["input_ids"].shape == (8, 4) for b in batches)
    assert int((batches[-1]["labels"].numpy() != IGNORE_INDEX).sum()) == 4 * 4
    assert int(batches[-1]["attention_mask"].numpy()[4:].sum()) == 0


def test_readers(tmp_path):
    (tmp_path / "lines.txt").write_text("first line\n\n second line \n")
    (tmp_path / "paras.txt").write_text("para one\nstill one\n\npara two")
    (tmp_path / "a.jsonl").write_text(json.dumps({"body": "json line"}) + "\n\n")
    (tmp_path / "b.json").write_text(json.dumps([{"body": "array one"}, {"body": "array two"}]))
    (tmp_path / "c.csv").write_text("id,body\n1,csv row\n2,\"quoted, row\"\n")
    assert data.read_documents(str(tmp_path / "lines.txt"), "f", "text", "") == ["first line", "second line"]
    assert data.read_documents(str(tmp_path / "paras.txt"), "f", "text", "\n\n") == [
        "para one\nstill one", "para two"]
    assert data.read_documents(f"{tmp_path}/a.jsonl,{tmp_path}/b.json", "f", "body", "") == [
        "json line", "array one", "array two"]
    assert data.read_documents(str(tmp_path / "c.csv"), "f", "body", "") == ["csv row", "quoted, row"]
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["parquet one", "parquet two"]}), tmp_path / "d.parquet")
    assert data.read_documents(str(tmp_path / "*.parquet"), "f", "body", "") == ["parquet one", "parquet two"]


def test_tokenize_appends_eos(tiny_model_dir):
    from trainer import model as model_lib

    tokenizer = model_lib.load_tokenizer(tiny_model_dir)
    ids = data.tokenize(["river stone", "lamp"], tokenizer)
    assert [int(x[-1]) for x in ids] == [tokenizer.eos_token_id] * 2
    assert tokenizer.decode(ids[0][:-1]) == "river stone"


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b'{"text": "ok"}\n{"text": broken}\n', "line 2: not valid JSON"),
    (b'{"text": "ok"}\n{"body": "no text"}\n', "line 2: no field 'text'"),
    (b'{"text": "ok"}\n{"text": "caf\xe9"}\n', "line 2: byte 0xe9 is not valid UTF-8"),
])
def test_bad_files_name_the_file_and_line(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(UserError, match=message) as info:
        data.read_documents(str(path), "--config.data.train_files", "text", "")
    assert str(path) in str(info.value)


def test_missing_file_names_the_flag(tmp_path):
    config = default.get_config()
    config.data.train_files = str(tmp_path / "nope.jsonl")
    with pytest.raises(UserError, match=r"--config.data.train_files: no file matches .*nope.jsonl"):
        data.load_documents(config.data, seed=0)


def test_token_cache_skips_tokenizing_the_same_documents_again(tmp_path, tiny_model_dir, monkeypatch):
    from trainer import model as model_lib

    tokenizer = model_lib.load_tokenizer(tiny_model_dir)
    documents = ["the river ran on", "a second document", ""]
    first = data.tokenize(documents, tokenizer, cache_dir=str(tmp_path))
    entries = os.listdir(tmp_path / "tokens")
    assert len(entries) == 1 and entries[0].endswith(".npz")

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("tokenized again although the cache holds these documents")

    monkeypatch.setattr(type(tokenizer), "__call__", no_tokenizing)
    again = data.tokenize(documents, tokenizer, cache_dir=str(tmp_path))
    assert [a.tolist() for a in again] == [f.tolist() for f in first]
    # Other text, or the same words split into documents differently, is a miss.
    with pytest.raises(AssertionError, match="tokenized again"):
        data.tokenize(["the river ran on a second document", ""], tokenizer, cache_dir=str(tmp_path))
    monkeypatch.undo()
    # A damaged entry (a disk error, a copy cut short) is tokenized again and replaced.
    path = tmp_path / "tokens" / entries[0]
    path.write_bytes(path.read_bytes()[:20])
    repaired = data.tokenize(documents, tokenizer, cache_dir=str(tmp_path))
    assert [a.tolist() for a in repaired] == [f.tolist() for f in first]
    with np.load(path) as cached:
        assert int(cached["ends"][-1]) == sum(len(f) for f in first)


def test_token_cache_on_gcs_and_auto_beside_a_cloud_run(gcs_server, tiny_model_dir, monkeypatch):
    """A cloud job's workers and restarts share no disk: "auto" puts the cache beside a gs://
    run, where a second process (another worker, a restarted VM) reads it back."""
    from tests.gcs_server import BUCKET
    from trainer import filesystem, model as model_lib, settings

    config = default.get_config()
    config.data.train_files = "data/sample/corpus.jsonl"
    config.output_dir = f"gs://{BUCKET}/runs/cached"
    assert settings.resolve(config).data.cache_dir == f"gs://{BUCKET}/runs/cached/token-cache"
    config.output_dir = "runs/local"
    assert settings.resolve(config).data.cache_dir == os.path.expanduser("~/.cache/tunewell")

    tokenizer = model_lib.load_tokenizer(tiny_model_dir)
    cache = f"gs://{BUCKET}/runs/cached/token-cache"
    documents = ["the river ran on", "a second document"]
    first = data.tokenize(documents, tokenizer, cache_dir=cache)
    assert len(filesystem.listdir(filesystem.join(cache, "tokens"))) == 1

    def no_tokenizing(*args, **kwargs):
        raise AssertionError("tokenized again although the cache holds these documents")

    monkeypatch.setattr(type(tokenizer), "__call__", no_tokenizing)
    again = data.tokenize(documents, tokenizer, cache_dir=cache)
    assert [a.tolist() for a in again] == [f.tolist() for f in first]


def test_normalization_steps_and_their_order(tmp_path):
    messy = "Ｆｕｌｌ\twidth  \x07bell\u00a0nbsp  \n\n\n\nﬁne  \nEnd"
    steps = data.parse_normalize("whitespace, NFKC,control")
    assert steps == ("control", "nfkc", "whitespace")  # always applied in NORMALIZATIONS order
    assert data.normalize_text(messy, steps) == "Full width bell nbsp\n\nfine\nEnd"
    assert data.normalize_text("A\tB", ("lowercase",)) == "a\tb"
    assert data.normalize_text("def f():\n    x  =\t1  \n\treturn x", ("whitespace",)) == \
        "def f():\n    x = 1\n\treturn x"  # indentation is content
    assert data.normalize_text(messy, ()) == messy
    with pytest.raises(UserError, match="unknown step.*nfd"):
        data.parse_normalize("nfkc,nfd")
    (tmp_path / "a.jsonl").write_text(json.dumps({"text": "Ｈｉ  there"}) + "\n" + json.dumps({"text": "\x07 "}) + "\n")
    assert data.read_documents(str(tmp_path / "a.jsonl"), "f", "text", "", steps) == ["Hi there"]  # blank after
    config = default.get_config()
    config.data.train_files = str(tmp_path / "a.jsonl")
    config.data.validation_files = str(tmp_path / "a.jsonl")
    config.data.normalize = "nfkc"
    assert data.load_documents(config.data, seed=0).train == ["Hi  there", "\x07"]  # nfkc only
    from trainer import settings
    config.data.normalize = "nfkc,lower"
    with pytest.raises(UserError, match="--config.data.normalize='nfkc,lower' is not valid"):
        settings.check(config)


# ----------------------------------------------------------------------------- prompt/completion

def ids(*values):
    return np.array(values, np.int32)


# Three examples: prompt ids 1x, completion ids 2x/3x ending in EOS.
PROMPTS = [ids(11, 12, 13), ids(14), ids(15, 16)]
COMPLETIONS = [ids(21, 22, EOS), ids(31, EOS), ids(41, 42, 43, EOS)]


@pytest.mark.parametrize("packed", [False, True])
def test_prompt_tokens_carry_ignore_and_completion_and_eos_are_scored(packed):
    blocks = data.example_blocks(PROMPTS, COMPLETIONS, block_size=10, pad_token_id=EOS, packed=packed)
    scored = set()
    for row_ids, row_labels, row_mask in zip(blocks.input_ids, blocks.labels, blocks.attention_mask):
        for token, label, on in zip(row_ids, row_labels, row_mask):
            if not on:
                assert label == IGNORE_INDEX  # padding
            elif 10 < token < 20:
                assert label == IGNORE_INDEX  # every prompt token
            else:
                assert label == token  # completion tokens and their EOS, unshifted (the loss shifts)
                scored.add(int(token))
    assert scored == {21, 22, 31, 41, 42, 43, EOS}
    assert blocks.supervised_tokens == 3 + 2 + 4  # every completion token and EOS, nothing else
    if packed:  # whole examples, never split: 6 + 3 tokens fit in 10, the third (6) starts a row
        np.testing.assert_array_equal(blocks.input_ids, [[11, 12, 13, 21, 22, EOS, 14, 31, EOS, EOS],
                                                         [15, 16, 41, 42, 43, EOS, EOS, EOS, EOS, EOS]])
        np.testing.assert_array_equal(blocks.attention_mask[0], [1] * 9 + [0])
        assert blocks.rows == 2
    else:
        assert blocks.rows == 3


def test_packed_examples_never_score_across_a_boundary():
    """The token after an example's EOS is the next example's first prompt token: it is
    never a label, so nothing is scored as the continuation of another example; and no
    completion is scored without its own prompt before it in the row."""
    rng = np.random.default_rng(0)
    prompts = [np.arange(100, 100 + rng.integers(1, 6), dtype=np.int32) for _ in range(40)]
    completions = [np.append(np.arange(200, 200 + rng.integers(0, 5), dtype=np.int32), EOS) for _ in range(40)]
    blocks = data.example_blocks(prompts, completions, block_size=12, pad_token_id=EOS, packed=True)
    for row_ids, row_labels, row_mask in zip(blocks.input_ids, blocks.labels, blocks.attention_mask):
        length = int(row_mask.sum())
        assert row_labels[0] == IGNORE_INDEX  # a row starts with a prompt, never mid-completion
        for t in range(1, length):
            if row_ids[t - 1] == EOS and row_mask[t - 1]:  # an example ended at t-1
                assert row_labels[t] == IGNORE_INDEX
    assert sum(b.size for b in [blocks.labels[blocks.labels != IGNORE_INDEX]]) == sum(map(len, completions))


def test_long_prompts_are_cut_from_the_left_never_the_completion():
    prompt, completion = np.arange(1, 11, dtype=np.int32), ids(21, 22, EOS)  # 10 + 3 > block 8
    blocks = data.example_blocks([prompt], [completion], block_size=8, pad_token_id=EOS, packed=False)
    np.testing.assert_array_equal(blocks.input_ids[0], [6, 7, 8, 9, 10, 21, 22, EOS])  # the prompt's END stays
    np.testing.assert_array_equal(blocks.labels[0][5:], [21, 22, EOS])
    assert (blocks.truncated_documents, blocks.truncated_completions, blocks.truncated_tokens) == (1, 0, 5)
    # A completion longer than the block keeps one prompt token and is cut at the end.
    long_completion = np.arange(30, 40, dtype=np.int32)
    blocks = data.example_blocks([prompt], [long_completion], block_size=8, pad_token_id=EOS, packed=False)
    np.testing.assert_array_equal(blocks.input_ids[0], [10, 30, 31, 32, 33, 34, 35, 36])
    assert blocks.truncated_completions == 1 and blocks.stats()["truncated_completions"] == 1


def test_prompt_completion_records_are_read_verbatim_and_checked(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"q": "Q: 2+2?\nA:", "a": " 4"}) + "\n" + json.dumps({"q": "x", "a": None}) + "\n")
    assert data.read_examples(str(path), "--config.data.train_files", "q", "a") == [("Q: 2+2?\nA:", " 4"), ("x", "")]
    with pytest.raises(UserError, match=r"line 1: no field 'answer'.*--config.data.completion_field"):
        data.read_examples(str(path), "--config.data.train_files", "q", "answer")
    text = tmp_path / "free.txt"
    text.write_text("just text\n")
    with pytest.raises(UserError, match="free text. Unset both fields"):
        data.read_examples(str(text), "--config.data.train_files", "q", "a")
    csv = tmp_path / "pairs.csv"
    csv.write_text('prompt,completion\n"Say hi:", hello\n')
    assert data.read_examples(str(csv), "f", "prompt", "completion") == [("Say hi:", " hello")]


def test_decode_pairs_recovers_prepared_examples():
    class Tokenizer:
        eos_token_id = EOS

        def decode(self, token_ids):
            return " ".join(map(str, token_ids))

    blocks = data.example_blocks(PROMPTS, COMPLETIONS, block_size=10, pad_token_id=EOS, packed=True)
    assert data.decode_pairs(blocks, Tokenizer()) == [("11 12 13", "21 22"), ("14", "31"), ("15 16", "41 42 43")]

