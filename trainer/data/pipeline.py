"""Input pipelines: Blocks in memory or prepared shards to tf.data datasets with static
shapes, an exact order per epoch from the seed, split across input pipelines."""

import dataclasses

import numpy as np

from trainer.data import shards as shards_lib
from trainer.data.blocks import FIELDS, IGNORE_INDEX, Blocks


# Rows held in the shuffle buffer when reading prepared shards: about 64 MB
# whatever the corpus size (512-token rows: 64 MB / (512 x 3 arrays x 4 bytes) = 10,922 rows).
SHUFFLE_BUFFER_BYTES = 64 * 2**20


def epoch_order(rows: int, seed: int, epoch: int) -> np.ndarray:
    """The row order of one epoch: a fixed function of (seed, epoch), so a resumed
    run sees exactly the batches the interrupted one would have."""
    return np.random.default_rng([seed, epoch]).permutation(rows)


def train_order(rows: int, global_batch: int, steps_per_epoch: int, total_steps: int, start_step: int,
                seed: int) -> np.ndarray:
    """Row indices of the global batches for steps start_step .. total_steps-1, concatenated.

    Each epoch shuffles the rows and keeps steps_per_epoch full batches
    (static shapes on every step, as TPUs and XLA require)."""
    per_epoch = steps_per_epoch * global_batch
    last_epoch = (total_steps - 1) // steps_per_epoch
    first_epoch = start_step // steps_per_epoch
    order = np.concatenate([epoch_order(rows, seed, e)[:per_epoch] for e in range(first_epoch, last_epoch + 1)])
    skip = (start_step - first_epoch * steps_per_epoch) * global_batch
    return order[skip: skip + (total_steps - start_step) * global_batch]


def _rows_dataset(blocks: Blocks, order: np.ndarray, rows_per_element: int):
    """Elements of `rows_per_element` rows gathered from in-memory blocks in `order`.

    A generator, not tf.constant / from_tensor_slices: the arrays stay numpy on
    the host instead of becoming graph constants (a GraphDef is capped at 2 GB,
    about 170M tokens, and the constant is a second and third copy in memory)."""
    import tensorflow as tf

    width = blocks.input_ids.shape[1]

    def rows():
        for start in range(0, len(order) - rows_per_element + 1, rows_per_element):
            index = order[start: start + rows_per_element]
            yield {k: getattr(blocks, k)[index] for k in FIELDS}

    signature = {k: tf.TensorSpec([rows_per_element, width], tf.int32) for k in FIELDS}
    return tf.data.Dataset.from_generator(rows, output_signature=signature)


def _pipeline_order(order: np.ndarray, global_batch: int, pipelines: int, pipeline: int) -> np.ndarray:
    """This input pipeline's rows of each global batch: replicas are numbered worker
    by worker, so worker i's replicas hold the i-th contiguous slice of every batch,
    and each replica gets the rows it would get from one global batch split in order."""
    per_pipeline = global_batch // pipelines
    return order.reshape(-1, pipelines, per_pipeline)[:, pipeline].reshape(-1)


def train_dataset(blocks: Blocks, global_batch: int, steps_per_epoch: int, total_steps: int,
                  start_step: int, seed: int):
    """Global batches (one device's view) for steps start_step .. total_steps-1."""
    import tensorflow as tf

    order = train_order(blocks.rows, global_batch, steps_per_epoch, total_steps, start_step, seed)
    return _rows_dataset(blocks, order, global_batch).prefetch(tf.data.AUTOTUNE)


@dataclasses.dataclass
class Shards:
    """Training rows prepared by `python -m trainer.prepare`: TFRecord files read in turn."""
    paths: list[str]
    rows: int
    block_size: int


def _shards_dataset(shards: Shards, per_replica_batch: int, local_replicas: int, pipelines: int,
                    pipeline: int, steps_per_epoch: int, total_steps: int, start_step: int, seed: int):
    """Per-replica batches read from shard files, one epoch after another.

    Each epoch: the files in a (seed, epoch) order; FILE sharding (each worker
    reads every N-th file) when there are at least as many files as workers,
    else DATA sharding (every worker reads all files and keeps every N-th row);
    files interleaved, rows shuffled in a bounded seeded buffer, and exactly
    steps_per_epoch batches per replica (a worker whose files hold fewer rows
    wraps around within the epoch), so every worker runs the same number of
    steps. The order is a function of (seed, epoch, worker): a resumed run
    skips the batches already trained in its epoch and sees what an
    uninterrupted one would have.
    """
    import tensorflow as tf

    files = shards.paths
    by_file = len(files) >= pipelines
    buffer_rows = max(1, SHUFFLE_BUFFER_BYTES // (shards.block_size * 4 * len(FIELDS)))
    elements_per_epoch = steps_per_epoch * local_replicas

    def epoch(e: int):
        ordered = [files[i] for i in np.random.default_rng([seed, e]).permutation(len(files))]
        ds = tf.data.Dataset.from_tensor_slices(ordered)
        if by_file:
            ds = ds.shard(pipelines, pipeline)
        ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=min(len(files), 8),
                           num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.map(lambda record: shards_lib.parse_example(record, shards.block_size), tf.data.AUTOTUNE)
        if not by_file:
            ds = ds.shard(pipelines, pipeline)
        ds = ds.shuffle(buffer_rows, seed=seed * 100_003 + e * 101 + pipeline)
        return ds.repeat().batch(per_replica_batch, drop_remainder=True).take(elements_per_epoch)

    first_epoch, last_epoch = start_step // steps_per_epoch, (total_steps - 1) // steps_per_epoch
    ds = epoch(first_epoch)
    for e in range(first_epoch + 1, last_epoch + 1):
        ds = ds.concatenate(epoch(e))
    skip = (start_step - first_epoch * steps_per_epoch) * local_replicas
    return ds.skip(skip).take((total_steps - start_step) * local_replicas)


def distributed_train_data(strategy, source, global_batch: int, steps_per_epoch: int, total_steps: int,
                           start_step: int, seed: int):
    """The training input for `strategy`: one pipeline per worker, per-replica batches.

    `source` is in-memory Blocks (rows gathered in the resumable global order
    above) or Shards (files, see _shards_dataset). Either way no row is a graph
    constant and every batch has the same static shape."""
    import tensorflow as tf

    def dataset_fn(context):
        per_replica = context.get_per_replica_batch_size(global_batch)
        local_replicas = context.num_replicas_in_sync // context.num_input_pipelines
        if isinstance(source, Shards):
            ds = _shards_dataset(source, per_replica, local_replicas, context.num_input_pipelines,
                                 context.input_pipeline_id, steps_per_epoch, total_steps, start_step, seed)
        else:
            order = train_order(source.rows, global_batch, steps_per_epoch, total_steps, start_step, seed)
            order = _pipeline_order(order, global_batch, context.num_input_pipelines, context.input_pipeline_id)
            ds = _rows_dataset(source, order, per_replica)
        return ds.prefetch(tf.data.AUTOTUNE)

    return strategy.distribute_datasets_from_function(dataset_fn)


def filled_rows(blocks: Blocks, global_batch: int, pad_token_id: int) -> Blocks:
    """All rows, then fully masked filler rows up to a multiple of global_batch.

    Filler rows have no attention and only IGNORE_INDEX labels, so they add
    nothing to the loss sums while every batch keeps the same static shape."""
    filler = (-blocks.rows) % global_batch
    width = blocks.input_ids.shape[1]
    return dataclasses.replace(
        blocks,
        input_ids=np.concatenate([blocks.input_ids, np.full([filler, width], pad_token_id, np.int32)]),
        attention_mask=np.concatenate([blocks.attention_mask, np.zeros([filler, width], np.int32)]),
        labels=np.concatenate([blocks.labels, np.full([filler, width], IGNORE_INDEX, np.int32)]))


def eval_dataset(blocks: Blocks, global_batch: int, pad_token_id: int):
    """All validation rows in global batches (one device's view), the last one filled."""
    import tensorflow as tf

    filled = filled_rows(blocks, global_batch, pad_token_id)
    return _rows_dataset(filled, np.arange(filled.rows), global_batch).prefetch(tf.data.AUTOTUNE)


def distributed_eval_data(strategy, blocks: Blocks, global_batch: int, pad_token_id: int):
    """Validation rows for `strategy`, each pipeline its slice of every global batch."""
    import tensorflow as tf

    filled = filled_rows(blocks, global_batch, pad_token_id)

    def dataset_fn(context):
        order = _pipeline_order(np.arange(filled.rows), global_batch, context.num_input_pipelines,
                                context.input_pipeline_id)
        per_replica = context.get_per_replica_batch_size(global_batch)
        return _rows_dataset(filled, order, per_replica).prefetch(tf.data.AUTOTUNE)

    return strategy.distribute_datasets_from_function(dataset_fn)
