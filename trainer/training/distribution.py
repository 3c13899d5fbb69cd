"""Distribution: the one place that knows strategies, TF_CONFIG, who is chief,
worker-local folders, precision and the agreed stop.

Everything else is written as a single-replica view run through
`strategy.run`; nothing outside this module reads TF_CONFIG.

Which strategy (runtime.strategy=auto):
  a TPU found (TPU_NAME set, or a TPU VM's /dev/accel0)  -> tpu (TPUStrategy)
  TF_CONFIG names more than one task                     -> multi_worker (MultiWorkerMirroredStrategy)
  more than one GPU, or runtime.cpu_devices > 1          -> mirrored (MirroredStrategy)
  otherwise                                              -> default (one device)

Multi-worker layouts: Vertex AI's (a `chief` task in pool 0 plus `worker`
tasks in pool 1, and extra keys such as `environment` and `job`) and a plain
`worker`-only one, where worker 0 is the chief. Only the chief writes to the
output directory; the other workers save their (identical) checkpoints to a
worker-local temporary folder that is deleted (TF Model Garden's rule: a save
may read variables in a way that needs every worker to take part, so every
worker saves, but only one copy is kept).
"""

import dataclasses
import functools
import hashlib
import json
import os
import shutil
import tempfile

from trainer.errors import UserError
from trainer.settings import STRATEGIES

# A collective that has waited this long means a peer is gone; MultiWorkerMirroredStrategy's
# health check (a ping every 30 s, 3 tries of 10 s) usually notices sooner and aborts with
# UnavailableError. 30 min covers the longest legitimate wait: the chief exporting a
# large model or generating samples while the others wait at the next step.
COLLECTIVE_TIMEOUT_SECONDS = 30 * 60


# ----------------------------------------------------------------------------- the cluster


@dataclasses.dataclass(frozen=True)
class Cluster:
    """This process's place in the job, from TF_CONFIG (one task when it is unset)."""
    workers: int = 1       # processes that train (chief + workers)
    task_type: str = ""    # "chief", "worker" or "" (no TF_CONFIG)
    task_index: int = 0
    is_chief: bool = True  # the one process that writes outputs

    @property
    def name(self) -> str:
        return f"{self.task_type}:{self.task_index}" if self.task_type else "local"


def cluster(environ=None) -> Cluster:
    environ = os.environ if environ is None else environ
    raw = environ.get("TF_CONFIG", "")
    if not raw.strip():
        return Cluster()
    try:
        tf_config = json.loads(raw)
        spec, task = tf_config.get("cluster", {}), tf_config.get("task", {})
        task_type, task_index = str(task.get("type", "")), int(task.get("index", 0))
    except (ValueError, AttributeError, TypeError):
        raise UserError(f"TF_CONFIG is not valid JSON with 'cluster' and 'task' keys: {raw[:200]!r}. "
                        "Unset it for a single-machine run.") from None
    workers = len(spec.get("chief", [])) + len(spec.get("worker", []))
    if task_type not in ("chief", "worker") and workers:
        raise UserError(f"TF_CONFIG task type {task_type!r} is not chief or worker: tunewell trains "
                        "with chief and worker tasks only (no parameter servers or evaluators).")
    is_chief = task_type == "chief" or (task_type == "worker" and task_index == 0 and "chief" not in spec)
    return Cluster(max(workers, 1), task_type, task_index, is_chief if workers else True)


def worker_dir(output_dir: str, cluster_info: Cluster) -> str:
    """Where this process writes: the output directory for the chief, a local temporary
    folder for the others (remove it with remove_worker_dir). Its name is fixed per task
    and run, so a relaunch after a SIGKILL removes what the killed process left."""
    if cluster_info.is_chief:
        return output_dir
    run = hashlib.sha1(output_dir.encode()).hexdigest()[:10]
    path = os.path.join(tempfile.gettempdir(), f"tunewell-{cluster_info.task_type}{cluster_info.task_index}-{run}")
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


def remove_worker_dir(path: str, cluster_info: Cluster) -> None:
    if not cluster_info.is_chief:
        shutil.rmtree(path, ignore_errors=True)


# ----------------------------------------------------------------------------- devices and precision


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


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set:
    """The CPU's feature flags as the kernel reports them (empty where there is no /proc)."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def auto_precision(strategy, flags=None, gpu_capabilities=None) -> tuple:
    """(policy, why) for runtime.precision=auto, from what the hardware computes natively.

    - TPU: bfloat16 is its native matmul type -> mixed_bfloat16.
    - GPU: compute capability >= 8.0 (A100, L4, H100) has bfloat16 tensor cores ->
      mixed_bfloat16; older ones (T4, V100) have float16 tensor cores -> mixed_float16
      (with loss scaling).
    - CPU: mixed_bfloat16 only with avx512_bf16 or amx_bf16. Measured on an Intel with
      AVX-512 BF16 (matmul 339 vs 214-225 GFLOP/s) and on an AMD EPYC with avx512_bf16
      (406 vs 223; a distilgpt2-shaped step 1.63x faster, held-out loss unchanged; make
      bench). A CPU without them (AVX2 only) has no bfloat16 arithmetic to gain from, so
      float32 is kept there; not measured, as no such machine was at hand (capping oneDNN
      at AVX2 on the AMD machine refuses bfloat16 matmuls outright).
    """
    import tensorflow as tf

    if "TPUStrategy" in class_name(strategy):
        return "mixed_bfloat16", "TPU"
    if gpu_capabilities is None:
        gpu_capabilities = [tf.config.experimental.get_device_details(gpu).get("compute_capability") or (0, 0)
                            for gpu in tf.config.list_physical_devices("GPU")]
    if gpu_capabilities:
        oldest = min(gpu_capabilities)
        if oldest >= (8, 0):
            return "mixed_bfloat16", f"GPU compute capability {oldest[0]}.{oldest[1]} has bfloat16 units"
        return "mixed_float16", f"GPU compute capability {oldest[0]}.{oldest[1]} has float16 units, not bfloat16"
    native = sorted((cpu_flags() if flags is None else flags) & {"avx512_bf16", "amx_bf16"})
    if native:
        return "mixed_bfloat16", f"this CPU has {' and '.join(native)}"
    return "float32", "this CPU has no native bfloat16 (no avx512_bf16 or amx_bf16 flag)"


def set_precision(runtime_config, strategy, log=print) -> str:
    """Sets the Keras mixed-precision policy for every layer built after this call; returns it.

    mixed_bfloat16 / mixed_float16: matmuls and activations in 16 bits, weights
    and optimizer state in float32 (the export is float32). float16's range is
    small, so its losses are scaled (optimization.make_optimizer wraps the
    optimizer in a LossScaleOptimizer); bfloat16 has float32's range and needs none.
    """
    import tensorflow as tf

    policy = runtime_config.precision
    if policy == "auto":
        policy, why = auto_precision(strategy)
        log(f"Precision: {policy} (runtime.precision=auto: {why}).")
    tf.keras.mixed_precision.set_global_policy(policy)
    return policy


def uses_loss_scaling(precision: str) -> bool:
    return precision == "mixed_float16"


def agreed_mean(strategy, value: float) -> float:
    """The mean of a number over every replica of every worker: the same on all of them."""
    import tensorflow as tf

    if input_pipelines(strategy) <= 1:
        return value
    return float(_vote_counter(strategy)(tf.constant(float(value)))) / strategy.num_replicas_in_sync


def from_chief(strategy, value: float, chief: bool) -> float:
    """The chief's number on every worker (e.g. a task metric only the chief computes,
    which then picks the best weights everywhere): the others add 0 to a sum over replicas,
    and the chief's value is counted once per local replica (replicas are spread evenly)."""
    import tensorflow as tf

    pipelines = input_pipelines(strategy)
    if pipelines <= 1:
        return value
    total = float(_vote_counter(strategy)(tf.constant(float(value) if chief else 0.0)))
    return total / (strategy.num_replicas_in_sync / pipelines)


def steps_per_call(strategy, step_seconds: float, log_every_steps: int, target_call_seconds: float = 2.0) -> int:
    """runtime.steps_per_execution=None: as many steps per compiled call as fit in about 2 s.

    A host round trip per step costs a few milliseconds, which matters when a
    step takes tens of them (a TPU, a small model) and not when it takes seconds.
    Bounding a call to ~2 s keeps a stop request (SIGTERM) answered within ~2 s
    of training. Every worker must run the same number of steps per call (each
    step is a collective), so the figure is agreed (the mean step time).
    """
    seconds = max(agreed_mean(strategy, step_seconds), 1e-6)
    return max(1, min(log_every_steps, int(target_call_seconds / seconds)))


# ----------------------------------------------------------------------------- strategies


def tpu_hint(environ=None) -> bool:
    """Cheap signs of a TPU, checked before asking a resolver (which on a machine
    without one may wait on the cloud metadata server)."""
    environ = os.environ if environ is None else environ
    return bool(environ.get("TPU_NAME")) or _tpu_device_here()


def _tpu_device_here() -> bool:
    """This machine's own TPU chips: /dev/accel* (v2-v4), /dev/vfio/* (v5e and later)."""
    return os.path.exists("/dev/accel0") or os.path.exists("/dev/vfio/0")


def choose(runtime_config, cluster_info: Cluster, gpus: int, environ=None) -> str:
    """The strategy name `auto` resolves to (see the module docstring)."""
    name = runtime_config.strategy
    if name != "auto":
        return name
    if tpu_hint(environ):
        return "tpu"
    if cluster_info.workers > 1:
        return "multi_worker"
    if gpus > 1 or (not gpus and runtime_config.cpu_devices > 1):
        return "mirrored"
    return "default"


def get_strategy(runtime_config, log=print, environ=None):
    """Build the strategy. Call it before any other TensorFlow op: MultiWorkerMirroredStrategy
    and the TPU system must be set up at program start."""
    import tensorflow as tf

    if runtime_config.strategy not in STRATEGIES:
        raise UserError(f"--config.runtime.strategy={runtime_config.strategy!r}: use one of "
                        f"{', '.join(STRATEGIES)}.")
    info = cluster(environ)
    configure_devices(runtime_config)
    gpus = tf.config.list_physical_devices("GPU")
    name = choose(runtime_config, info, len(gpus), environ)
    if name == "multi_worker":
        if info.workers < 2 and runtime_config.strategy == "multi_worker":
            log("TF_CONFIG names one task: multi_worker runs as a one-worker job.")
        strategy = tf.distribute.MultiWorkerMirroredStrategy(
            communication_options=tf.distribute.experimental.CommunicationOptions(
                timeout_seconds=COLLECTIVE_TIMEOUT_SECONDS))
    elif name == "tpu":
        strategy = _tpu_strategy(runtime_config)
    elif name == "default":
        strategy = tf.distribute.get_strategy()
    elif name == "one_device":
        strategy = tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
    elif gpus:
        strategy = tf.distribute.MirroredStrategy()  # every visible GPU
    else:
        cpus = tf.config.list_logical_devices("CPU")
        strategy = tf.distribute.MirroredStrategy([d.name for d in cpus])  # logical CPUs
    log(f"Strategy: {name} ({class_name(strategy)}), {strategy.num_replicas_in_sync} replica(s)"
        + (f" on {info.workers} workers; this is {info.name}{' (chief)' if info.is_chief else ''}"
           if info.workers > 1 else "") + ".")
    return strategy


def class_name(strategy) -> str:
    """The public name (MultiWorkerMirroredStrategy is CollectiveAllReduceStrategy inside)."""
    name = type(strategy).__name__
    return {"CollectiveAllReduceStrategy": "MultiWorkerMirroredStrategy",
            "_DefaultDistributionStrategy": "default"}.get(name, name)


def tpu_address(runtime_config, environ=None):
    """What to hand TPUClusterResolver: runtime.tpu when set; "local" on a TPU VM (the
    chips are this machine's devices, as on a Vertex AI TPU job, and the resolver's
    default would look for a TPU node by name instead); else None (TPU_NAME)."""
    environ = os.environ if environ is None else environ
    if runtime_config.tpu:
        return runtime_config.tpu
    if not environ.get("TPU_NAME") and _tpu_device_here():
        return "local"
    return None


def _tpu_strategy(runtime_config):
    import tensorflow as tf

    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu_address(runtime_config))
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, tf.errors.OpError, RuntimeError) as e:
        raise UserError(f"--config.runtime.strategy=tpu: no TPU found ({str(e).splitlines()[0][:200]}). Run on "
                        "a TPU VM (the image in deploy/ pins tensorflow-tpu 2.20), set "
                        "--config.runtime.tpu=NAME for a TPU node, or use another strategy.") from None
    return tf.distribute.TPUStrategy(resolver)


def input_pipelines(strategy) -> int:
    """Input pipelines (one per worker process): each reads 1/N of every global batch."""
    return strategy.extended._num_workers if hasattr(strategy.extended, "_num_workers") else 1


# ----------------------------------------------------------------------------- batches


def check_batch(strategy, global_batch: int, grad_accum_steps: int, eval_batch: int | None = None) -> None:
    """Every replica gets the same rows, split evenly into accumulation micro-batches; the
    evaluation batch (validation, test) splits evenly over the replicas too."""
    replicas = strategy.num_replicas_in_sync
    if global_batch % (replicas * grad_accum_steps):
        fit = replicas * grad_accum_steps
        raise UserError(f"--config.train.batch_size={global_batch} must divide evenly over {replicas} "
                        f"replicas x {grad_accum_steps} accumulation steps: use a multiple of {fit}, e.g. "
                        f"--config.train.batch_size={max(fit, global_batch // fit * fit)}.")
    if eval_batch and eval_batch % replicas:
        raise UserError(f"--config.eval.batch_size={eval_batch} must divide evenly over {replicas} replicas: use a "
                        f"multiple of {replicas}, e.g. --config.eval.batch_size={max(replicas, eval_batch // replicas * replicas)}, "
                        "or leave it unset to use train.batch_size.")


def describe_batch(strategy, global_batch: int, block_size: int) -> str:
    """e.g. '2 replica(s) x 8 rows = global batch 16 rows x 128 tokens = 2,048 tokens/step'."""
    replicas = strategy.num_replicas_in_sync
    return (f"{replicas} replica(s) x {global_batch // replicas} rows = global batch {global_batch} rows x "
            f"{block_size} tokens = {global_batch * block_size:,} tokens/step.")


# ----------------------------------------------------------------------------- agreement


class PeerLost(Exception):
    """A worker of a multi-worker job stopped (killed, preempted, its machine lost):
    collectives cannot complete, so every other worker exits too."""

    def __init__(self, cluster_info: Cluster, error):
        first = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
        super().__init__(
            f"{cluster_info.name}: another worker of this {cluster_info.workers}-worker job stopped ({first}). "
            "Relaunch the whole job with the same command: it resumes from the last checkpoint.")


def peer_errors():
    """The TensorFlow errors a collective raises when a peer is gone."""
    import tensorflow as tf

    return (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.CancelledError)


def agree(strategy, flag: bool) -> bool:
    """True when any worker's flag is true, the same answer on every worker.

    Every worker must call this at the same points (it is a collective), so a
    stop requested on one worker (SIGTERM) stops all of them at the same step,
    and nobody waits forever in a collective for a peer that left."""
    import tensorflow as tf

    if input_pipelines(strategy) <= 1:
        return flag
    return float(_vote_counter(strategy)(tf.constant(1.0 if flag else 0.0))) > 0.0


@functools.lru_cache(maxsize=None)
def _vote_counter(strategy):
    """A compiled all-reduce of one flag (eager collectives are slow and warn)."""
    import tensorflow as tf

    @tf.function
    def count(flag):
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(tf.identity, args=(flag,)), axis=None)
    return count


def barrier(strategy) -> None:
    """Wait until every worker gets here (e.g. after the chief wrote files others read)."""
    agree(strategy, False)
