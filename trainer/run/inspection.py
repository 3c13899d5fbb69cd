"""Which training rows each worker of a job would read (`python -m trainer.prepare --inspect=FOLDER`).

For every worker index it runs the trainer's own input pipeline on the
prepared folder (the two functions data.pipeline.train_dataset_fn hands a
run's strategy: shard_batches, then pipeline_batches) in the mode that yields
each row's identity (shard, row in shard) instead of its tokens: the same
file order, interleave, shuffle, global batches and slicing. It then counts,
for one epoch, how often each row of the folder was read. A user can check a
folder and a worker count before paying for a job.
"""

import dataclasses
import json

import numpy as np

from configs import default
from trainer import filesystem
from trainer.data import pipeline
from trainer.data import shards as shards_lib
from trainer.errors import UserError


@dataclasses.dataclass
class Coverage:
    """One epoch of a job on a prepared folder, counted row by row."""
    rows: int          # training rows in the folder (its manifest)
    read_once: int     # rows read by exactly one worker, once
    read_more: int     # rows read more than once in the epoch (by one worker or several)
    unseen: int        # rows no worker read in the epoch
    dropped: int       # rows - steps x global_batch: the remainder smaller than one global batch
    unlisted: int      # rows read that the manifest does not list (a shard file longer than it says)
    workers: int
    epoch: int
    global_batch: int
    steps: int         # steps of one epoch: rows // global_batch, as optimization.plan_training counts them
    seed: int
    shards: int

    @property
    def exact(self) -> bool:
        """Every row read exactly once, but for the dropped remainder."""
        return (self.read_more == 0 and self.unseen == self.dropped and self.read_once + self.dropped == self.rows
                and self.unlisted == 0)

    def to_json(self) -> dict:
        return {**dataclasses.asdict(self), "exact": self.exact}

    def describe(self, folder: str) -> str:
        """e.g. '1,600 training rows ...' with one line per count and the verdict."""
        per_worker = self.global_batch // self.workers
        lines = [
            f"{folder}: {self.rows:,} training rows in {self.shards} shard(s). Epoch {self.epoch} on "
            f"{self.workers} worker(s): {self.steps:,} steps of a global batch of {self.global_batch} "
            f"({per_worker} rows a worker), seed {self.seed}.",
            f"  read once:              {self.read_once:,}",
            f"  read more than once:    {self.read_more:,}",
            f"  never read:             {self.unseen:,}",
            f"  dropped remainder:      {self.dropped:,} ({self.rows:,} - {self.steps:,} x {self.global_batch}; "
            "fewer than one global batch, other rows each epoch)",
        ]
        if self.unlisted:
            lines.append(f"  not in the manifest:    {self.unlisted:,} (a shard file holds more rows than "
                         "manifest.json lists)")
        if self.exact:
            lines.append("Every row is read exactly once in the epoch, but for the dropped remainder.")
        else:
            lines.append("NOT EXACT: rows are read more than once, never, or are not in the manifest (expected: "
                         "only the dropped remainder unread). A shard file changed since its preparation gives "
                         "this: prepare the folder again with --overwrite. Otherwise please report it, with "
                         "the folder's manifest.json.")
        return "\n".join(lines)


def epoch_coverage(folder: str, workers: int, global_batch: int, epoch: int, seed: int | None = None) -> Coverage:
    """Count how often each training row of `folder` is read in `epoch` by a job of `workers`;
    seed None: the seed the folder was prepared with."""
    import tensorflow as tf

    if workers < 1:
        raise UserError(f"--workers={workers}: a job has at least 1 worker.")
    if epoch < 0:
        raise UserError(f"--epoch={epoch}: epochs count from 0 (the first).")
    if not filesystem.exists(filesystem.join(folder, shards_lib.MANIFEST)):
        raise UserError(f"--inspect={folder} holds no {shards_lib.MANIFEST}: it is not a prepared folder, or its "
                        "preparation did not finish (the manifest is written last). Give the folder that "
                        "python -m trainer.prepare wrote (its --config.data.prepared_dir).")
    manifest = shards_lib.read_manifest(folder)
    seed = manifest["seed"] if seed is None else seed
    if global_batch % workers:
        raise UserError(f"--config.train.batch_size={global_batch} does not divide over --workers={workers}: "
                        "each worker takes an equal slice of every global batch. Use a multiple of "
                        f"{workers}, e.g. --config.train.batch_size={global_batch // workers * workers or workers}.")
    train = manifest["splits"]["train"]
    rows = int(train["rows"])
    steps = rows // global_batch  # as optimization.plan_training: the remainder is dropped each epoch
    if steps < 1:
        raise UserError(f"{folder} holds {rows:,} training row(s), fewer than one global batch of "
                        f"--config.train.batch_size={global_batch}: a run would refuse it. Lower the batch size.")
    shards = pipeline.Shards(shards_lib.shard_paths(folder, manifest, "train"), rows, manifest["block_size"])
    listed = np.array([int(s["rows"]) for s in train["shards"]])
    first_row = np.concatenate([[0], np.cumsum(listed)])  # of each shard, in the folder
    # The trainer's dataset_fn (pipeline.train_dataset_fn) is shard_batches, the same on every
    # worker (it is given nothing about workers), then pipeline_batches, the worker's slice.
    # So the global batches are read once and kept (16 bytes a row: 3 MB for 195k rows),
    # not once per worker (64 workers x 1.2 GB), and each worker's slice is cut from them.
    batches = pipeline.shard_batches(shards, global_batch, steps, (epoch + 1) * steps, epoch * steps, seed,
                                     identities=True).cache()
    counts, unlisted = np.zeros(rows, np.int64), 0
    for worker in range(workers):
        # One replica a worker: how a worker splits its slice over its devices does not change its rows.
        context = tf.distribute.InputContext(num_input_pipelines=workers, input_pipeline_id=worker,
                                             num_replicas_in_sync=workers)
        for batch in pipeline.pipeline_batches(batches, context, global_batch, shards.block_size,
                                               identities=True).as_numpy_iterator():
            shard, row = batch[:, 0], batch[:, 1]
            inside = row < listed[shard]
            unlisted += int((~inside).sum())
            np.add.at(counts, first_row[shard[inside]] + row[inside], 1)
    return Coverage(rows=rows, read_once=int((counts == 1).sum()), read_more=int((counts > 1).sum()),
                    unseen=int((counts == 0).sum()), dropped=rows - steps * global_batch, unlisted=unlisted,
                    workers=workers,
                    epoch=epoch, global_batch=global_batch, steps=steps, seed=seed, shards=len(shards.paths))


def inspect(folder: str, workers: int, epoch: int, config=None, as_json: bool = False, out=print) -> int:
    """trainer.prepare --inspect: print the epoch's coverage; the exit status, 0 when exact, else 1.

    The global batch and seed come from `config` (train.batch_size, seed) when given;
    otherwise configs/default.py's train.batch_size and the seed the folder was
    prepared with (a run with prepare's --config flags uses that seed)."""
    folder = filesystem.expand(folder)
    if config is None:
        coverage = epoch_coverage(folder, workers, default.get_config().train.batch_size, epoch)
    else:
        coverage = epoch_coverage(folder, workers, config.train.batch_size, epoch, config.seed)
    out(json.dumps(coverage.to_json()) if as_json else coverage.describe(folder))
    return 0 if coverage.exact else 1
