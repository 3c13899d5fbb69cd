"""trainer.prepare: shards that read back as exactly the rows the trainer makes in memory,
a manifest written last, and refusals that name the flag."""

import os

import numpy as np
import pytest

from tests.conftest import cli_args, make_documents, quiet, run_cli, small_config
from tests.gcs_server import BUCKET
from trainer import filesystem
from trainer.data import blocks as data_blocks, shards as shards_lib, tokens as data_tokens
from trainer.run import preparation as prepare, train
from trainer.errors import UserError
from trainer.data.shards import FEATURES


def in_memory(config):
    """train.prepare on the same config without prepared_dir: the rows a run tokenizes at launch."""
    return train.prepare(small_config(config.output_dir, config.data.train_files, config.model.name_or_path,
                                      **{"data.batching": config.data.batching,
                                         "data.test_fraction": config.data.test_fraction}), log=quiet)


@pytest.fixture(scope="module", params=["packed", "padded"])
def prepared(request, tmp_path_factory, corpus_file, tiny_model_dir):
    folder = tmp_path_factory.mktemp("prepared") / request.param
    config = small_config(tmp_path_factory.mktemp("run"), corpus_file, tiny_model_dir,
                          **{"data.batching": request.param, "data.prepared_dir": str(folder)})
    manifest = prepare.prepare_data(config, log=quiet)
    return config, manifest, in_memory(config)


# ----------------------------------------------------------------------------- the shards


def rows_of(blocks) -> list[bytes]:
    """Each row's three arrays as bytes, sorted: the rows as a multiset."""
    return sorted(b"".join(getattr(blocks, name)[row].tobytes() for name in FEATURES) for row in range(blocks.rows))


def test_shards_hold_the_in_memory_rows(prepared):
    config, manifest, prep = prepared
    folder = config.data.prepared_dir
    assert shards_lib.read_manifest(folder) == manifest  # what was returned is what is on disk
    for split, blocks in (("train", prep.train_blocks), ("validation", prep.val_blocks)):
        read = shards_lib.read_blocks(folder, manifest, split)
        assert all(getattr(read, name).dtype == np.int32 for name in FEATURES)
        # The Beam pipeline and the in-process path make the same rows (data/keys.py); the
        # shards hold them in the order of their row keys, the run in memory by group.
        assert rows_of(read) == rows_of(blocks), split
        assert read.stats() == blocks.stats() == manifest["splits"][split]["stats"]
        shards = manifest["splits"][split]["shards"]
        assert sum(s["rows"] for s in shards) == manifest["splits"][split]["rows"] == blocks.rows
        assert manifest["splits"][split]["bytes"] == sum(
            os.path.getsize(path) for path in shards_lib.shard_paths(folder, manifest, split))
    expected = data_blocks.data_fingerprint(prep.train_blocks, prep.val_blocks)
    assert {k: v for k, v in manifest["data_fingerprint"].items() if k != "sha256"} == {
        k: v for k, v in expected.items() if k != "sha256"}
    assert (manifest["block_size"], manifest["batching"]) == (32, config.data.batching)
    lengths = prep.train_blocks.document_lengths
    assert manifest["document_lengths_train"] == {
        "count": len(lengths), "mean": pytest.approx(lengths.mean()), "p50": np.percentile(lengths, 50),
        "p90": np.percentile(lengths, 90), "max": lengths.max()}
    assert manifest["tokenizer"]["sha256"] == data_tokens.tokenizer_hash(prep.tokenizer)


def test_the_test_split_is_prepared_as_in_memory_and_read_back_by_the_trainer(tmp_path, corpus_file,
                                                                               tiny_model_dir):
    """data.test_fraction: the same documents leave training and form the same test rows in the
    shards as in memory, and a run on the shards scores them."""
    config = small_config(tmp_path / "run", corpus_file, tiny_model_dir, **{
        "data.prepared_dir": str(tmp_path / "prepared"), "data.test_fraction": 0.05})
    manifest = prepare.prepare_data(config, log=quiet)
    memory = in_memory(config)
    assert memory.test_blocks is not None and memory.test_blocks.rows > 0
    for split, blocks in (("train", memory.train_blocks), ("validation", memory.val_blocks),
                          ("test", memory.test_blocks)):
        read = shards_lib.read_blocks(config.data.prepared_dir, manifest, split)
        assert rows_of(read) == rows_of(blocks), split
        assert read.stats() == blocks.stats() == manifest["splits"][split]["stats"], split
    from_shards = train.prepare(config, log=quiet)
    assert rows_of(from_shards.test_blocks) == rows_of(memory.test_blocks)
    assert from_shards.documents.test_source == "prepared" and from_shards.data_stats["test"] == \
        memory.data_stats["test"]
    # Another fraction is another split: the folder refuses it by name.
    other = small_config(tmp_path / "run", corpus_file, tiny_model_dir, **{
        "data.prepared_dir": str(tmp_path / "prepared"), "data.test_fraction": 0.1})
    with pytest.raises(UserError, match=r"--config.data.test_fraction=0.1 \(prepared with 0.05\)"):
        prepare.prepare_data(other, log=quiet)


def test_read_blocks_reads_a_sample_and_refuses_a_damaged_shard(prepared, tmp_path):
    import shutil

    config, manifest, prep = prepared
    sample = shards_lib.read_blocks(config.data.prepared_dir, manifest, "train", max_rows=25)  # 2 shards' worth
    assert sample.rows == 25 and set(rows_of(sample)) <= set(rows_of(prep.train_blocks))
    damaged = shutil.copytree(config.data.prepared_dir, tmp_path / "damaged")
    shard = damaged / manifest["splits"]["train"]["shards"][3]["file"]
    shard.write_bytes(shard.read_bytes()[:-100])  # a copy cut short
    with pytest.raises(UserError, match=r"train shards of .*damaged cannot be read.*--overwrite"):
        shards_lib.read_blocks(str(damaged), manifest, "train")


def test_rows_are_dealt_into_shards_of_equal_row_counts(prepared):
    config, manifest, prep = prepared
    shards = manifest["splits"]["train"]["shards"]
    rows = prep.train_blocks.rows
    assert len(shards) == min(shards_lib.MIN_TRAIN_SHARDS, rows)  # a tiny corpus: 16 shards of ~20 rows
    assert [s["file"] for s in shards] == [f"train-{i:05d}-of-00016.tfrecord" for i in range(16)]
    # Row number r goes to shard r % 16: equal row counts (floor or ceil of rows / 16).
    counts = [s["rows"] for s in shards]
    assert sum(counts) == rows and max(counts) - min(counts) <= 1
    assert len(manifest["splits"]["validation"]["shards"]) == 1


def test_each_shard_is_a_sample_of_the_whole_corpus_not_a_slice_of_it(prepared):
    """Shards were written in corpus order (shard 0 = the first documents), so a window
    shuffle over a few shards mixed far less than the in-memory permutation. Now each
    shard holds rows from the whole corpus, in no corpus order."""
    import re

    config, manifest, prep = prepared
    paths = shards_lib.shard_paths(config.data.prepared_dir, manifest, "train")
    documents = len(prep.documents.train) + len(prep.documents.validation)  # "Note 0." ... "Note 239."
    import tensorflow as tf

    for path in paths[:4]:
        rows = [r["input_ids"].numpy() for r in tf.data.TFRecordDataset(path).map(
            lambda record: shards_lib.parse_example(record, 32))]
        notes = [int(n) for row in rows for n in re.findall(r"Note (\d+)\.", prep.tokenizer.decode(row))]
        assert notes, path
        assert min(notes) < 0.25 * documents and max(notes) > 0.75 * documents, (path, sorted(notes))
        assert notes != sorted(notes), path


def test_parse_example_gives_static_shapes_for_tf_data(prepared):
    import tensorflow as tf

    config, manifest, prep = prepared
    paths = shards_lib.shard_paths(config.data.prepared_dir, manifest, "train")
    dataset = tf.data.TFRecordDataset(paths).map(lambda s: shards_lib.parse_example(s, 32))
    for name in FEATURES:
        assert dataset.element_spec[name].shape.as_list() == [32]
        assert dataset.element_spec[name].dtype == tf.int32
    first = next(iter(dataset.batch(4)))
    np.testing.assert_array_equal(first["labels"].numpy(),
                                  shards_lib.read_blocks(config.data.prepared_dir, manifest, "train", 4).labels)


def test_shard_count_rule():
    # 512-token rows take 6,234 bytes: a 100M-token corpus (195,313 rows, 1.2 GB) makes 19 shards of ~64 MB.
    assert shards_lib.shard_count(195_313, 6_234, minimum=16) == 19
    assert shards_lib.shard_count(1_953, 6_234, minimum=16) == 16  # 12 MB: still one file per worker of 16
    assert shards_lib.shard_count(5, 6_234, minimum=16) == 5  # never an empty shard
    assert shards_lib.shard_count(300, 6_234, minimum=1) == 1  # validation
    assert shards_lib.shard_count(0, 0, minimum=16) == 1


def test_shards_flag_sets_the_training_shards_and_must_leave_each_a_row(tmp_path, corpus_file, tiny_model_dir):
    config = small_config(tmp_path / "run", corpus_file, tiny_model_dir,
                          **{"data.prepared_dir": str(tmp_path / "three")})
    manifest = prepare.prepare_data(config, num_shards=3, log=quiet)
    rows = manifest["splits"]["train"]["rows"]
    shards = manifest["splits"]["train"]["shards"]
    assert len(shards) == 3 and sum(s["rows"] for s in shards) == rows
    with pytest.raises(UserError, match=r"--shards=4 \(prepared with 3\)"):
        prepare.prepare_data(config, num_shards=4, log=quiet)  # another layout of a complete folder
    config = small_config(tmp_path / "run", corpus_file, tiny_model_dir,
                          **{"data.prepared_dir": str(tmp_path / "too-many")})
    with pytest.raises(UserError, match=f"--shards=100000 is more than the {rows:,} training rows"):
        prepare.prepare_data(config, num_shards=100_000, log=quiet)
    assert not os.path.exists(tmp_path / "too-many")  # refused before writing


# ----------------------------------------------------------------------------- the folder


def test_refuses_a_folder_of_someone_elses_files_and_overwrites_its_own_leftovers(tmp_path, corpus_file,
                                                                                  tiny_model_dir):
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    config = small_config(tmp_path / "run", corpus_file, tiny_model_dir, **{"data.prepared_dir": str(theirs)})
    with pytest.raises(UserError, match="notes.txt"):
        prepare.prepare_data(config, log=quiet, overwrite=True)
    assert os.listdir(theirs) == ["notes.txt"]

    killed = tmp_path / "killed"  # a run killed while writing shards: no manifest
    killed.mkdir()
    (killed / "train-00000-of-00004.tfrecord").write_bytes(b"half a record")
    (killed / "validation-00000-of-00001.tfrecord").write_bytes(b"")
    config = small_config(tmp_path / "run", corpus_file, tiny_model_dir, **{"data.prepared_dir": str(killed)})
    manifest = prepare.prepare_data(config, log=quiet)
    expected = {s["file"] for split in manifest["splits"] for s in manifest["splits"][split]["shards"]}
    assert set(os.listdir(killed)) == expected | {"manifest.json", *prepare.DOCTOR_FILES}
    validation = shards_lib.read_blocks(str(killed), manifest, "validation")
    assert validation.rows == manifest["splits"]["validation"]["rows"]


def test_overwrite_replaces_a_folder_prepared_with_other_settings(tmp_path, corpus_file, tiny_model_dir):
    folder = str(tmp_path / "prepared")
    config = small_config(tmp_path / "run", corpus_file, tiny_model_dir,
                          **{"data.prepared_dir": folder})
    prepare.prepare_data(config, num_shards=2, log=quiet)
    other = small_config(tmp_path / "run", corpus_file, tiny_model_dir,
                         **{"data.prepared_dir": folder, "data.block_size": 16})
    with pytest.raises(UserError, match=r"--config.data.block_size=16 \(prepared with 32\).*--overwrite"):
        prepare.prepare_data(other, log=quiet)
    manifest = prepare.prepare_data(other, log=quiet, overwrite=True)
    assert manifest["block_size"] == 16
    assert sorted(os.listdir(folder)) == sorted(
        ["manifest.json", *prepare.DOCTOR_FILES] +
        [s["file"] for split in manifest["splits"] for s in manifest["splits"][split]["shards"]])


def test_bootstrap_tiny_builds_the_tokenizer_first_and_a_rebuilt_one_is_the_same(tmp_path, corpus_file):
    """configs/local.py's path: the tokenizer does not exist until train.prepare builds it."""
    import shutil

    from trainer import model as model_lib

    model_dir, folder = tmp_path / "tiny", tmp_path / "prepared"
    config = small_config(tmp_path / "run", corpus_file, str(model_dir), **{
        "data.prepared_dir": str(folder), "model.bootstrap_tiny": True, "model.tiny.n_layer": 1,
        "model.tiny.n_embd": 32, "model.tiny.n_head": 2, "model.tiny.n_positions": 64,
        "model.tiny.vocab_size": 300})
    manifest = prepare.prepare_data(config, log=quiet)
    assert manifest["tokenizer"]["sha256"] == data_tokens.tokenizer_hash(model_lib.load_tokenizer(str(model_dir)))
    mtimes = {name: os.stat(folder / name).st_mtime_ns for name in os.listdir(folder)}
    shutil.rmtree(model_dir)  # decided only after building it again: the same tokenizer, the same rows
    assert prepare.prepare_data(config, log=quiet) == manifest
    assert {name: os.stat(folder / name).st_mtime_ns for name in os.listdir(folder)} == mtimes


def test_read_manifest_says_how_to_prepare_an_incomplete_folder(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match=r"holds no manifest.json.*python -m trainer.prepare"):
        shards_lib.read_manifest(str(empty))
    (empty / "train-00000-of-00016.tfrecord").write_bytes(b"")  # shards of a killed run
    with pytest.raises(UserError, match=r"interrupted.*python -m trainer.prepare"):
        shards_lib.read_manifest(str(empty))
    with pytest.raises(UserError, match=r"does not exist.*python -m trainer.prepare"):
        shards_lib.read_manifest(str(tmp_path / "missing"))
    (empty / "manifest.json").write_text('{"format": "someone else\'s"}')
    with pytest.raises(UserError, match=r"not a tunewell prepared-data manifest.*python -m trainer.prepare"):
        shards_lib.read_manifest(str(empty))


# ----------------------------------------------------------------------------- the trainer's check


def other_tokenizer(folder, documents, add_token=None):
    """A GPT-2 byte-level BPE trained like model.build_tiny's, on other documents."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2TokenizerFast

    from trainer import model as model_lib

    eos = "<|endoftext|>"
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(documents, trainers.BpeTrainer(
        vocab_size=300, special_tokens=[eos], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    GPT2TokenizerFast(tokenizer_object=bpe, bos_token=eos, eos_token=eos, unk_token=eos).save_pretrained(folder)
    return model_lib.load_tokenizer(str(folder))


def test_check_manifest_refuses_another_block_size_batching_or_tokenizer(prepared, tmp_path, tiny_model_dir):
    from trainer import model as model_lib

    config, manifest, prep = prepared
    same = model_lib.load_tokenizer(tiny_model_dir)  # loaded again: the same hash
    shards_lib.check_manifest(manifest, config, same)

    def with_(**overrides):
        return small_config(config.output_dir, config.data.train_files, tiny_model_dir,
                            **{"data.batching": config.data.batching,
                               "data.prepared_dir": config.data.prepared_dir, **overrides})

    with pytest.raises(UserError, match=r"--config.data.block_size=64 \(prepared with 32\).*trainer.prepare"):
        shards_lib.check_manifest(manifest, with_(**{"data.block_size": 64}), same)
    flipped = "padded" if config.data.batching == "packed" else "packed"
    with pytest.raises(UserError, match=f"--config.data.batching={flipped}"):
        shards_lib.check_manifest(manifest, with_(**{"data.batching": flipped}), same)

    # Same size, other merges: trained on other documents.
    other = other_tokenizer(tmp_path / "other", make_documents(240, seed=1))
    assert len(other) == len(same) and other.get_vocab() != same.get_vocab()
    with pytest.raises(UserError, match=r"tokenizer of --config.model.name_or_path=.*ids would not match"):
        shards_lib.check_manifest(manifest, config, other)
    same.add_tokens(["<|added|>"])  # one added token changes every id past the vocabulary
    with pytest.raises(UserError, match="the tokenizer of"):
        shards_lib.check_manifest(manifest, config, same)


# ----------------------------------------------------------------------------- the command


def test_cli_prepares_once_then_does_nothing_and_refuses_other_settings(tmp_path, corpus_file, tiny_model_dir):
    folder = tmp_path / "prepared"
    config = small_config(tmp_path / "run", corpus_file, tiny_model_dir)
    args = cli_args(config, **{"data.prepared_dir": folder})

    first = run_cli("trainer.prepare", *args)
    assert first.returncode == 0, first.stderr
    manifest = filesystem.read_json(str(folder / "manifest.json"))
    assert manifest["tunewell_prepared"] == 1
    assert f"--config.data.prepared_dir={folder}" in first.stdout
    assert "python -m trainer.task --config=configs/default.py" in first.stdout
    mtimes = {name: os.stat(folder / name).st_mtime_ns for name in os.listdir(folder)}

    second = run_cli("trainer.prepare", *args)
    assert second.returncode == 0, second.stderr
    assert "already prepared" in second.stdout + second.stderr
    assert {name: os.stat(folder / name).st_mtime_ns for name in os.listdir(folder)} == mtimes

    changed = run_cli("trainer.prepare", *cli_args(config, **{"data.prepared_dir": folder, "data.block_size": 16}))
    assert changed.returncode == 2
    assert "error: " in changed.stderr and "--config.data.block_size=16 (prepared with 32)" in changed.stderr
    assert {name: os.stat(folder / name).st_mtime_ns for name in os.listdir(folder)} == mtimes

    inside = run_cli("trainer.prepare", *cli_args(config, **{"data.prepared_dir": tmp_path / "run" / "data"}))
    assert inside.returncode == 2 and "is inside --config.output_dir" in inside.stderr

    missing = run_cli("trainer.prepare", *cli_args(config))
    assert missing.returncode == 2
    assert "--config.data.prepared_dir is empty" in missing.stderr


# ----------------------------------------------------------------------------- Cloud Storage


def test_prepares_to_and_reads_from_gcs(gcs_server, prepared):
    config, manifest, prep = prepared
    folder = f"gs://{BUCKET}/prepared-{config.data.batching}"
    remote = small_config(config.output_dir, config.data.train_files, config.model.name_or_path,
                          **{"data.batching": config.data.batching, "data.prepared_dir": folder})
    assert prepare.prepare_data(remote, log=quiet)["data_fingerprint"] == manifest["data_fingerprint"]
    assert prepare.prepare_data(remote, log=quiet) == shards_lib.read_manifest(folder)  # already prepared
    read = shards_lib.read_blocks(folder, shards_lib.read_manifest(folder), "train")
    assert rows_of(read) == rows_of(prep.train_blocks)
    assert not os.path.exists("gs:")  # nothing went around filesystem.py to the local disk


def _rows(dataset) -> list[tuple]:
    return [tuple(row) for batch in dataset for row in batch["input_ids"].numpy()]


def test_shard_reading_per_worker_is_seeded_resumable_and_disjoint(prepared):
    """FILE sharding (16 files, 2 workers) and DATA sharding (1 file, 2 workers): the two
    workers read different rows; the same seed gives the same order; a reader resumed in
    the second epoch yields exactly the tail of an uninterrupted one."""
    from trainer import data
    from trainer.data import pipeline

    config, manifest, _ = prepared
    paths = shards_lib.shard_paths(config.data.prepared_dir, manifest, "train")
    shards = data.Shards(paths, manifest["splits"]["train"]["rows"], 32)
    one_file = data.Shards(paths[:1], manifest["splits"]["train"]["shards"][0]["rows"], 32)
    for source in (shards, one_file):
        steps_per_epoch = source.rows // 2 // 4  # 2 workers x 4 rows per step
        total = 2 * steps_per_epoch  # two epochs

        def read(worker, start=0, seed=3):
            return _rows(pipeline._shards_dataset(source, 4, 1, 2, worker, steps_per_epoch, total, start, seed))
        first, second = read(0), read(1)
        assert len(first) == len(second) == total * 4
        epoch = slice(0, steps_per_epoch * 4)
        assert not set(first[epoch]) & set(second[epoch])  # one epoch: no row read by both workers
        assert read(0) == first and read(0, seed=4) != first
        start = steps_per_epoch + 1
        assert read(0, start=start) == first[start * 4:]


def test_a_folder_prepared_before_data_normalize_existed_still_matches(prepared):
    from trainer import model as model_lib

    config, manifest, _ = prepared
    tokenizer = model_lib.load_tokenizer(config.model.name_or_path)
    wanted = prepare._settings(config, tokenizer)
    older = {**manifest, "data": {k: v for k, v in manifest["data"].items() if k != "normalize"}}
    assert prepare._differences(older, config, wanted, None) == []
    config = small_config(config.output_dir, config.data.train_files, config.model.name_or_path,
                          **{"data.batching": config.data.batching, "data.normalize": "nfkc"})
    assert prepare._differences(older, config, prepare._settings(config, tokenizer), None) == [
        "--config.data.normalize='nfkc' (prepared with '')"]
