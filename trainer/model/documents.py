"""Packing without attention across documents (data.packed_attention=document).

A packed row holds several documents, each ending in EOS. GPT-2's own recipe lets
every token attend to everything before it in the row, so a document's first
tokens are predicted from the end of an unrelated one, and its positions start
wherever it landed in the row (at inference it starts at position 0). Here each
token attends only to its own document, and positions restart at 0 at each
document: the row behaves as its documents one after the other, alone.

transformers 4.57's TF GPT-2 takes position_ids but reshapes attention_mask to
[batch, 1, 1, T], so a [batch, T, T] mask cannot go in through the front door.
Its attention (TFAttention._attn) adds the mask it is given to the scores after
the causal mask; `within_documents` hands it an additive [batch, 1, T, T] mask for
the duration of one model call (read while tracing, so inside tf.function and
strategy.run it is part of the graph; shapes stay static for XLA and TPU).
Generation never sets it: a prompt is one document.
"""

import contextlib

_SEGMENT_MASK = None  # the additive [batch, 1, T, T] mask of the model call in progress, or None
_INSTALLED = False
# The additive value of a blocked position: transformers' own (-10000 after the softmax's
# max subtraction is exp(-10000) = 0 in float32 and bfloat16 alike).
BLOCKED = -10000.0


def document_inputs(input_ids, eos_id: int):
    """(position_ids [batch, T], additive mask [batch, 1, T, T]) for packed rows.

    Document k of a row is the tokens after the k-th EOS up to and including the
    (k+1)-th: segment = EOS tokens strictly before t. Token i may see j when j <= i and
    both are in one segment; its position is the count of such j before it:
    row [a b EOS c d EOS] -> segments [0 0 0 1 1 1], positions [0 1 2 0 1 2]."""
    import tensorflow as tf

    is_eos = tf.cast(tf.equal(input_ids, eos_id), tf.int32)
    segment = tf.cumsum(is_eos, axis=1, exclusive=True)  # [B, T]
    length = tf.shape(input_ids)[1]
    causal = tf.linalg.band_part(tf.ones([length, length], tf.bool), -1, 0)  # j <= i
    same = tf.equal(segment[:, :, None], segment[:, None, :])  # [B, T, T]
    visible = tf.logical_and(same, causal[None])
    positions = tf.reduce_sum(tf.cast(visible, tf.int32), axis=-1) - 1
    additive = (1.0 - tf.cast(visible, tf.float32)) * BLOCKED
    return positions, additive[:, None, :, :]


def install() -> None:
    """Teach TFAttention._attn to add the current document mask (once per process)."""
    global _INSTALLED
    if _INSTALLED:
        return
    from transformers.models.gpt2 import modeling_tf_gpt2

    original = modeling_tf_gpt2.TFAttention._attn

    def _attn(self, q, k, v, attention_mask, head_mask, output_attentions, training=False):
        if _SEGMENT_MASK is not None and not self.is_cross_attention:
            attention_mask = _SEGMENT_MASK if attention_mask is None else attention_mask + _SEGMENT_MASK
        return original(self, q, k, v, attention_mask, head_mask, output_attentions, training=training)

    modeling_tf_gpt2.TFAttention._attn = _attn
    _INSTALLED = True


@contextlib.contextmanager
def within_documents(mask):
    """Every attention layer of the model called inside adds `mask` (document_inputs)."""
    global _SEGMENT_MASK
    install()
    previous, _SEGMENT_MASK = _SEGMENT_MASK, mask
    try:
        yield
    finally:
        _SEGMENT_MASK = previous
