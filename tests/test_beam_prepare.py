"""trainer.prepare's runners: the Beam pipeline (trainer/run/beam_prepare.py) on the
DirectRunner and its steps streamed on this machine (local_prepare.py), in one process or
several, write byte-identical shards; packing in many groups makes the in-memory path's
rows; a bad record found by a worker process is one clean error; and the Dataflow flags
are checked and become Beam's options (Dataflow itself cannot run here)."""

import hashlib
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT, cli_args, make_documents, quiet, run_cli, small_config, write_jsonl
from trainer.data import keys, shards as shards_lib
from trainer.errors import UserError
from trainer.run import beam_prepare, preparation, train
from tests.test_prepare import rows_of


def shard_digests(folder: str) -> dict:
    return {name: hashlib.sha256(open(os.path.join(folder, name), "rb").read()).hexdigest()
            for name in sorted(os.listdir(folder)) if name.endswith(".tfrecord")}


def test_every_runner_and_process_count_writes_the_same_shards(tmp_path, corpus_file, tiny_model_dir):
    """Where a document goes is a function of its key, not of the runner or the process that
    read it: local and Beam's DirectRunner, in one process and in two, write byte-identical
    shards and the same manifest."""
    config = small_config(tmp_path / "run", corpus_file, tiny_model_dir,
                          **{"data.prepared_dir": str(tmp_path / "local-1"), "data.test_fraction": 0.05})
    reference = preparation.prepare_data(config, log=quiet)  # local, this process
    folders = {"local-1": reference}
    direct = small_config(tmp_path / "run", corpus_file, tiny_model_dir,
                          **{"data.prepared_dir": str(tmp_path / "direct-1"), "data.test_fraction": 0.05})
    folders["direct-1"] = preparation.prepare_data(direct, log=quiet, runner="DirectRunner")
    for runner in ("local", "DirectRunner"):
        name = f"{runner}-2"
        done = run_cli("trainer.prepare", *cli_args(config, **{"data.prepared_dir": tmp_path / name}),
                       f"--runner={runner}", "--direct_num_workers=2")
        assert done.returncode == 0, done.stderr[-3000:]
        assert "in 2 process(es)" in done.stdout + done.stderr
        folders[name] = shards_lib.read_manifest(str(tmp_path / name))
    assert reference["splits"]["test"]["rows"] > 0  # the test split's branch of the pipeline ran
    for name, manifest in folders.items():
        assert manifest["data_fingerprint"] == reference["data_fingerprint"], name
        assert manifest["splits"] == reference["splits"], name
        assert manifest["document_lengths_train"] == reference["document_lengths_train"], name
        assert shard_digests(str(tmp_path / name)) == shard_digests(str(tmp_path / "local-1")), name
        assert sorted(os.listdir(tmp_path / name)) == sorted(os.listdir(tmp_path / "local-1")), name


def test_packing_in_many_groups_makes_the_in_memory_rows(tmp_path, corpus_file, tiny_model_dir, monkeypatch):
    """Groups of 400 tokens instead of 2**22, so this small corpus packs in several groups,
    on both runners (in this process: the patch holds) and in memory alike."""
    monkeypatch.setattr(keys, "GROUP_TOKENS", 400)
    config = small_config(tmp_path / "run", corpus_file, tiny_model_dir,
                          **{"data.prepared_dir": str(tmp_path / "prepared")})
    manifest = preparation.prepare_data(config, log=quiet)
    memory = train.prepare(small_config(tmp_path / "run", corpus_file, tiny_model_dir), log=quiet)
    assert keys.group_count(memory.train_blocks.stats()["tokens"]) >= 5
    read = shards_lib.read_blocks(config.data.prepared_dir, manifest, "train")
    assert rows_of(read) == rows_of(memory.train_blocks)
    direct = small_config(tmp_path / "run", corpus_file, tiny_model_dir,
                          **{"data.prepared_dir": str(tmp_path / "direct")})
    assert preparation.prepare_data(direct, log=quiet, runner="DirectRunner")["splits"] == manifest["splits"]
    assert shard_digests(str(tmp_path / "direct")) == shard_digests(str(tmp_path / "prepared"))
    # Each group drops its own tail (< one block): more groups, a few fewer tokens than one group.
    monkeypatch.setattr(keys, "GROUP_TOKENS", 2**22)
    whole = train.prepare(small_config(tmp_path / "run", corpus_file, tiny_model_dir), log=quiet)
    assert read.rows <= whole.train_blocks.rows
    assert read.stats()["documents"] == whole.train_blocks.stats()["documents"]


@pytest.mark.parametrize("runner", ["local", "DirectRunner"])
def test_a_bad_record_read_by_a_worker_process_is_one_clean_error(tmp_path, tiny_model_dir, runner):
    """A JSONL line that is not JSON, met mid-pipeline with two processes at work: exit 2, the
    file and line named, no traceback, and no folder left behind."""
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "a.jsonl", make_documents(60))
    bad = data / "b.jsonl"
    bad.write_text('{"text": "one"}\n{"text": "two"}\n{"text": "three\n')
    config = small_config(tmp_path / "run", str(data / "*.jsonl"), tiny_model_dir)
    folder = tmp_path / "prepared"
    done = run_cli("trainer.prepare", *cli_args(config, **{"data.prepared_dir": folder}), f"--runner={runner}",
                   "--direct_num_workers=2")
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"{bad}" in done.stderr and "line 3" in done.stderr
    assert "Traceback" not in done.stderr
    assert not folder.exists()


def test_dataflow_flags_are_checked_before_anything_runs(tmp_path, corpus_file, tiny_model_dir):
    config = small_config(tmp_path / "run", corpus_file, tiny_model_dir,
                          **{"data.prepared_dir": str(tmp_path / "prepared")})
    with pytest.raises(UserError, match="--project, --region, --temp_location, --sdk_container_image"):
        preparation.runner_options(config, "DataflowRunner")
    cloud = dict(project="p", region="us-central1", temp_location="gs://b/tmp", sdk_container_image="img")
    with pytest.raises(UserError, match="cannot see this machine's files: --config.data.prepared_dir="):
        preparation.runner_options(config, "DataflowRunner", **cloud)
    with pytest.raises(UserError, match="only apply with --runner=DataflowRunner"):
        preparation.runner_options(config, "DirectRunner", project="p")

    remote = small_config("gs://b/run", "gs://b/data/*.jsonl", "gs://b/model",
                          **{"data.prepared_dir": "gs://b/prepared"})
    options = preparation.runner_options(remote, "DataflowRunner", max_num_workers=32, **cloud,
                                         extra=["--machine_type=n2-standard-4"])
    from apache_beam.options.pipeline_options import GoogleCloudOptions, WorkerOptions

    parsed = beam_prepare.pipeline_options("DataflowRunner", 1, options)
    cloud_options, workers = parsed.view_as(GoogleCloudOptions), parsed.view_as(WorkerOptions)
    assert (cloud_options.project, cloud_options.region, cloud_options.temp_location) == ("p", "us-central1",
                                                                                           "gs://b/tmp")
    assert (workers.sdk_container_image, workers.max_num_workers, workers.machine_type) == ("img", 32,
                                                                                            "n2-standard-4")


def test_the_dataflow_launcher_prints_the_prepare_command_it_runs():
    args = ["--config=configs/default.py", "--config.data.train_files=gs://b/corpus/*.jsonl",
            "--config.data.prepared_dir=gs://b/prepared/c512"]
    done = subprocess.run([sys.executable, "-m", "deploy.dataflow", "--project=p", "--temp_location=gs://b/tmp",
                           "--dry_run", "--", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    printed = done.stdout.strip().split()
    assert printed[1:3] == ["-m", "trainer.prepare"]
    assert "--runner=DataflowRunner" in printed and "--max_num_workers=32" in printed
    assert "--sdk_container_image=us-central1-docker.pkg.dev/p/tunewell/tunewell-dataflow:latest" in printed
    assert all(arg in done.stdout for arg in ("gs://b/corpus/", "gs://b/prepared/c512"))

    local = subprocess.run([sys.executable, "-m", "deploy.dataflow", "--project=p", "--temp_location=gs://b/tmp",
                            "--dry_run", "--", "--config=configs/default.py", "--config.data.train_files=data/x.jsonl",
                            "--config.data.prepared_dir=gs://b/p"], cwd=ROOT, capture_output=True, text=True,
                           timeout=120)
    assert local.returncode == 2 and "--config.data.train_files=data/x.jsonl" in local.stderr
    assert "gs://" in local.stderr


def test_a_corpus_too_small_for_one_row_leaves_no_folder(tmp_path, tiny_model_dir):
    """Found only once the pipeline has written its shards: the error names the block size, and
    the folder it made is gone (a later run must not read half a preparation)."""
    path = write_jsonl(tmp_path / "tiny.jsonl", ["One note.", "Two notes.", "Three notes here."])
    config = small_config(tmp_path / "run", path, tiny_model_dir, **{
        "data.prepared_dir": str(tmp_path / "prepared"), "data.block_size": 64, "data.batching": "packed"})
    with pytest.raises(UserError, match="make no row of 64 tokens.*--config.data.block_size"):
        preparation.prepare_data(config, log=quiet)
    assert not (tmp_path / "prepared").exists()
