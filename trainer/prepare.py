"""Prepare data once: python -m trainer.prepare --config=configs/NAME.py [--config.key=value ...]
    --config.data.prepared_dir=FOLDER [--shards=N] [--overwrite]

Tokenizes and packs (or pads) the corpus exactly as a training run does in
memory (train.prepare: same split, same tokenizer, same rows in the same
order), then writes the rows as TFRecord shards, so a run on a big corpus reads
files with tf.data instead of holding every block in memory and in the graph:

    FOLDER/train-00000-of-00016.tfrecord ...    training rows; shard i holds rows [i*n/S, (i+1)*n/S)
    FOLDER/validation-00000-of-00001.tfrecord   validation rows
    FOLDER/manifest.json                        written LAST: its presence means the folder is complete

One tf.train.Example per row with three bytes features, input_ids,
attention_mask and labels: the row's int32 values as raw little-endian bytes,
which tf.io.decode_raw reads back (4 bytes a value, no varint decoding).

The trainer reads a folder with read_manifest -> check_manifest, then
shard_paths + parse_example for training and read_blocks for validation.
Sections: format -> reading -> writing -> preparing -> entry point.
"""

import math
import os
import re
import shlex
import sys
import time

import ml_collections
import numpy as np

from trainer import checkpoints, doctor
from trainer import data as data_lib
from trainer import filesystem
from trainer import reporting
from trainer import settings
from trainer.errors import UserError

# ----------------------------------------------------------------------------- format

FORMAT = 1  # manifest["tunewell_prepared"]; a folder of another format is refused
MANIFEST = "manifest.json"
SPLITS = ("train", "validation")
FEATURES = data_lib.FIELDS  # one int32 row per feature, as raw bytes
# The data audit of the doctor, run here because only this step reads the documents.
DOCTOR_FILES = ("doctor.json", "doctor.md")
# Our own shard names: a folder holding only these (and no manifest) is a killed
# run's leftovers, overwritten; any other file means the folder is someone else's.
SHARD_NAME = re.compile(r"^(train|validation)-\d{5,}-of-\d{5,}\.tfrecord$")
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
               "text_field", "text_separator", "normalize", "prompt_field", "completion_field")
# Fields added after a manifest format was fixed: a manifest without one was written
# with the field's default, so an older prepared folder still matches.
DATA_FIELD_DEFAULTS = {"normalize": "", "prompt_field": "", "completion_field": ""}


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}-{index:05d}-of-{count:05d}.tfrecord"


def tokenizer_hash(tokenizer) -> str:
    """sha256 of what decides the token ids: vocabulary, merges, special tokens.

    Two tokenizers with the same hash turn any text into the same ids, so shards
    made with one can train a model with the other. Built from the vocabulary
    and merge lists, not from tokenizer.json as a whole, so a tokenizers release
    that spells its JSON differently (merges as "a b" or ["a", "b"]) does not
    orphan prepared folders."""
    import hashlib
    import json

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


def _fix(prepared_dir: str) -> str:
    return (f"Prepare it with the run's own --config flags: python -m trainer.prepare --config=CONFIG "
            f"[--config.key=value ...] --config.data.prepared_dir={prepared_dir}")


# ----------------------------------------------------------------------------- reading


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


def _row_differences(manifest: dict, config, tokenizer_sha256: str) -> list[str]:
    """Block size, batching and tokenizer against the manifest, as the flags that differ."""
    differences = []
    for key in ("block_size", "batching"):
        value = data_lib.batching_of(config.data) if key == "batching" else config.data[key]  # auto, decided
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
    differences = _row_differences(manifest, config, tokenizer_hash(tokenizer))
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


def read_blocks(prepared_dir: str, manifest: dict, split: str, max_rows: int | None = None) -> data_lib.Blocks:
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
    return data_lib.Blocks(arrays["input_ids"], arrays["attention_mask"], arrays["labels"],
                           documents=stats["documents"], tokens=stats["tokens"],
                           dropped_tokens=stats["dropped_tokens"],
                           truncated_documents=stats["truncated_documents"],
                           truncated_tokens=stats["truncated_tokens"])


# ----------------------------------------------------------------------------- writing


def _serialize(blocks: data_lib.Blocks, row: int) -> bytes:
    import tensorflow as tf

    def feature(array):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[array[row].astype("<i4").tobytes()]))

    return tf.train.Example(features=tf.train.Features(feature={
        "input_ids": feature(blocks.input_ids), "attention_mask": feature(blocks.attention_mask),
        "labels": feature(blocks.labels)})).SerializeToString()


def row_bytes(blocks: data_lib.Blocks) -> int:
    """Bytes one row takes in a shard: every row has the same size (fixed-length values)."""
    return len(_serialize(blocks, 0)) + RECORD_FRAMING if blocks.rows else 0


def shard_count(rows: int, bytes_per_row: int, minimum: int) -> int:
    """About SHARD_BYTES a shard, and at least min(minimum, rows) shards (see SHARD_BYTES)."""
    return max(1, math.ceil(rows * bytes_per_row / SHARD_BYTES), min(minimum, rows))


def write_split(blocks: data_lib.Blocks, prepared_dir: str, split: str, num_shards: int) -> list[dict]:
    """Rows in order, dealt into num_shards contiguous runs; [{"file", "rows"}] per shard."""
    import tensorflow as tf
    from tqdm.auto import tqdm

    n = blocks.rows
    shards = []
    with tqdm(total=n, unit="row", desc=f"Writing {split}", dynamic_ncols=True) as bar:
        for i in range(num_shards):
            start, stop = i * n // num_shards, (i + 1) * n // num_shards
            name = shard_name(split, i, num_shards)
            with tf.io.TFRecordWriter(filesystem.join(prepared_dir, name)) as writer:
                for row in range(start, stop):
                    writer.write(_serialize(blocks, row))
            bar.update(stop - start)
            shards.append({"file": name, "rows": stop - start})
    return shards


# ----------------------------------------------------------------------------- preparing


def _settings(config, tokenizer) -> dict:
    """The manifest's part that decides the rows, knowable before any tokenizing."""
    return {
        "tunewell_prepared": FORMAT,
        "tokenizer": {"name_or_path": config.model.tokenizer or config.model.name_or_path,
                      "vocab_size": len(tokenizer), "eos_token_id": tokenizer.eos_token_id,
                      "pad_token_id": tokenizer.pad_token_id, "sha256": tokenizer_hash(tokenizer)},
        "block_size": config.data.block_size,
        "batching": data_lib.batching_of(config.data),
        "seed": config.seed,
        "data": {key: config.data[key] for key in DATA_FIELDS},
        # Sizes too: a glob that matches a new file, or a file that grew, is new data
        # under the same settings, which "already prepared" must not hide.
        "files": {split: [{"path": path, "bytes": filesystem.size(path)}
                          for path in data_lib.expand_files(spec, f"--config.data.{split}_files")]
                  for split, spec in (("train", config.data.train_files),
                                      ("validation", config.data.validation_files)) if spec},
    }


def _differences(manifest: dict, config, wanted: dict, num_shards) -> list[str]:
    """What differs between a folder's manifest and this config, as flags: the trainer's
    checks (check_manifest), then what decides which documents are in which split."""
    differences = _row_differences(manifest, config, wanted["tokenizer"]["sha256"])
    if manifest["seed"] != wanted["seed"]:
        differences.append(f"--config.seed={wanted['seed']} (prepared with {manifest['seed']})")
    for key in DATA_FIELDS:
        stored = manifest["data"].get(key, DATA_FIELD_DEFAULTS.get(key))
        if stored != wanted["data"][key]:
            differences.append(f"--config.data.{key}={wanted['data'][key]!r} (prepared with {stored!r})")
    if not differences and manifest.get("files") != wanted["files"]:
        differences.append("the files of --config.data.train_files/validation_files (sizes or names changed)")
    if num_shards and num_shards != len(manifest["splits"]["train"]["shards"]):
        differences.append(f"--shards={num_shards} (prepared with {len(manifest['splits']['train']['shards'])})")
    return differences


def _inspect(folder: str, overwrite: bool):
    """(complete manifest or None, our files to remove before writing); refuses someone else's folder."""
    if not filesystem.exists(folder):
        return None, []
    if not filesystem.isdir(folder):
        raise UserError(f"--config.data.prepared_dir={folder} is a file, not a folder. Pick a new folder.")
    names = filesystem.listdir(folder)
    ours = [n for n in names if SHARD_NAME.match(n) or n.startswith(MANIFEST + filesystem.TMP_MARK)
            or n in DOCTOR_FILES]
    others = sorted(set(names) - set(ours) - {MANIFEST})
    manifest = None
    if MANIFEST in names:
        try:
            manifest = read_manifest(folder)
        except UserError:
            if not overwrite:
                raise
        ours.append(MANIFEST)  # removed first on --overwrite: from then on the folder reads as incomplete
    if others and manifest is None:
        shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        raise UserError(f"--config.data.prepared_dir={folder} holds files that trainer.prepare did not write "
                        f"({shown}) and no {MANIFEST}. Nothing was changed: pick an empty or new folder.")
    return manifest, sorted(ours, key=lambda n: n != MANIFEST)


def _inside(path: str, folder: str) -> bool:
    """path is folder or lies under it (string arithmetic; local paths made absolute)."""
    if not filesystem.is_remote(path):
        path, folder = os.path.abspath(path), os.path.abspath(folder)
    path, folder = path.rstrip("/"), folder.rstrip("/")
    return path == folder or path.startswith(folder + "/")


def _existing_tokenizer(config):
    """The run's tokenizer when it exists already; None when bootstrap_tiny has yet to build it."""
    from trainer import model as model_lib

    if config.model.bootstrap_tiny and not config.model.tokenizer and \
            not filesystem.exists(config.model.name_or_path):
        return None
    return model_lib.load_tokenizer(config.model.tokenizer or config.model.name_or_path, config.model.add_tokens,
                                    log=lambda m: None)


def _already(folder: str, manifest: dict, log) -> dict:
    log(f"{folder} is already prepared with these settings ({manifest['splits']['train']['rows']:,} training "
        f"rows in {len(manifest['splits']['train']['shards'])} shards): nothing to do. Use --overwrite to "
        "prepare it again.")
    return manifest


def _refuse(folder: str, differences: list[str]):
    raise UserError(f"--config.data.prepared_dir={folder} was prepared with other settings: "
                    f"{'; '.join(differences)}. Nothing was changed. Prepare into a new "
                    "--config.data.prepared_dir, or pass --overwrite to replace it.")


def _length_summary(lengths) -> dict:
    lengths = np.asarray(lengths if lengths is not None else [], np.int64)
    if not len(lengths):
        return {"count": 0, "mean": 0.0, "p50": 0.0, "p90": 0.0, "max": 0}
    return {"count": int(len(lengths)), "mean": float(lengths.mean()), "p50": float(np.percentile(lengths, 50)),
            "p90": float(np.percentile(lengths, 90)), "max": int(lengths.max())}


def prepare_data(config, num_shards: int | None = None, log=reporting.say, overwrite: bool = False) -> dict:
    """Tokenize and pack once into config.data.prepared_dir; returns the manifest.

    num_shards: training shards (None = derived, see SHARD_BYTES); validation is
    always derived. Nothing is written or removed until the data are tokenized
    and every check has passed."""
    from trainer import train

    # ------------------------------------------------------------------ settings and the folder
    config = settings.resolve(config)
    folder = config.data.prepared_dir
    if not folder:
        raise UserError("--config.data.prepared_dir is empty: name the folder to write the shards to, e.g. "
                        "--config.data.prepared_dir=runs/prepared-NAME (local or gs://).")
    if _inside(folder, config.output_dir):
        raise UserError(f"--config.data.prepared_dir={folder} is inside --config.output_dir={config.output_dir}: "
                        "prepared data serve many runs and a run folder holds one run. Use a folder of its "
                        "own, e.g. --config.data.prepared_dir=runs/prepared-NAME.")
    if num_shards is not None and num_shards < 1:
        raise UserError(f"--shards={num_shards}: give at least 1, or leave it out to derive it.")
    filesystem.check_output_location(folder)  # a missing bucket: an error now, not writes retried forever
    manifest, ours = _inspect(folder, overwrite)
    if manifest is not None and not overwrite:
        tokenizer = _existing_tokenizer(config)
        if tokenizer is not None:  # decided without reading the corpus
            differences = _differences(manifest, config, _settings(config, tokenizer), num_shards)
            if differences:
                _refuse(folder, differences)
            return _already(folder, manifest, log)

    # ------------------------------------------------------------------ documents, tokens, rows
    # train.prepare reads the corpus as the trainer does; with prepared_dir cleared,
    # it tokenizes in memory rather than reading the folder we are about to write.
    started = time.perf_counter()
    in_memory = ml_collections.ConfigDict(config.to_dict())
    in_memory.data.prepared_dir = ""
    prep = train.prepare(in_memory, log)
    train_blocks, val_blocks = prep.train_blocks, prep.val_blocks
    wanted = _settings(config, prep.tokenizer)
    fingerprint = checkpoints.data_fingerprint(train_blocks, val_blocks)
    if manifest is not None and not overwrite:  # the tokenizer had to be built first
        differences = _differences(manifest, config, wanted, num_shards)
        if differences or manifest["data_fingerprint"] != fingerprint:
            _refuse(folder, differences or ["the tokenized rows differ"])
        return _already(folder, manifest, log)
    if num_shards is not None and num_shards > train_blocks.rows:
        raise UserError(f"--shards={num_shards} is more than the {train_blocks.rows:,} training rows: every "
                        f"shard needs a row. Use --shards={train_blocks.rows} or fewer.")
    tokenized = time.perf_counter()

    # ------------------------------------------------------------------ the data audit
    # Training on the shards cannot read the documents again, so the doctor's data checks
    # run here and their findings are kept beside the shards.
    findings, audit_stats = [], {}
    if config.preflight != "off":
        findings, audit_stats = doctor.run_checks(prep.config, prep, doctor.estimate_parameters(prep.model_config))
        log(doctor.terminal_summary(findings))

    # ------------------------------------------------------------------ shards, then the manifest
    filesystem.makedirs(folder)
    for name in ours:  # the manifest first: the folder reads as incomplete until the new one lands
        filesystem.remove(filesystem.join(folder, name))
    splits = {}
    for split, blocks, minimum, requested in (("train", train_blocks, MIN_TRAIN_SHARDS, num_shards),
                                              ("validation", val_blocks, 1, None)):
        count = requested or shard_count(blocks.rows, row_bytes(blocks), minimum)
        shards = write_split(blocks, folder, split, count)
        splits[split] = {"rows": blocks.rows, "shards": shards, "stats": blocks.stats(),
                         "bytes": blocks.rows * row_bytes(blocks)}
    if findings:
        doctor.write_outputs(findings, audit_stats, folder)
    manifest = {**wanted, "splits": splits, "data_fingerprint": fingerprint,
                "document_lengths_train": _length_summary(train_blocks.document_lengths)}
    filesystem.write_json(filesystem.join(folder, MANIFEST), manifest)  # last: its presence means complete
    finished = time.perf_counter()

    for split, blocks in (("train", train_blocks), ("validation", val_blocks)):
        entry = splits[split]
        log(f"Wrote {split}: {entry['rows']:,} rows of {config.data.block_size} tokens ({blocks.tokens:,} "
            f"tokens of {blocks.documents:,} documents) in {len(entry['shards'])} shard(s), "
            f"{entry['bytes'] / 2**20:,.1f} MB.")
    rows, writing = train_blocks.rows + val_blocks.rows, max(finished - tokenized, 1e-9)
    log(f"Prepared {folder} in {finished - started:.1f} s: reading and tokenizing {tokenized - started:.1f} s, "
        f"writing {rows:,} rows {writing:.1f} s ({rows / writing:,.0f} rows/s).")
    return manifest


# ----------------------------------------------------------------------------- entry point


def trainer_command(argv: list[str], prepared_dir: str) -> str:
    """The trainer command with the same --config flags as this one, reading `prepared_dir`."""
    kept, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--config") and not arg.startswith("--config.data.prepared_dir"):
            kept.append(arg)
            if "=" not in arg and i + 1 < len(argv):  # the "--config path" spelling
                kept.append(argv[i + 1])
                i += 1
        elif arg.startswith("--config.data.prepared_dir") and "=" not in arg:
            i += 1  # its value follows
        i += 1
    return " ".join(["python -m trainer.task", *map(shlex.quote, kept),
                     shlex.quote(f"--config.data.prepared_dir={prepared_dir}")])


def main(argv):
    from absl import app, flags, logging

    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.WARNING)  # TensorFlow's INFO lines drown the progress bars
    config = flags.FLAGS.config
    try:
        prepare_data(config, flags.FLAGS.shards, log=reporting.say, overwrite=flags.FLAGS.overwrite)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"Train on it: {trainer_command(sys.argv[1:], filesystem.expand(config.data.prepared_dir))}")


if __name__ == "__main__":
    # Flags are defined here, not at import: the trainer imports this module, and
    # trainer.task (imported here, which defines --config) must not be imported twice.
    from absl import app, flags

    from trainer.task import parse_flags

    flags.DEFINE_integer("shards", None, "Training shards; default: ~64 MB each and at least min(16, rows). "
                         "Validation shards are always derived.")
    flags.DEFINE_bool("overwrite", False, "Replace a folder prepared with other settings.")
    flags.mark_flag_as_required("config")
    app.run(main, flags_parser=parse_flags)
