"""Distribution: the one place that chooses a tf.distribute strategy.

Everything else is written as a single-replica view run through
`strategy.run`, so adding multi-worker and TPU strategies changes only this
module (and nothing else may read TF_CONFIG).
"""

from trainer.errors import UserError

STRATEGIES = ("auto", "default", "one_device", "mirrored")


def get_strategy(runtime_config, log=print):
    import tensorflow as tf

    name = runtime_config.strategy
    if name not in STRATEGIES:
        raise UserError(f"--config.runtime.strategy={name!r}: use one of {', '.join(STRATEGIES)}.")
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        name = "mirrored" if len(gpus) > 1 else "default"
    if name == "default":
        strategy = tf.distribute.get_strategy()
    elif name == "one_device":
        strategy = tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
    else:
        strategy = tf.distribute.MirroredStrategy()
    log(f"Strategy: {name} ({type(strategy).__name__}), {strategy.num_replicas_in_sync} replica(s).")
    return strategy


def check_batch(strategy, global_batch: int, grad_accum_steps: int) -> None:
    """Every replica gets the same rows, split evenly into accumulation micro-batches."""
    replicas = strategy.num_replicas_in_sync
    if global_batch % (replicas * grad_accum_steps):
        raise UserError(f"--config.train.batch_size={global_batch} must divide evenly over {replicas} "
                        f"replicas x {grad_accum_steps} accumulation steps.")
