"""Epochs on prepared shards: every row read exactly once per epoch across all workers
(the remainder smaller than one global batch dropped), the same global batches
whatever the worker count, resumable at any step; and `trainer.prepare --inspect`,
which counts it on a folder through the same pipeline.

Shards here are tiny: row r holds the value r in every position, so a parsed
row names itself, and its identity (shard, row in shard) names it too."""

import collections
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT, run_cli, write_shards
from trainer import filesystem
from trainer.data import pipeline, shards as shards_lib
from trainer.data.blocks import Blocks
from trainer.errors import UserError
from trainer.run import inspection

BLOCK = 4
SEED = 7


def write_folder(folder, rows: int, num_shards: int, manifest_rows=None) -> pipeline.Shards:
    """`rows` rows (row r all r) in num_shards shards, and the manifest fields the reader uses;
    manifest_rows: the rows per shard the manifest claims, when they should differ from the files'."""
    os.makedirs(folder, exist_ok=True)
    ids = np.repeat(np.arange(rows, dtype=np.int32)[:, None], BLOCK, axis=1)
    blocks = Blocks(ids, np.ones_like(ids), ids, documents=rows, tokens=rows * BLOCK)
    shards = write_shards(blocks, str(folder), "train", num_shards)
    if manifest_rows:
        shards = [{**s, "rows": n} for s, n in zip(shards, manifest_rows)]
    filesystem.write_json(os.path.join(folder, shards_lib.MANIFEST), {
        "tunewell_prepared": shards_lib.FORMAT, "block_size": BLOCK, "seed": SEED,
        "splits": {"train": {"rows": sum(s["rows"] for s in shards), "shards": shards}}})
    return pipeline.Shards([os.path.join(folder, s["file"]) for s in shards], sum(s["rows"] for s in shards),
                           BLOCK)


def context(workers: int, worker: int, replicas_per_worker: int = 1):
    import tensorflow as tf

    return tf.distribute.InputContext(num_input_pipelines=workers, input_pipeline_id=worker,
                                      num_replicas_in_sync=workers * replicas_per_worker)


def global_batches(shards, workers: int, replicas_per_worker: int, global_batch: int, total_steps: int,
                   start_step: int = 0, seed: int = SEED) -> list[list[int]]:
    """Each step's global batch as row numbers: every worker's per-replica batches, parsed
    by the trainer's own dataset_fn, put back together in replica order."""
    steps_per_epoch = shards.rows // global_batch
    dataset_fn = pipeline.train_dataset_fn(shards, global_batch, steps_per_epoch, total_steps, start_step, seed)
    per_worker = []
    for worker in range(workers):
        batches = [b["input_ids"][:, 0].tolist() for b in dataset_fn(context(workers, worker, replicas_per_worker))
                   .as_numpy_iterator()]
        assert len(batches) == (total_steps - start_step) * replicas_per_worker
        per_worker.append([sum(batches[s: s + replicas_per_worker], [])
                           for s in range(0, len(batches), replicas_per_worker)])
    return [sum((steps[s] for steps in per_worker), []) for s in range(total_steps - start_step)]


# ----------------------------------------------------------------------------- coverage


@pytest.mark.parametrize("num_shards", [1, 16, 17, 100])
def test_every_row_is_read_exactly_once_per_epoch_for_any_worker_count(tmp_path, num_shards):
    """203 rows; global batch 3 rows a worker: 64 workers -> 1 step of 192, 11 rows dropped."""
    write_folder(tmp_path, 203, num_shards)
    for workers in (1, 2, 3, 5, 16, 17, 64):
        global_batch = 3 * workers
        epoch = workers % 3  # epochs 0, 1 and 2: each has its own order
        coverage = inspection.epoch_coverage(str(tmp_path), workers, global_batch, epoch)
        assert coverage.dropped == 203 % global_batch and coverage.steps == 203 // global_batch
        assert (coverage.read_once + coverage.dropped, coverage.read_more, coverage.unseen) == (
            203, 0, coverage.dropped), (workers, coverage)
        assert coverage.exact


@pytest.mark.parametrize("rows, num_shards, workers, per_replica", [(1600, 16, 3, 16), (1600, 17, 16, 4)])
def test_parsed_rows_cover_the_epoch_once(tmp_path, rows, num_shards, workers, per_replica):
    """The cases the issue measured on FILE sharding, which read 56 rows twice and left 72 unseen
    (16 shards, 3 workers), 88 and 88 (17 shards, 16 workers): now none, but the remainder."""
    shards = write_folder(tmp_path, rows, num_shards)
    global_batch = workers * per_replica
    steps = rows // global_batch
    counts = collections.Counter()
    for worker in range(workers):  # the signature _shards_dataset has always had
        for batch in pipeline._shards_dataset(shards, per_replica, 1, workers, worker, steps, steps, 0, SEED):
            counts.update(batch["input_ids"][:, 0].numpy().tolist())
    dropped = rows - steps * global_batch
    assert sum(1 for n in counts.values() if n > 1) == 0
    assert (len(counts), rows - len(counts)) == (rows - dropped, dropped)


def test_identities_name_the_rows_the_trainer_reads(tmp_path):
    """--inspect's mode goes through the same ordering and slicing: its (shard, row) pairs
    are, batch for batch, the rows the training mode parses."""
    shards = write_folder(tmp_path, 90, 17)
    manifest = shards_lib.read_manifest(str(tmp_path))
    first_row = np.cumsum([0] + [s["rows"] for s in manifest["splits"]["train"]["shards"]])
    for worker in range(3):
        rows = [b["input_ids"][:, 0].tolist() for b in pipeline.train_dataset_fn(
            shards, 12, 7, 14, 3, SEED)(context(3, worker, 2)).as_numpy_iterator()]
        ids = [(first_row[b[:, 0]] + b[:, 1]).tolist() for b in pipeline.train_dataset_fn(
            shards, 12, 7, 14, 3, SEED, identities=True)(context(3, worker, 2)).as_numpy_iterator()]
        assert rows == ids and len(rows) == (14 - 3) * 2


# ----------------------------------------------------------------------------- order and resume


def test_global_batches_do_not_depend_on_the_worker_count(tmp_path):
    """Global batch 16 over two epochs: 1 worker of 4 replicas, 2 of 2, 16 of 1."""
    shards = write_folder(tmp_path, 100, 17)  # 6 steps an epoch, 4 rows dropped
    one = global_batches(shards, 1, 4, 16, total_steps=12)
    assert global_batches(shards, 2, 2, 16, total_steps=12) == one
    assert global_batches(shards, 16, 1, 16, total_steps=12) == one
    first, second = sorted(sum(one[:6], [])), sorted(sum(one[6:], []))
    assert len(set(first)) == len(set(second)) == 96  # each epoch: every row once but 4
    assert one[:6] != one[6:]  # a new order each epoch
    assert global_batches(shards, 1, 4, 16, total_steps=12, seed=SEED + 1) != one


def test_a_resumed_run_continues_at_the_same_row_with_any_worker_count(tmp_path):
    shards = write_folder(tmp_path, 100, 16)  # global batch 12: 8 steps an epoch, 4 rows dropped
    straight = global_batches(shards, 2, 1, 12, total_steps=24)
    for start in (3, 8, 13):  # within the first epoch, at the second's start, within the second
        assert global_batches(shards, 3, 1, 12, total_steps=24, start_step=start) == straight[start:]
    assert global_batches(shards, 1, 2, 12, total_steps=24, start_step=13) == straight[13:]
    assert global_batches(shards, 2, 1, 12, total_steps=24, start_step=24) == []  # resumed at the end


def test_steps_beyond_the_rows_of_an_epoch_are_refused(tmp_path):
    shards = write_folder(tmp_path, 20, 2)
    with pytest.raises(ValueError, match="steps_per_epoch is at most rows // global_batch"):
        pipeline.train_dataset_fn(shards, 8, 3, 3, 0, SEED)(context(1, 0))  # 3 x 8 > 20


SAME_IN_ANOTHER_PROCESS = """
import json, sys
import trainer
import tensorflow as tf
from trainer.data import pipeline
shards = pipeline.Shards(sys.argv[1:], 100, 4)
def stream():
    ds = pipeline.train_dataset_fn(shards, 10, 10, 20, 0, 7, identities=True)(
        tf.distribute.InputContext(1, 0, 1))
    return [b.tolist() for b in ds.as_numpy_iterator()]
def shuffled():
    return [int(x) for x in tf.data.Dataset.range(50).shuffle(50, seed=3).as_numpy_iterator()]
before = (stream(), shuffled())
tf.random.set_seed(1234)  # as the trainer does with config.seed (tf.keras.utils.set_random_seed)
print("RESULT" + json.dumps({"before": before, "after": (stream(), shuffled())}))
"""


def test_the_order_is_the_same_in_another_process_whatever_the_global_seed(tmp_path):
    """The shuffle is a stateless permutation keyed by (seed, epoch, window): the same in a
    second process, before and after tf.random.set_seed. Dataset.shuffle(seed=3), which it
    replaced, is the same in two processes too, but changes with the global seed, which
    the trainer sets and --inspect does not."""
    import tensorflow as tf

    shards = write_folder(tmp_path, 100, 5)
    done = subprocess.run([sys.executable, "-c", SAME_IN_ANOTHER_PROCESS, *shards.paths], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    other = json.loads(done.stdout.split("RESULT", 1)[1])
    here = [b.tolist() for b in pipeline.train_dataset_fn(shards, 10, 10, 20, 0, SEED, identities=True)(
        context(1, 0)).as_numpy_iterator()]
    assert here == other["before"][0] == other["after"][0]
    assert len({tuple(r) for batch in here[:10] for r in batch}) == 100  # one epoch: every row once
    # Dataset.shuffle(seed=3) in the same process changes when the global seed does. (Not
    # compared with this process: earlier tests in the suite set the global seed here.)
    assert other["before"][1] != other["after"][1]


# ----------------------------------------------------------------------------- trainer.prepare --inspect


def test_inspect_counts_a_folder_and_says_what_is_wrong(tmp_path):
    write_folder(tmp_path / "ok", 50, 3)
    lines = []
    assert inspection.inspect(str(tmp_path / "ok"), 4, 1, out=lines.append) == 0  # default batch 16: 3 steps
    assert "50 training rows in 3 shard(s). Epoch 1 on 4 worker(s): 3 steps of a global batch of 16" in lines[0]
    assert "never read:             2" in lines[0] and "exactly once" in lines[0]

    # A shard that no longer holds what its manifest lists: rows go unread, exit status 1.
    write_folder(tmp_path / "cut", 48, 3, manifest_rows=[16, 32, 16])  # 4 steps promised, 3 held
    lines = []
    assert inspection.inspect(str(tmp_path / "cut"), 2, 0, as_json=True, out=lines.append) == 1
    result = json.loads(lines[0])
    assert {k: result[k] for k in ("rows", "read_once", "read_more", "unseen", "dropped", "exact")} == {
        "rows": 64, "read_once": 48, "read_more": 0, "unseen": 16, "dropped": 0, "exact": False}

    with pytest.raises(UserError, match=r"--workers=0: a job has at least 1 worker"):
        inspection.inspect(str(tmp_path / "ok"), 0, 0)
    with pytest.raises(UserError, match=r"--inspect=.*missing holds no manifest.json"):
        inspection.inspect(str(tmp_path / "missing"), 2, 0)
    with pytest.raises(UserError, match=r"--config.train.batch_size=16 does not divide over --workers=3"):
        inspection.inspect(str(tmp_path / "ok"), 3, 0)
    with pytest.raises(UserError, match=r"fewer than one global batch of --config.train.batch_size=64"):
        inspection.epoch_coverage(str(tmp_path / "ok"), 16, 64, 0)


def test_inspect_command(tmp_path):
    write_folder(tmp_path, 100, 17)
    done = run_cli("trainer.prepare", f"--inspect={tmp_path}", "--workers=5", "--epoch=2", "--json",
                   "--config=configs/default.py", "--config.train.batch_size=15", "--config.seed=3")
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert {k: result[k] for k in ("rows", "read_once", "read_more", "unseen", "dropped")} == {
        "rows": 100, "read_once": 90, "read_more": 0, "unseen": 10, "dropped": 10}
    assert (result["workers"], result["epoch"], result["global_batch"], result["steps"], result["seed"]) == (
        5, 2, 15, 6, 3)
    refused = run_cli("trainer.prepare", f"--inspect={tmp_path}", "--workers=3")  # default batch 16
    assert refused.returncode == 2
    assert "error: --config.train.batch_size=16 does not divide over --workers=3" in refused.stderr
