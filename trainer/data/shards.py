"""Prepared data on disk: TFRecord shards and their manifest (written by trainer.prepare).

    FOLDER/train-00000-of-00016.tfrecord ...    training rows; shard i holds rows [i*n/S, (i+1)*n/S)
    FOLDER/validation-00000-of-00001.tfrecord   validation rows
    FOLDER/test-00000-of-00001.tfrecord         test rows (when the run has a test split)
    FOLDER/manifest.json                        written LAST: its presence means the folder is complete

One tf.train.Example per row with three bytes features, input_ids,
attention_mask and labels: the row's int32 values as raw little-endian bytes,
which tf.io.decode_raw reads back (4 bytes a value, no varint decoding).

The trainer reads a folder with read_manifest -> check_manifest, then
shard_paths + parse_example for training and read_blocks for validation."""

import math
import re

import numpy as np

from trainer import filesystem, settings
from trainer.data.blocks import FIELDS, Blocks
from trainer.data.tokens import tokenizer_hash
from trainer.errors import UserError


FORMAT = 1  # manifest["tunewell_prepared"]; a folder of another format is refused

MANIFEST = "manifest.json"

SPLITS = ("train", "validation", "test")

FEATURES = FIELDS  # one int32 row per feature, as raw bytes


# Our own shard names: a folder holding only these (and no manifest) is a killed
# run's leftovers, overwritten; any other file means the folder is someone else's.
SHARD_NAME = re.compile(r"^(train|validation|test)-\d{5,}-of-\d{5,}\.tfrecord$")


# Shard size. A row takes 3 features x block_size x 4 bytes plus ~90 bytes of
# framing: at block_size 512, 6,234 bytes, so a 64 MB shard holds ~10,800 rows.
# A 100M-token packed corpus (195k rows, 1.2 GB) makes 19 shards. Small corpora
# get at least 16 training shards (fewer only when there are fewer rows), so a
# job of up to 16 workers can split the training data by FILE: 1M tokens at 512
# = 1,953 rows = 12 MB -> 16 shards of 122 rows.
SHARD_BYTES = 64 * 2**20

MIN_TRAIN_SHARDS = 16

RECORD_FRAMING = 16  # TFRecord: length (8) + its CRC (4) + data CRC (4)


# The data.* fields that decide which documents become which rows.
DATA_FIELDS = ("train_files", "validation_files", "validation_fraction", "validation_max_examples",
               "test_files", "test_fraction", "text_field", "text_separator", "normalize", "prompt_field",
               "completion_field")


# Fields added after a manifest format was fixed: a manifest without one was written
# with the field's default, so an older prepared folder still matches.
DATA_FIELD_DEFAULTS = {"normalize": "", "prompt_field": "", "completion_field": "", "test_files": "",
                       "test_fraction": 0.0}


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.tfrecord"


def _fix(prepared_dir: str) -> str:
    return (f"Prepare it with the run's own --config flags: python -m trainer.prepare --config=CONFIG "
            f"[--config.key=value ...] --config.data.prepared_dir={prepared_dir}")


def read_manifest(prepared_dir: str) -> dict:
    """The manifest of a complete prepared folder; UserError saying how to make one otherwise."""
    path = filesystem.join(prepared_dir, MANIFEST)
    if not filesystem.exists(path):
        if not filesystem.exists(prepared_dir):
            what = "does not exist"
        else:
            what = (f"holds no {MANIFEST}: it was never prepared, or its preparation was interrupted "
                    "(the manifest is written last)")
        raise UserError(f"--config.data.prepared_dir={prepared_dir} {what}. {_fix(prepared_dir)}.")
    try:
        manifest = filesystem.read_json(path)
    except ValueError:  # not JSON (UnicodeDecodeError and JSONDecodeError are ValueErrors)
        manifest = None
    if not isinstance(manifest, dict) or manifest.get("tunewell_prepared") != FORMAT:
        raise UserError(f"{path} is not a tunewell prepared-data manifest of format {FORMAT}. "
                        f"{_fix(prepared_dir)} --overwrite, or use another folder.")
    return manifest


def row_differences(manifest: dict, config, tokenizer_sha256: str) -> list[str]:
    """Block size, batching and tokenizer against the manifest, as the flags that differ."""
    differences = []
    for key in ("block_size", "batching"):
        value = settings.batching_of(config.data) if key == "batching" else config.data[key]  # auto, decided
        if manifest[key] != value:
            differences.append(f"--config.data.{key}={config.data[key]} (prepared with {manifest[key]})")
    stored = manifest["tokenizer"]
    if stored["sha256"] != tokenizer_sha256:
        flag = "tokenizer" if config.model.tokenizer else "name_or_path"
        differences.append(
            f"the tokenizer of --config.model.{flag}={config.model[flag]} (prepared with the tokenizer of "
            f"{stored['name_or_path']}, {stored['vocab_size']:,} tokens; the token ids would not match)")
    return differences


def check_manifest(manifest: dict, config, tokenizer) -> None:
    """UserError when the shards were made with another block size, batching or tokenizer.

    `tokenizer` as model.load_tokenizer returns it (pad token set): the hash covers the pad id."""
    differences = row_differences(manifest, config, tokenizer_hash(tokenizer))
    if differences:
        folder = config.data.prepared_dir
        raise UserError(
            f"--config.data.prepared_dir={folder} was prepared with other settings than this run: "
            f"{'; '.join(differences)}. Train with the settings it was prepared with, or prepare a new "
            f"folder for these: python -m trainer.prepare with this run's --config flags and "
            f"--config.data.prepared_dir=NEW_FOLDER.")


def shard_paths(prepared_dir: str, manifest: dict, split: str) -> list[str]:
    return [filesystem.join(prepared_dir, shard["file"]) for shard in manifest["splits"][split]["shards"]]


def parse_example(serialized, block_size: int) -> dict:
    """One serialized Example -> {"input_ids", "attention_mask", "labels"}: int32 of static shape [block_size]."""
    import tensorflow as tf

    spec = {name: tf.io.FixedLenFeature([], tf.string) for name in FEATURES}
    parsed = tf.io.parse_single_example(serialized, spec)
    return {name: tf.reshape(tf.io.decode_raw(parsed[name], tf.int32, little_endian=True), [block_size])
            for name in FEATURES}


def read_blocks(prepared_dir: str, manifest: dict, split: str, max_rows: int | None = None) -> Blocks:
    """Every row of a split, in order, as the Blocks the trainer would have made in memory.

    max_rows: only the first rows (a sample); the counters (documents, tokens, ...)
    are still the whole split's. document_lengths stays None: the manifest keeps
    only their summary."""
    import tensorflow as tf

    block_size = manifest["block_size"]
    entry = manifest["splits"][split]
    paths = shard_paths(prepared_dir, manifest, split)
    if max_rows is not None:  # only the shards that hold the first max_rows rows
        needed = np.searchsorted(np.cumsum([s["rows"] for s in entry["shards"]]), max_rows) + 1
        paths = paths[:needed]
    dataset = tf.data.TFRecordDataset(paths).map(lambda s: parse_example(s, block_size),
                                                 num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if max_rows is not None:
        dataset = dataset.take(max_rows)
    parts = {name: [np.zeros([0, block_size], np.int32)] for name in FEATURES}
    try:
        for batch in dataset.batch(8192).as_numpy_iterator():
            for name in FEATURES:
                parts[name].append(batch[name])
    except (tf.errors.DataLossError, tf.errors.NotFoundError, tf.errors.InvalidArgumentError) as e:
        raise UserError(f"The {split} shards of {prepared_dir} cannot be read ({e.message.splitlines()[0]}). "
                        f"{_fix(prepared_dir)} --overwrite.") from None
    arrays = {name: np.concatenate(parts[name]) for name in FEATURES}
    expected = entry["rows"] if max_rows is None else min(entry["rows"], max_rows)
    if len(arrays["input_ids"]) != expected:
        raise UserError(f"The {split} shards of {prepared_dir} gave {len(arrays['input_ids']):,} rows where its "
                        f"manifest promises {expected:,}. {_fix(prepared_dir)} --overwrite.")
    stats = entry["stats"]
    return Blocks(arrays["input_ids"], arrays["attention_mask"], arrays["labels"],
                           documents=stats["documents"], tokens=stats["tokens"],
                           dropped_tokens=stats["dropped_tokens"],
                           truncated_documents=stats["truncated_documents"],
                           truncated_tokens=stats["truncated_tokens"])


def serialize_row(input_ids, attention_mask, labels) -> bytes:
    """One row as a serialized tf.train.Example (the format above); every writer calls this."""
    import tensorflow as tf

    def feature(values):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[np.asarray(values).astype("<i4").tobytes()]))

    return tf.train.Example(features=tf.train.Features(feature={
        "input_ids": feature(input_ids), "attention_mask": feature(attention_mask),
        "labels": feature(labels)})).SerializeToString(deterministic=True)  # map order fixed: same bytes in
    # every process (the fingerprint hashes the records)


def shard_count(rows: int, bytes_per_row: int, minimum: int) -> int:
    """About SHARD_BYTES a shard, and at least min(minimum, rows) shards (see SHARD_BYTES)."""
    return max(1, math.ceil(rows * bytes_per_row / SHARD_BYTES), min(minimum, rows))
