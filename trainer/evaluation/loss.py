"""Validation loss, perplexity and token accuracy, from the all-reduced sums of the eval step;
and per-row loss sums of a split on one process (the test split's bootstrap resamples rows)."""

import math

import numpy as np

from trainer.data import IGNORE_INDEX
from trainer.training import steps


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


def row_sums(model, blocks, batch_size: int, document_eos_id: int | None = None):
    """(loss sum, scored tokens) of each row of `blocks`, numpy float64 [rows] each.

    On this process, outside any distribution strategy (the chief scores the test split
    once, after the export; other workers have stopped). Batches keep one static shape,
    the last padded with unscored rows, so the function is traced once."""
    import tensorflow as tf

    @tf.function
    def sums(input_ids, attention_mask, labels):
        logits = steps.logits_of(model, {"input_ids": input_ids, "attention_mask": attention_mask},
                                 document_eos_id)
        losses, mask, _ = steps.token_losses(logits, labels)
        return tf.reduce_sum(losses, axis=1), tf.reduce_sum(mask, axis=1)

    rows = blocks.rows
    loss_sums, counts = np.zeros(rows), np.zeros(rows)
    for start in range(0, rows, batch_size):
        stop = min(start + batch_size, rows)
        parts = [blocks.input_ids[start:stop], blocks.attention_mask[start:stop], blocks.labels[start:stop]]
        short = batch_size - (stop - start)
        if short:
            fill = [0, 0, IGNORE_INDEX]
            parts = [np.concatenate([p, np.full((short, p.shape[1]), f, p.dtype)]) for p, f in zip(parts, fill)]
        batch_sums, batch_counts = sums(*[tf.constant(p, tf.int32) for p in parts])
        loss_sums[start:stop] = batch_sums.numpy()[:stop - start]
        counts[start:stop] = batch_counts.numpy()[:stop - start]
    return loss_sums, counts
