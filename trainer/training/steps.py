"""The update step and the evaluation step, written as a single-replica view.

Loss = (sum of token cross-entropies over every supervised token of the GLOBAL
batch) / (number of those tokens). Each replica divides its own sum by the
global count (an all-reduce of the per-replica counts), and the replicas'
gradients are summed, so the result equals the one-device loss exactly even
when replicas hold different amounts of padding. (transformers' TF loss
averages per replica first, which weights a padded replica's tokens more.)
"""

from trainer import faults
from trainer.model import documents
from trainer.data import IGNORE_INDEX


def token_sums(logits, labels, with_accuracy: bool = True):
    """(loss_sum, supervised_count[, correct_count]) over the supervised positions.

    Position t predicts token t+1. The labels are shifted left by one, with
    IGNORE_INDEX in the freed last column, instead of slicing logits[:, :-1]:
    the slice copied the whole [batch, T-1, vocab] float32 tensor at every
    step (4 x 50,257 x 511 x 4 bytes = 411 MB at distilgpt2's batch 4, 512
    tokens). This is the one and only shift; the data never pre-shifts.
    The accuracy's argmax reads the full logits again, so only evaluation asks for it.
    """
    import tensorflow as tf

    logits = tf.cast(logits, tf.float32)  # a no-op in float32; bfloat16 logits are scored in float32
    losses, mask, targets = token_losses(logits, labels)
    sums = (tf.reduce_sum(losses), tf.reduce_sum(mask))
    if not with_accuracy:
        return sums
    correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=targets.dtype), targets), tf.float32)
    return sums + (tf.reduce_sum(correct * mask),)


def token_losses(logits, labels):
    """([batch, T] cross-entropy, 0 where unsupervised; [batch, T] mask; shifted targets).

    The per-position view of token_sums (the test split's per-row sums use it)."""
    import tensorflow as tf

    logits = tf.cast(logits, tf.float32)
    targets = tf.concat([labels[:, 1:], tf.fill([tf.shape(labels)[0], 1], tf.cast(IGNORE_INDEX, labels.dtype))],
                        axis=1)
    supervised = targets != IGNORE_INDEX
    mask = tf.cast(supervised, tf.float32)
    safe_targets = tf.where(supervised, targets, tf.zeros_like(targets))
    return tf.nn.sparse_softmax_cross_entropy_with_logits(safe_targets, logits) * mask, mask, targets


def logits_of(model, batch, document_eos_id: int | None = None):
    """The model's evaluation logits for a batch dict (input_ids, attention_mask)."""
    return _logits(model, batch, False, document_eos_id)


def _logits(model, batch, training, document_eos_id: int | None = None):
    """document_eos_id: packed rows whose documents attend only to themselves, split at
    this token (data.packed_attention=document, trainer/model/documents.py); None: the row."""
    # use_cache=False: the key/value cache is for generation; the loss path would
    # otherwise build and return a [2, batch, heads, T, head_dim] tensor per layer.
    if document_eos_id is None:
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     use_cache=False, training=training).logits
    positions, mask = documents.document_inputs(batch["input_ids"], document_eos_id)
    with documents.within_documents(mask):
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=positions,
                     use_cache=False, training=training).logits


def _replica_step_fn(model, optimizer, strategy, grad_accum_steps: int, max_grad_norm: float,
                     xla: bool = False, document_eos_id: int | None = None):
    """One update as seen by one replica; returns that replica's share of the global sums."""
    import tensorflow as tf

    SUM = tf.distribute.ReduceOp.SUM
    # float16 runs scale the loss so small gradients survive float16's range; the
    # LossScaleOptimizer skips (and lowers the scale on) a step whose gradients overflow.
    loss_scale = isinstance(optimizer, tf.keras.mixed_precision.LossScaleOptimizer)

    def micro_batch(part, denominator, scale):
        """Loss sums and gradients of one micro-batch: the heavy part, no collectives,
        so it is the part XLA compiles (runtime.xla)."""
        variables = model.trainable_variables
        with tf.GradientTape() as tape:
            part_loss, _ = token_sums(_logits(model, part, True, document_eos_id), part["labels"],
                                      with_accuracy=False)
            scaled = part_loss / denominator * scale
        part_grads = tape.gradient(scaled, variables)
        part_grads = [tf.convert_to_tensor(g) if g is not None else tf.zeros_like(v)
                      for g, v in zip(part_grads, variables)]
        return part_loss, part_grads

    compute = tf.function(micro_batch, jit_compile=True) if xla else micro_batch

    def replica_step(batch):
        ctx = tf.distribute.get_replica_context()
        variables = model.trainable_variables
        local_count = tf.reduce_sum(tf.cast(batch["labels"][:, 1:] != IGNORE_INDEX, tf.float32))
        denominator = tf.maximum(ctx.all_reduce(SUM, local_count), 1.0)
        scale = tf.cast(optimizer.loss_scale, tf.float32) if loss_scale else tf.constant(1.0)
        # [rows, T] -> [grad_accum_steps, rows / grad_accum_steps, T]
        micro = {k: tf.reshape(v, [grad_accum_steps, -1, v.shape[-1]]) for k, v in batch.items()}
        # Unrolled at trace time, one micro-batch after the other (control dependencies,
        # so only one micro-batch's activations are alive at a time). A tf.range loop here,
        # nested in the train loop's, failed on 6-layer models with AlreadyExistsError on a
        # Grappler "AddOpsRewrite/tmp_var" at the first training call.
        grads, loss_sum = None, tf.constant(0.0)
        for i in range(grad_accum_steps):
            with tf.control_dependencies(grads or []):
                part_loss, part_grads = compute({k: v[i] for k, v in micro.items()}, denominator, scale)
            grads = part_grads if grads is None else [g + pg for g, pg in zip(grads, part_grads)]
            loss_sum += part_loss
        grads = ctx.all_reduce(SUM, grads)
        if loss_scale:
            grads = [g / scale for g in grads]
        nan_step = faults.nan_gradient_step()
        if nan_step is not None:  # the fault suite's NaN; no such op in a normal run's graph
            poison = tf.where(optimizer.iterations + 1 == nan_step, float("nan"), 0.0)
            grads = [g + poison for g in grads]
        if max_grad_norm > 0:
            grads, grad_norm = tf.clip_by_global_norm(grads, max_grad_norm)
        else:
            grad_norm = tf.linalg.global_norm(grads)
        # Already summed over replicas above, so the clip saw the true global norm.
        optimizer.apply_gradients(zip(grads, variables), skip_gradients_aggregation=True)
        if loss_scale:  # an overflow step was skipped by the optimizer: not a divergence
            grad_norm = tf.where(tf.math.is_finite(grad_norm), grad_norm, 0.0)
        tokens = tf.reduce_sum(tf.cast(batch["attention_mask"], tf.float32))
        return {"loss_sum": loss_sum, "count": local_count, "tokens": tokens,
                "grad_norm": grad_norm / strategy.num_replicas_in_sync}

    return replica_step


def make_train_step(model, optimizer, strategy, grad_accum_steps: int, max_grad_norm: float,
                    xla: bool = False, document_eos_id: int | None = None):
    """A tf.function taking one distributed global batch and applying one update.

    Returns global sums (loss_sum, count, tokens) and the pre-clip
    global gradient norm. A non-finite norm means this update wrote NaN/Inf
    into the weights: the caller must stop before saving them.
    """
    import tensorflow as tf

    SUM = tf.distribute.ReduceOp.SUM
    replica_step = _replica_step_fn(model, optimizer, strategy, grad_accum_steps, max_grad_norm, xla,
                                    document_eos_id)

    @tf.function
    def train_step(distributed_batch):
        out = strategy.run(replica_step, args=(distributed_batch,))
        return {k: strategy.reduce(SUM, v, axis=None) for k, v in out.items()}

    return train_step


def make_train_loop(model, optimizer, strategy, grad_accum_steps: int, max_grad_norm: float,
                    xla: bool = False, document_eos_id: int | None = None):
    """train_loop(iterator, num_steps, stop_requested) -> (sums over the steps, stop_agreed).

    Several updates per call (runtime.steps_per_execution): the sums stay on the
    device and the host reads them once per call, so steps are queued back to
    back (a TPU idles during a host round trip). num_steps is a tensor, so a
    shorter last call (to land on an evaluation step) reuses the same compiled
    function. The loop ends early after a step whose loss or gradient norm is
    not finite; sums["steps"] says how many ran. stop_requested is this worker's
    flag; the returned count is summed over every replica of every worker, so
    all workers agree on stopping at the same step (nobody is left waiting in a
    collective)."""
    import tensorflow as tf

    SUM = tf.distribute.ReduceOp.SUM
    replica_step = _replica_step_fn(model, optimizer, strategy, grad_accum_steps, max_grad_norm, xla,
                                    document_eos_id)
    keys = ("loss_sum", "count", "tokens", "grad_norm")

    @tf.function
    def train_loop(iterator, num_steps, stop_requested):
        totals = {k: tf.constant(0.0) for k in keys}
        ran = tf.constant(0.0)
        for _ in tf.range(num_steps):
            out = strategy.run(replica_step, args=(next(iterator),))
            out = {k: strategy.reduce(SUM, out[k], axis=None) for k in keys}
            totals = {k: totals[k] + out[k] for k in keys}
            ran += 1.0
            if tf.logical_not(tf.math.is_finite(out["loss_sum"]) & tf.math.is_finite(out["grad_norm"])):
                break  # every replica saw the same reduced figures, so every worker stops here
        votes = strategy.reduce(SUM, strategy.run(tf.identity, args=(stop_requested,)), axis=None)
        return {**totals, "steps": ran}, votes

    return train_loop


def make_eval_step(model, strategy, document_eos_id: int | None = None):
    import tensorflow as tf

    SUM = tf.distribute.ReduceOp.SUM

    def replica_step(batch, stop_requested):
        loss_sum, count, correct = token_sums(_logits(model, batch, False, document_eos_id), batch["labels"])
        return {"loss_sum": loss_sum, "count": count, "correct": correct, "stop": tf.identity(stop_requested)}

    @tf.function
    def eval_step(distributed_batch, stop_requested=0.0):
        """Sums over the batch; "stop" > 0 when any worker asked to stop (agreed, as in training)."""
        out = strategy.run(replica_step, args=(distributed_batch, tf.cast(stop_requested, tf.float32)))
        return {k: strategy.reduce(SUM, v, axis=None) for k, v in out.items()}

    return eval_step
