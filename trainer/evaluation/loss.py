"""Validation loss, perplexity and token accuracy, from the all-reduced sums of the eval step."""

import math


def evaluate(eval_step, distributed_dataset, should_stop=lambda: False) -> dict | None:
    """Token-weighted metrics over the whole validation set; None when should_stop()
    turns true on any worker (a preemption notice leaves no time to finish). The
    flag travels with each batch's sums, so every worker abandons at the same batch."""
    import tensorflow as tf

    loss_sum = count = correct = 0.0
    for batch in distributed_dataset:
        out = eval_step(batch, tf.constant(1.0 if should_stop() else 0.0))
        if float(out["stop"]) > 0:
            return None
        loss_sum += float(out["loss_sum"])
        count += float(out["count"])
        correct += float(out["correct"])
    loss = loss_sum / max(count, 1.0)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0)), "accuracy": correct / max(count, 1.0),
            "tokens": int(count)}
