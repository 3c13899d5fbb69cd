"""Input pipelines: Blocks in memory or prepared shards to tf.data datasets with static
shapes, an exact order per epoch from the seed, split across input pipelines."""

import dataclasses

import numpy as np

from trainer.data import shards as shards_lib
from trainer.data.blocks import FIELDS, IGNORE_INDEX, Blocks


# Rows shuffled together when reading prepared shards: about 64 MB whatever the
# corpus size (512-token rows: 64 MB / (512 x 3 arrays x 4 bytes) = 10,922 rows).
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


# Shard files read at once, one record from each in turn. Fixed, not the worker
# count, so that every worker builds the same global stream whatever the job's size.
READ_FILES = 16

# What reading the global stream on every worker costs. Each worker reads every
# byte of an epoch and parses only its slice: a 100M-token corpus packed at 512
# is 195k rows x 6,234 bytes = 1.2 GB per epoch, read by each of 16 workers
# (19 GB in all, against 1.2 GB when each reads its own files). The rate that
# matters is the training's: GPT-2 124M trains at about 150k tokens/s on one A100
# (6 x 124M FLOPs a token at ~40% of 312 TFLOP/s), and every worker must read the
# whole job's tokens at 12.2 bytes a token (6,234 / 512): 16 workers of one GPU
# -> 2.4M tokens/s -> 29 MB/s a worker; 16 workers of 8 GPUs -> 234 MB/s. Reading
# TFRecords runs at hundreds of MB/s a machine (local disk or gs://), so up to
# about a hundred GPUs the extra reading hides behind the steps; beyond that it
# is the bottleneck, and the job needs shards laid out per worker instead.


def shard_batches(shards: Shards, global_batch: int, steps_per_epoch: int, total_steps: int, start_step: int,
                  seed: int, identities: bool = False):
    """The global batches of steps start_step .. total_steps-1, the same on every worker:
    serialized records, or with `identities` each row's [shard, row in shard] (int64).

    Each epoch e: the shard files in a (seed, e) permutation, READ_FILES read at
    once and interleaved; windows of about SHUFFLE_BUFFER_BYTES of rows, each
    permuted by a stateless seed from (seed, e, window); global batches of
    exactly global_batch rows, steps_per_epoch of them: every row is in at most
    one batch of the epoch, and the rows left (fewer than one batch when
    steps_per_epoch = rows // global_batch, as optimization.plan_training sets
    it) are dropped. Nothing depends on the worker count, TensorFlow's global
    seed or the resume point: a resumed run skips whole global batches. Each
    worker then keeps its slice (pipeline_batches)."""
    import tensorflow as tf

    if steps_per_epoch * global_batch > shards.rows:
        raise ValueError(f"{steps_per_epoch} steps of {global_batch} rows need more than the {shards.rows} rows "
                         "of the shards: steps_per_epoch is at most rows // global_batch")
    paths = tf.constant(shards.paths)
    # Rows a window holds: 64 MB / (512 x 3 arrays x 4 bytes) = 10,922 rows of 512 tokens.
    window = max(1, SHUFFLE_BUFFER_BYTES // (shards.block_size * 4 * len(FIELDS)))

    def records(index, path):
        rows = tf.data.TFRecordDataset(path)
        if identities:  # the same records, counted: the very same order and slicing downstream
            return rows.enumerate().map(lambda row, _: tf.stack([index, row]))
        return rows

    def epoch(e, files):
        key = tf.stack([tf.constant(seed, tf.int64), e])
        stream = tf.data.Dataset.from_tensor_slices((files, tf.gather(paths, files))).interleave(
            records, cycle_length=min(len(shards.paths), READ_FILES), block_length=1,
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        # A stateless permutation, not Dataset.shuffle: its seed would be combined with
        # TensorFlow's global seed (tf.random.set_seed), which the trainer sets and
        # other callers (trainer.prepare --inspect, tests) may not.
        stream = stream.batch(window).enumerate().map(
            lambda w, rows: tf.random.experimental.stateless_shuffle(
                rows, tf.random.experimental.stateless_fold_in(key, w, alg="philox"), alg="philox"))
        return stream.unbatch().batch(global_batch, drop_remainder=True).take(steps_per_epoch)

    first_epoch = start_step // steps_per_epoch
    last_epoch = max(first_epoch, (total_steps - 1) // steps_per_epoch)  # one, taken 0 times, when all done
    epochs = np.arange(first_epoch, last_epoch + 1, dtype=np.int64)
    files = np.stack([np.random.default_rng([seed, e]).permutation(len(shards.paths)) for e in epochs])
    batches = tf.data.Dataset.from_tensor_slices((epochs, files.astype(np.int64))).flat_map(epoch)
    return batches.skip(start_step - first_epoch * steps_per_epoch).take(total_steps - start_step)


def pipeline_batches(batches, context, global_batch: int, block_size: int, identities: bool = False):
    """This input pipeline's per-replica batches, cut from the global `batches` (shard_batches).

    As _pipeline_order does for rows in memory: replicas are numbered worker by
    worker, so pipeline i keeps the i-th contiguous slice of every global batch
    and its replicas that slice's consecutive parts. Every pipeline cutting its
    slice from the same global batches, each row of an epoch is read exactly once
    across all workers, in an order that does not depend on their number. Only
    the slice is parsed; with `identities` nothing is (trainer.prepare --inspect)."""
    import tensorflow as tf

    per_pipeline = global_batch // context.num_input_pipelines
    low = context.input_pipeline_id * per_pipeline
    ds = batches.map(lambda batch: batch[low: low + per_pipeline]).unbatch()
    if not identities:
        ds = ds.map(lambda record: shards_lib.parse_example(record, block_size), tf.data.AUTOTUNE)
    return ds.batch(context.get_per_replica_batch_size(global_batch), drop_remainder=True)


def _shards_dataset(shards: Shards, per_replica_batch: int, local_replicas: int, pipelines: int,
                    pipeline: int, steps_per_epoch: int, total_steps: int, start_step: int, seed: int,
                    identities: bool = False):
    """Per-replica batches of input pipeline `pipeline` of `pipelines`, read from shard files."""
    import tensorflow as tf

    context = tf.distribute.InputContext(num_input_pipelines=pipelines, input_pipeline_id=pipeline,
                                         num_replicas_in_sync=pipelines * local_replicas)
    global_batch = per_replica_batch * local_replicas * pipelines
    batches = shard_batches(shards, global_batch, steps_per_epoch, total_steps, start_step, seed, identities)
    return pipeline_batches(batches, context, global_batch, shards.block_size, identities)


def train_dataset_fn(source, global_batch: int, steps_per_epoch: int, total_steps: int, start_step: int,
                     seed: int, identities: bool = False):
    """dataset_fn(tf.distribute.InputContext) -> this pipeline's per-replica batches.

    `source` is in-memory Blocks (rows gathered in the resumable global order
    above) or Shards (files: shard_batches, then pipeline_batches). Either way no row is a graph
    constant and every batch has the same static shape. `identities` (Shards
    only): each row's [shard, row in shard] instead of its tokens."""
    import tensorflow as tf

    if identities and not isinstance(source, Shards):
        raise ValueError("identities are read from Shards only")

    def dataset_fn(context):
        if isinstance(source, Shards):
            batches = shard_batches(source, global_batch, steps_per_epoch, total_steps, start_step, seed, identities)
            ds = pipeline_batches(batches, context, global_batch, source.block_size, identities)
        else:
            order = train_order(source.rows, global_batch, steps_per_epoch, total_steps, start_step, seed)
            order = _pipeline_order(order, global_batch, context.num_input_pipelines, context.input_pipeline_id)
            ds = _rows_dataset(source, order, context.get_per_replica_batch_size(global_batch))
        return ds.prefetch(tf.data.AUTOTUNE)

    return dataset_fn


def distributed_train_data(strategy, source, global_batch: int, steps_per_epoch: int, total_steps: int,
                           start_step: int, seed: int):
    """The training input for `strategy`: one pipeline per worker, per-replica batches."""
    return strategy.distribute_datasets_from_function(
        train_dataset_fn(source, global_batch, steps_per_epoch, total_steps, start_step, seed))


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
