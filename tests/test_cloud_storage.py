"""A whole run on gs://, through the local Cloud Storage server of tests/gcs_server.py.

Prepared data and every output on gs://: TensorBoard's EventAccumulator reads the
logs back from the bucket, a run killed after a checkpoint resumes from the
bucket, the export downloads and loads, and nothing lands in a local `gs:`
folder. A missing bucket stops the run at once with a message naming it.
"""

import os
import time
import uuid

import pytest

from tests.conftest import ROOT, cli_args, quiet, run_cli, small_config
from tests.gcs_server import BUCKET
from trainer import filesystem
from trainer import model as model_lib
from trainer.model import load as model_load

OVERRIDES = {"train.max_steps": 20, "train.eval_every_steps": 10, "train.log_every_steps": 5,
             "preflight": "off"}


def test_a_run_with_prepared_data_and_outputs_on_gcs(gcs_server, tmp_path, corpus_file, tiny_model_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    base = f"gs://{BUCKET}/run-{uuid.uuid4().hex[:8]}"
    config = small_config(f"{base}/out", corpus_file, tiny_model_dir, **OVERRIDES)
    args = cli_args(config, **{**OVERRIDES, "data.prepared_dir": f"{base}/prepared", "export_serving": True})

    prepared = run_cli("trainer.prepare", *args, env=gcs_server.env)
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    assert filesystem.exists(f"{base}/prepared/manifest.json")

    # Killed right after the checkpoint at step 10 was written to the bucket ...
    killed = run_cli("trainer.task", *args, env={**gcs_server.env, "TUNEWELL_FAULT": "after_checkpoint_save@10"})
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert filesystem.exists(f"{base}/out/checkpoints/ckpt-10.index")
    # ... and relaunched: it resumes from there, on prepared data, without tokenizing.
    resumed = run_cli("trainer.task", *args, env=gcs_server.env)
    output = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, output[-3000:]
    assert f"Resuming from {base}/out/checkpoints/ckpt-10 at step 10 of 20." in output
    assert "not tokenized again" in output and "Tokenizing" not in output

    report = filesystem.read_json(f"{base}/out/report.json")
    assert report["steps"] == 20 and report["best_val_loss"] < report["initial_val_loss"]
    assert report["export_dir"] == f"{base}/out/export"
    for name in ("config.json", "metrics.jsonl", "report.md", "curves.png"):
        assert filesystem.exists(f"{base}/out/{name}"), name

    events = EventAccumulator(f"{base}/out/logs/validation")
    events.Reload()
    assert [e.step for e in events.Tensors("loss")] == [0, 10, 20]

    # The export is complete (its marker) and loads, downloaded or straight from the bucket.
    assert filesystem.is_complete(report["export_dir"])
    local = filesystem.download_dir(report["export_dir"], str(tmp_path / "export"))
    model, _ = model_lib.load_model(local, log=quiet)
    remote, _ = model_lib.load_model(report["export_dir"], log=quiet)
    assert model_lib.count_parameters(model) == model_lib.count_parameters(remote) > 0
    assert filesystem.is_complete(f"{base}/out/export_pytorch")
    # The serving SavedModel too, and the server loads it from the bucket as from AIP_STORAGE_URI.
    from deploy import serve

    assert report["serving_dir"] == f"{base}/out/serving" and filesystem.is_complete(report["serving_dir"])
    served = serve.Model(report["serving_dir"])
    (prediction,) = served.run(served.rows({"instances": [{"prompt": "a", "max_new_tokens": 3}]}, 4))
    assert 1 <= len(prediction["token_ids"]) <= 3

    assert not os.path.exists(os.path.join(ROOT, "gs:"))  # nothing went around the filesystem layer


def test_data_files_on_gcs_read_as_local_ones(gcs_server, tmp_path, corpus_file):
    import pandas as pd

    from trainer import data

    base = f"gs://{BUCKET}/data-{uuid.uuid4().hex[:8]}"
    local = data.read_documents(corpus_file, "--config.data.train_files", "text", "")
    filesystem.write_text(f"{base}/a.jsonl", open(corpus_file).read())
    pd.DataFrame({"text": local[:10]}).to_parquet(tmp_path / "b.parquet")
    filesystem.write_file(f"{base}/b.parquet", lambda tmp: os.replace(tmp_path / "b.parquet", tmp))
    remote = data.read_documents(f"{base}/*.jsonl,{base}/b.parquet", "--config.data.train_files", "text", "")
    assert remote == local + local[:10]


def test_a_missing_bucket_is_named_before_any_work(gcs_server, corpus_file, tiny_model_dir):
    config = small_config("gs://no-such-bucket-tunewell/run", corpus_file, tiny_model_dir)
    started = time.monotonic()
    result = run_cli("trainer.task", *cli_args(config), env=gcs_server.env, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "the bucket gs://no-such-bucket-tunewell does not exist" in result.stderr
    assert "gcloud storage buckets create" in result.stderr
    assert time.monotonic() - started < 60  # TensorFlow alone would retry forever
    assert "Tokenizing" not in result.stdout + result.stderr  # checked before any data is read
    prepared = run_cli("trainer.prepare", *cli_args(config, **{
        "output_dir": "runs/unused", "data.prepared_dir": "gs://no-such-bucket-tunewell/prepared"}),
        env=gcs_server.env, timeout=120)
    assert prepared.returncode == 2 and "the bucket gs://no-such-bucket-tunewell does not exist" in prepared.stderr


def test_a_gcs_folder_is_published_whole_and_a_cached_copy_follows_a_new_publish(gcs_server):
    from trainer.errors import UserError

    url = f"gs://{BUCKET}/published-{uuid.uuid4().hex[:8]}"

    def version(text):
        def write(tmp):
            with open(os.path.join(tmp, "weights.txt"), "w") as f:
                f.write(text)
        return write

    filesystem.publish_dir(url, version("one"))
    assert filesystem.is_complete(url)
    first = model_load._download_model_dir(url)
    assert open(os.path.join(first, "weights.txt")).read() == "one"
    filesystem.publish_dir(url, version("two"))  # same names and sizes, a new publish
    assert open(os.path.join(model_load._download_model_dir(url), "weights.txt")).read() == "two"
    filesystem.remove(f"{url}/{filesystem.COMPLETE_MARKER}")  # what a kill mid-publish leaves
    with pytest.raises(UserError, match="not a complete model folder"):
        model_load._download_model_dir(url)
