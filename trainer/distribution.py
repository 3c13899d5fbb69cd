"""Distribution: the one place that chooses a tf.distribute strategy.

Everything else is written as a single-replica view run through
`strategy.run`, so adding multi-worker and TPU strategies changes only this
module (and nothing else may read TF_CONFIG).
"""

from trainer.errors import UserError

STRATEGIES = ("auto", "default", "one_device", "mirrored")


def configure_devices(runtime_config) -> None:
    """Split the CPU into runtime.cpu_devices logical devices, before TensorFlow runs any op.

    With 2 logical CPUs a MirroredStrategy has 2 replicas on a laptop, so the
    multi-replica arithmetic (the global-token-mean loss, the cross-replica
    gradient sum) is exercised where there is no GPU. It shares the same cores:
    a correctness tool, not a speed-up."""
    import tensorflow as tf

    wanted = runtime_config.cpu_devices
    if wanted <= 1:
        return
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(wanted)])
    except RuntimeError:  # TensorFlow already started in this process
        have = len(tf.config.list_logical_devices("CPU"))
        if have != wanted:
            raise UserError(f"--config.runtime.cpu_devices={wanted}: TensorFlow had already started with {have} "
                            "logical CPU(s) in this process; set it in a fresh process (the CLI does).") from None


def get_strategy(runtime_config, log=print):
    import tensorflow as tf

    name = runtime_config.strategy
    if name not in STRATEGIES:
        raise UserError(f"--config.runtime.strategy={name!r}: use one of {', '.join(STRATEGIES)}.")
    configure_devices(runtime_config)
    gpus = tf.config.list_logical_devices("GPU")
    cpus = tf.config.list_logical_devices("CPU")
    if name == "auto":
        name = "mirrored" if len(gpus) > 1 or (not gpus and len(cpus) > 1) else "default"
    if name == "default":
        strategy = tf.distribute.get_strategy()
    elif name == "one_device":
        strategy = tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
    elif gpus:
        strategy = tf.distribute.MirroredStrategy()  # every visible GPU
    else:
        strategy = tf.distribute.MirroredStrategy([d.name for d in cpus])  # logical CPUs
    log(f"Strategy: {name} ({type(strategy).__name__}), {strategy.num_replicas_in_sync} replica(s).")
    return strategy


def check_batch(strategy, global_batch: int, grad_accum_steps: int) -> None:
    """Every replica gets the same rows, split evenly into accumulation micro-batches."""
    replicas = strategy.num_replicas_in_sync
    if global_batch % (replicas * grad_accum_steps):
        raise UserError(f"--config.train.batch_size={global_batch} must divide evenly over {replicas} "
                        f"replicas x {grad_accum_steps} accumulation steps.")


def describe_batch(strategy, global_batch: int, block_size: int) -> str:
    """e.g. '2 replica(s) x 8 rows = global batch 16 rows x 128 tokens = 2,048 tokens/step'."""
    replicas = strategy.num_replicas_in_sync
    return (f"{replicas} replica(s) x {global_batch // replicas} rows = global batch {global_batch} rows x "
            f"{block_size} tokens = {global_batch * block_size:,} tokens/step.")
