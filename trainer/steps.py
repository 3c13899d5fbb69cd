"""The update step and the evaluation step, written as a single-replica view.

Loss = (sum of token cross-entropies over every supervised token of the GLOBAL
batch) / (number of those tokens). Each replica divides its own sum by the
global count (an all-reduce of the per-replica counts), and the replicas'
gradients are summed, so the result equals the one-device loss exactly even
when replicas hold different amounts of padding. (transformers' TF loss
averages per replica first, which weights a padded replica's tokens more.)
"""

from trainer import faults
from trainer.data import IGNORE_INDEX


def token_sums(logits, labels):
    """(loss_sum, supervised_count, correct_count) over the supervised positions.

    Position t predicts token t+1: logits[:, :-1] are scored against
    labels[:, 1:]. This is the one and only shift; the data never pre-shifts.
    """
    import tensorflow as tf

    logits = tf.cast(logits[:, :-1], tf.float32)
    targets = labels[:, 1:]
    mask = tf.cast(targets != IGNORE_INDEX, tf.float32)
    safe_targets = tf.where(targets == IGNORE_INDEX, tf.zeros_like(targets), targets)
    losses = tf.nn.sparse_softmax_cross_entropy_with_logits(safe_targets, logits)
    correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=targets.dtype), targets), tf.float32)
    return tf.reduce_sum(losses * mask), tf.reduce_sum(mask), tf.reduce_sum(correct * mask)


def _logits(model, batch, training):
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                 training=training).logits


def make_train_step(model, optimizer, strategy, grad_accum_steps: int, max_grad_norm: float):
    """A tf.function taking one distributed global batch and applying one update.

    Returns global sums (loss_sum, count, correct, tokens) and the pre-clip
    global gradient norm. A non-finite norm means this update wrote NaN/Inf
    into the weights: the caller must stop before saving them.
    """
    import tensorflow as tf

    SUM = tf.distribute.ReduceOp.SUM

    def replica_step(batch):
        ctx = tf.distribute.get_replica_context()
        variables = model.trainable_variables
        local_count = tf.reduce_sum(tf.cast(batch["labels"][:, 1:] != IGNORE_INDEX, tf.float32))
        denominator = tf.maximum(ctx.all_reduce(SUM, local_count), 1.0)
        # [rows, T] -> [grad_accum_steps, rows / grad_accum_steps, T]
        micro = {k: tf.reshape(v, [grad_accum_steps, -1, v.shape[-1]]) for k, v in batch.items()}
        grads = [tf.zeros_like(v) for v in variables]
        loss_sum = correct = tf.constant(0.0)
        for i in tf.range(grad_accum_steps):
            part = {k: v[i] for k, v in micro.items()}
            with tf.GradientTape() as tape:
                part_loss, _, part_correct = token_sums(_logits(model, part, True), part["labels"])
                scaled = part_loss / denominator
            part_grads = tape.gradient(scaled, variables)
            grads = [g + (tf.convert_to_tensor(pg) if pg is not None else 0.0)
                     for g, pg in zip(grads, part_grads)]
            loss_sum += part_loss
            correct += part_correct
        grads = ctx.all_reduce(SUM, grads)
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
        tokens = tf.reduce_sum(tf.cast(batch["attention_mask"], tf.float32))
        return {"loss_sum": loss_sum, "count": local_count, "correct": correct, "tokens": tokens,
                "grad_norm": grad_norm / strategy.num_replicas_in_sync}

    @tf.function
    def train_step(distributed_batch):
        out = strategy.run(replica_step, args=(distributed_batch,))
        return {k: strategy.reduce(SUM, v, axis=None) for k, v in out.items()}

    return train_step


def make_eval_step(model, strategy):
    import tensorflow as tf

    SUM = tf.distribute.ReduceOp.SUM

    def replica_step(batch):
        loss_sum, count, correct = token_sums(_logits(model, batch, False), batch["labels"])
        return {"loss_sum": loss_sum, "count": count, "correct": correct}

    @tf.function
    def eval_step(distributed_batch):
        out = strategy.run(replica_step, args=(distributed_batch,))
        return {k: strategy.reduce(SUM, v, axis=None) for k, v in out.items()}

    return eval_step
