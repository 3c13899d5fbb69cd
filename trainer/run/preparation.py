"""Prepare data once (`python -m trainer.prepare`): tokenize and pack (or pad) the corpus
exactly as a training run does in memory (trainer/run/inputs.py: same split, same
tokenizer, same rows in the same order), then write the rows as TFRecord shards
(trainer/data/shards.py), so a run on a big corpus reads files with tf.data
instead of holding every block in memory and in the graph. The doctor's data
checks run here too, and their findings are kept beside the shards.
"""

import os
import time

import ml_collections
import numpy as np

from trainer import data as data_lib
from trainer import diagnosis
from trainer import filesystem
from trainer import model as model_lib
from trainer import reporting
from trainer import settings
from trainer.data.shards import (DATA_FIELD_DEFAULTS, DATA_FIELDS, FORMAT, MANIFEST, MIN_TRAIN_SHARDS, SHARD_NAME,
                                 row_differences, read_manifest, row_bytes, shard_count, write_split)
from trainer.errors import UserError
from trainer.run import inputs

# The data audit of the doctor, run here because only this step reads the documents.
DOCTOR_FILES = ("doctor.json", "doctor.md")


# ----------------------------------------------------------------------------- reading


# ----------------------------------------------------------------------------- writing


# ----------------------------------------------------------------------------- preparing


def _settings(config, tokenizer) -> dict:
    """The manifest's part that decides the rows, knowable before any tokenizing."""
    return {
        "tunewell_prepared": FORMAT,
        "tokenizer": {"name_or_path": config.model.tokenizer or config.model.name_or_path,
                      "vocab_size": len(tokenizer), "eos_token_id": tokenizer.eos_token_id,
                      "pad_token_id": tokenizer.pad_token_id, "sha256": data_lib.tokenizer_hash(tokenizer)},
        "block_size": config.data.block_size,
        "batching": settings.batching_of(config.data),
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
    differences = row_differences(manifest, config, wanted["tokenizer"]["sha256"])
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
    # inputs.prepare reads the corpus as the trainer does; with prepared_dir cleared,
    # it tokenizes in memory rather than reading the folder we are about to write.
    started = time.perf_counter()
    in_memory = ml_collections.ConfigDict(config.to_dict())
    in_memory.data.prepared_dir = ""
    prep = inputs.prepare(in_memory, log)
    train_blocks, val_blocks = prep.train_blocks, prep.val_blocks
    wanted = _settings(config, prep.tokenizer)
    fingerprint = data_lib.data_fingerprint(train_blocks, val_blocks)
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
        findings, audit_stats = diagnosis.run_checks(prep.config, prep,
                                                     diagnosis.estimate_parameters(prep.model_config))
        log(diagnosis.terminal_summary(findings))

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
        diagnosis.write_outputs(findings, audit_stats, folder)
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
