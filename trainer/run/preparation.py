"""Prepare data once (`python -m trainer.prepare`): read, split, tokenize and pack (or
pad) the corpus with the Beam pipeline of beam_prepare.py, into the rows a training
run makes in memory (trainer/run/inputs.py: same split, same tokenizer, same rows as a
multiset), written as TFRecord shards (trainer/data/shards.py), so a run on a big
corpus reads files with tf.data instead of holding every row in memory. The doctor's
data audit runs inside the pipeline, and its findings are kept beside the shards.
"""

import hashlib
import os
import time

import numpy as np

from trainer import data as data_lib
from trainer import diagnosis
from trainer.diagnosis import audit
from trainer import filesystem
from trainer import model as model_lib
from trainer import reporting
from trainer import settings
from trainer.data import shards as shards_lib
from trainer.data.shards import (DATA_FIELD_DEFAULTS, DATA_FIELDS, FORMAT, MANIFEST, SHARD_NAME, read_manifest,
                                 row_differences)
from trainer.errors import UserError
from trainer.run import beam_prepare, inputs, local_prepare

# The data audit of the doctor, run here because only this step reads the documents.
DOCTOR_FILES = ("doctor.json", "doctor.md")


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
                                      ("validation", config.data.validation_files),
                                      ("test", config.data.test_files)) if spec},
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
        differences.append("the files of --config.data.train_files/validation_files/test_files (sizes or names "
                           "changed)")
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
            or n in DOCTOR_FILES or n.startswith(beam_prepare.RESULTS)]
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


def _clean(folder: str, created: bool):
    """Remove what a failed pipeline wrote (shards, results), and the folder if it made it."""
    if created:
        filesystem.remove(folder)
        return
    for name in filesystem.listdir(folder):
        if SHARD_NAME.match(name) or name.startswith(beam_prepare.RESULTS):
            filesystem.remove(filesystem.join(folder, name))


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


def _tokenizer_and_model_config(config, log):
    """The run's tokenizer and model config; a tiny model (model.bootstrap_tiny) is built
    first from the documents, read in memory: tiny models are for small corpora."""
    documents = []
    if config.model.bootstrap_tiny and not filesystem.isdir(config.model.name_or_path):
        documents = data_lib.load_documents(config.data, config.seed).train
    return inputs.tokenizer_and_model_config(config, documents, log)


def _audit_findings(answer: dict, folder: str, manifest: dict, tokenizer) -> tuple[list, dict]:
    """The pipeline's audit (on up to diagnosis.AUDIT_TEXT_BYTES of text), plus the label
    checks on the first training rows written, errors first."""
    result = answer["audit"]
    findings = [audit.Finding(**f) for f in result["findings"]]
    if result["sampled"] < result["documents"]:
        findings.append(diagnosis.sample_finding(result["sampled"], result["documents"]))
    sample = shards_lib.read_blocks(folder, manifest, "train", max_rows=2000)
    findings += diagnosis.label_findings(sample, tokenizer.eos_token_id)
    findings.sort(key=lambda f: audit.SEVERITIES.index(f.severity))
    return findings, result["stats"]


# Runners of trainer.prepare: "local" streams the pipeline's steps through local disk in
# bounded memory (local_prepare.py); Beam's DirectRunner holds every step's output in
# memory (~270 bytes a token measured, bench/prepare.md) and is for checking the Beam
# graph on small data before a Dataflow job; DataflowRunner runs it on Google Cloud.
LOCAL = "local"
RUNNERS = (LOCAL, "DirectRunner", "DataflowRunner")


def runner_options(config, runner: str, project=None, region=None, temp_location=None, sdk_container_image=None,
                   max_num_workers=None, extra=()) -> list[str]:
    """Beam options for `runner`, checked: Dataflow's workers see only Google Cloud, so
    its flags must be there and every path they read or write must be gs://."""
    given = {"--project": project, "--region": region, "--temp_location": temp_location,
             "--sdk_container_image": sdk_container_image}
    if runner != "DataflowRunner":
        named = [flag for flag, value in given.items() if value] + (["--max_num_workers"] if max_num_workers else [])
        if named:
            raise UserError(f"{', '.join(named)} only apply with --runner=DataflowRunner; --runner={runner} runs "
                            "on this machine (--direct_num_workers processes).")
        return list(extra)
    missing = [flag for flag, value in given.items() if not value]
    if missing:
        raise UserError(f"--runner=DataflowRunner needs {', '.join(missing)}: e.g. --project=my-project "
                        "--region=us-central1 --temp_location=gs://BUCKET/tmp "
                        "--sdk_container_image=us-central1-docker.pkg.dev/my-project/tunewell/tunewell-dataflow:latest "
                        "(README \"Prepared data\"; deploy/dataflow.py fills them in).")
    paths = {"--temp_location": temp_location, "--config.data.prepared_dir": config.data.prepared_dir,
             "--config.data.train_files": config.data.train_files,
             "--config.data.validation_files": config.data.validation_files,
             "--config.data.test_files": config.data.test_files,
             "--config.model.tokenizer": config.model.tokenizer or config.model.name_or_path}
    local = [f"{flag}={value}" for flag, value in paths.items() if value and not filesystem.is_remote(value)]
    if local:
        raise UserError(f"Dataflow's workers cannot see this machine's files: {', '.join(local)}. Copy them to "
                        "gs:// (gsutil cp -r) and pass the gs:// paths.")
    options = [f"--project={project}", f"--region={region}", f"--temp_location={temp_location}",
               f"--sdk_container_image={sdk_container_image}",
               # The image holds this package and its pinned dependencies: workers need nothing staged.
               "--experiments=use_runner_v2", "--sdk_location=container"]
    if max_num_workers:
        options.append(f"--max_num_workers={max_num_workers}")
    return options + list(extra)


def prepare_data(config, num_shards: int | None = None, log=reporting.say, overwrite: bool = False,
                 runner: str = LOCAL, direct_num_workers: int | None = None,
                 pipeline_options=()) -> dict:
    """Read, split, tokenize and pack once into config.data.prepared_dir with the Beam
    pipeline of beam_prepare.py (or its steps streamed on this machine: local_prepare.py);
    returns the manifest.

    num_shards: training shards (None = derived, see SHARD_BYTES); validation is
    always derived. runner: LOCAL and "DirectRunner" run on this machine in
    direct_num_workers processes (None or 1 = in this process); "DataflowRunner" with
    pipeline_options (--project, --region, --temp_location, --sdk_container_image)
    on Google Cloud. Nothing is removed until the settings are checked; the
    manifest, written last, marks the folder complete."""
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

    # ------------------------------------------------------------------ tokenizer and model config
    started = time.perf_counter()
    tokenizer, model_config = _tokenizer_and_model_config(config, log)
    wanted = _settings(config, tokenizer)
    if manifest is not None and not overwrite:  # the tokenizer had to be built first
        differences = _differences(manifest, config, wanted, num_shards)
        if differences:
            _refuse(folder, differences)
        return _already(folder, manifest, log)

    # ------------------------------------------------------------------ the pipeline: shards, counts, audit
    created = not filesystem.exists(folder)
    filesystem.makedirs(folder)
    for name in ours:  # the manifest first: the folder reads as incomplete until the new one lands
        filesystem.remove(filesystem.join(folder, name))
    workers = direct_num_workers or 1
    where = {LOCAL: "on this machine, streamed through its temp folder", "DirectRunner": "with Beam's DirectRunner",
             "DataflowRunner": "with Beam's DataflowRunner"}[runner]
    log(f"Preparing {folder} {where}{f' in {workers} process(es)' if runner != 'DataflowRunner' else ''} ...")
    width = config.data.block_size
    bytes_per_row = len(shards_lib.serialize_row(*np.zeros([3, width], np.int32))) + shards_lib.RECORD_FRAMING
    audit_settings = {"enabled": config.preflight != "off", "block_size": width,
                      "batching": settings.batching_of(config.data), "n_positions": model_config.n_positions,
                      "seed": config.seed, "normalized": list(data_lib.parse_normalize(config.data.normalize)),
                      "text_separator": config.data.text_separator}
    tokenizer_path = config.model.tokenizer or config.model.name_or_path
    try:
        if runner == LOCAL:
            answer = local_prepare.run(config, folder, tokenizer_path, tokenizer.pad_token_id, num_shards,
                                       bytes_per_row, audit_settings, workers)
        else:
            answer = beam_prepare.run(config, folder, tokenizer_path, tokenizer.pad_token_id, num_shards,
                                      bytes_per_row, audit_settings, runner, workers, pipeline_options)
        for split in ("train", "validation"):
            if not answer[split]["stats"]["rows"]:
                raise UserError(f"The {split} documents of {config.data.train_files} make no row of "
                                f"{width} tokens. Add data, or lower --config.data.block_size.")
    except UserError:  # bad data or flags found mid-pipeline: leave the folder as it was before
        _clean(folder, created)
        raise
    finished = time.perf_counter()

    # ------------------------------------------------------------------ doctor files, then the manifest
    splits = {split: {"rows": sum(s["rows"] for s in answer[split]["shards"]), "shards": answer[split]["shards"],
                      "stats": answer[split]["stats"],
                      "bytes": sum(s["rows"] for s in answer[split]["shards"]) * bytes_per_row}
              for split in ("train", "validation", "test") if split in answer}
    fingerprint = {"train_rows": splits["train"]["rows"], "train_tokens": splits["train"]["stats"]["tokens"],
                   "validation_rows": splits["validation"]["rows"],
                   "validation_tokens": splits["validation"]["stats"]["tokens"],
                   "sha256": hashlib.sha256((answer["train"]["sha256"] + answer["validation"]["sha256"]).encode())
                   .hexdigest()}
    manifest = {**wanted, "splits": splits, "data_fingerprint": fingerprint,
                "document_lengths_train": answer["train"]["lengths"]}
    if config.preflight != "off":
        findings, audit_stats = _audit_findings(answer, folder, manifest, tokenizer)
        log(diagnosis.terminal_summary(findings))
        diagnosis.write_outputs(findings, audit_stats, folder)
    filesystem.write_json(filesystem.join(folder, MANIFEST), manifest)  # last: its presence means complete

    for split in splits:
        entry, stats = splits[split], splits[split]["stats"]
        log(f"Wrote {split}: {entry['rows']:,} rows of {width} tokens ({stats['tokens']:,} tokens of "
            f"{stats['documents']:,} documents) in {len(entry['shards'])} shard(s), "
            f"{entry['bytes'] / 2**20:,.1f} MB.")
    tokens = sum(entry["stats"]["tokens"] for entry in splits.values())
    log(f"Prepared {folder} in {time.perf_counter() - started:.1f} s (pipeline {finished - started:.1f} s, "
        f"{tokens / max(finished - started, 1e-9):,.0f} tokens/s).")
    return manifest
