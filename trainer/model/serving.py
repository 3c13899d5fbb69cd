"""The serving export: a TensorFlow SavedModel whose `generate` signature continues
prompts with the key/value-cache sampler the evaluation uses, and loads with TensorFlow
alone (no transformers, no tunewell) in a fresh process, TF Serving, or a Vertex AI
container.

Signature `generate` (batch size and lengths dynamic; one row per prompt):
  in   input_ids       int32 [B, T]  prompt token ids, RIGHT-padded (any pad value)
       lengths         int32 [B]     real tokens of each row (0: the row starts from EOS)
       max_new_tokens  int32 [B]     at most this many new tokens for the row
       temperature     float [B]     <= 0: greedy (the likeliest token); else logits / temperature
       top_k           int32 [B]     sample among the k likeliest tokens; 0 = off
       top_p           float [B]     nucleus: the smallest set holding this probability; 1 = off
       seed            int32 [B]     the row's draws depend only on its seed, prompt and settings
  out  token_ids       int32 [B, N]  new tokens; after a row's end, the pad id
       lengths         int32 [B]     new tokens of each row, the EOS that ended it included
       log_probs       float [B, N]  the model's log-probability of each new token (its own
                                     distribution: before temperature, top-k and top-p); 0 after the end

A row ends at EOS or at its max_new_tokens; the loop ends when every row has. Sampling
draws among the 1,000 likeliest tokens at most (CANDIDATES, as the evaluation's sampler:
sorting a 50,257-token vocabulary at every token costs a quarter of the time); greedy
takes the argmax over the whole vocabulary, so its output equals trainer.generate's.
Prompt plus new tokens must fit the model's positions (n_positions): the caller checks.
"""

import json
import os

from trainer import filesystem
from trainer.model.load import load_model
from trainer.model.tokenizer import load_tokenizer

SIGNATURE = "generate"
CANDIDATES = 1000
# Written beside the SavedModel: what a server needs without importing transformers.
SERVING_INFO = "serving.json"


def build_module(model, eos_token_id: int, pad_token_id: int):
    """A tf.Module holding the model's variables and the `generate` function."""
    import tensorflow as tf

    n_positions = int(model.config.n_positions)

    class Generator(tf.Module):
        def __init__(self):
            super().__init__(name="tunewell_generator")
            self.weights = list(model.variables)  # tracked: the SavedModel saves these and nothing of Keras

        @tf.function(input_signature=[
            tf.TensorSpec([None, None], tf.int32, name="input_ids"),
            tf.TensorSpec([None], tf.int32, name="lengths"),
            tf.TensorSpec([None], tf.int32, name="max_new_tokens"),
            tf.TensorSpec([None], tf.float32, name="temperature"),
            tf.TensorSpec([None], tf.int32, name="top_k"),
            tf.TensorSpec([None], tf.float32, name="top_p"),
            tf.TensorSpec([None], tf.int32, name="seed"),
        ])
        def generate(self, input_ids, lengths, max_new_tokens, temperature, top_k, top_p, seed):
            return _generate(model, input_ids, lengths, max_new_tokens, temperature, top_k, top_p, seed,
                             eos_token_id, pad_token_id, n_positions)

    return Generator()


def _generate(model, input_ids, lengths, max_new_tokens, temperature, top_k, top_p, seed, eos, pad, n_positions):
    import tensorflow as tf

    batch, width = tf.shape(input_ids)[0], tf.shape(input_ids)[1]
    column = tf.range(width)[None, :]
    # An empty prompt starts from EOS (GPT-2's document start), as trainer.generate does.
    empty = tf.equal(lengths, 0)[:, None]
    input_ids = tf.where(empty & tf.equal(column, 0), eos, input_ids)
    lengths = tf.clip_by_value(tf.maximum(lengths, 1), 1, width)
    # Right padding in, left padding inside: every row's next token then sits in the last
    # column, and positions come from the mask, so the padding shifts nothing.
    shift = width - lengths
    source = tf.math.floormod(column - shift[:, None], width)
    mask = tf.cast(column >= shift[:, None], tf.int32)
    ids = tf.where(mask == 1, tf.gather(input_ids, source, batch_dims=1), pad)
    positions = tf.maximum(tf.cumsum(mask, axis=1) - 1, 0)
    budget = tf.minimum(max_new_tokens, n_positions - lengths)  # never past the model's positions
    steps = tf.maximum(tf.reduce_max(budget), 0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, training=False)
    vocabulary = tf.shape(out.logits)[-1]
    k = tf.minimum(CANDIDATES, vocabulary)

    def pick(logits, i):
        logits = tf.cast(logits, tf.float32)
        greedy = tf.argmax(logits, axis=-1, output_type=tf.int32)
        ranked, order = tf.math.top_k(logits / tf.maximum(temperature, 1e-6)[:, None], k=k)
        rank = tf.range(k)[None, :]
        keep = (top_k[:, None] <= 0) | (rank < top_k[:, None])
        before = tf.cumsum(tf.nn.softmax(tf.where(keep, ranked, -1e9)), axis=-1, exclusive=True)
        keep &= (before < top_p[:, None]) | (rank == 0)  # the best token always stays
        # Gumbel-max with a per-row stateless draw: a row's tokens depend on its own seed only.
        noise = tf.map_fn(lambda s: tf.random.stateless_uniform([k], seed=tf.stack([s, i]), minval=1e-9, maxval=1.0),
                          seed, fn_output_signature=tf.float32)
        scores = tf.where(keep, ranked - tf.math.log(-tf.math.log(noise)), float("-inf"))
        sampled = tf.gather(order, tf.argmax(scores, axis=-1, output_type=tf.int32), batch_dims=1)
        token = tf.where(temperature <= 0, greedy, sampled)
        log_prob = tf.gather(tf.nn.log_softmax(logits), token, batch_dims=1)
        return token, log_prob

    def body(i, logits, past, mask, position, tokens, log_probs, finished, length):
        token, log_prob = pick(logits, i)
        live = ~finished & (i < budget)
        token = tf.where(live, token, pad)
        tokens = tokens.write(i, token)
        log_probs = log_probs.write(i, tf.where(live, log_prob, 0.0))
        length += tf.cast(live, tf.int32)
        finished |= ~live | tf.equal(token, eos)
        mask = tf.concat([mask, tf.ones([batch, 1], mask.dtype)], axis=1)
        step = model(input_ids=token[:, None], attention_mask=mask, position_ids=position[:, None],
                     past_key_values=past, use_cache=True, training=False)
        return i + 1, step.logits[:, -1], step.past_key_values, mask, position + 1, tokens, log_probs, finished, length

    def any_length(t):
        return tf.TensorShape([None] * t.shape.rank)

    loop_vars = (tf.constant(0), out.logits[:, -1], out.past_key_values, mask, positions[:, -1] + 1,
                 tf.TensorArray(tf.int32, size=0, dynamic_size=True, element_shape=[None]),
                 tf.TensorArray(tf.float32, size=0, dynamic_size=True, element_shape=[None]),
                 budget <= 0, tf.zeros([batch], tf.int32))
    invariants = (tf.TensorShape([]), any_length(loop_vars[1]), tf.nest.map_structure(any_length, loop_vars[2]),
                  any_length(mask), any_length(loop_vars[4]), tf.TensorShape(None), tf.TensorShape(None),
                  any_length(loop_vars[7]), any_length(loop_vars[8]))
    _, _, _, _, _, tokens, log_probs, _, length = tf.while_loop(
        lambda i, *rest: (i < steps) & ~tf.reduce_all(rest[-2]), body, loop_vars, shape_invariants=invariants)
    ran = tokens.size() > 0  # no step ran when every budget is 0, and stack() needs one
    return {"token_ids": tf.cond(ran, lambda: tf.transpose(tokens.stack()), lambda: tf.zeros([batch, 0], tf.int32)),
            "lengths": length,
            "log_probs": tf.cond(ran, lambda: tf.transpose(log_probs.stack()), lambda: tf.zeros([batch, 0]))}


def export_serving(model_dir: str, folder: str, log=print) -> dict:
    """The transformers export in model_dir (float32, as written) as a SavedModel in folder,
    published whole (COMPLETE.json last); returns serving.json's content."""
    import tensorflow as tf

    policy = tf.keras.mixed_precision.global_policy()
    # float32 whatever the run trained in: greedy serving must equal trainer.generate's
    # (which loads the export in float32), and CPUs without bfloat16 units serve it too.
    tf.keras.mixed_precision.set_global_policy("float32")
    try:
        model, _ = load_model(model_dir, log=lambda message: None)
        tokenizer = load_tokenizer(model_dir, log=lambda message: None)
        module = build_module(model, tokenizer.eos_token_id, tokenizer.pad_token_id)
        info = {"signature": SIGNATURE, "eos_token_id": tokenizer.eos_token_id,
                "pad_token_id": tokenizer.pad_token_id, "n_positions": int(model.config.n_positions),
                "vocab_size": int(model.config.vocab_size), "padding": "right",
                "tokenizer": "tokenizer/ (transformers' files: tokenizer.json is read by the `tokenizers` library)"}

        def write(tmp):
            tf.saved_model.save(module, tmp, signatures={SIGNATURE: module.generate})
            tokenizer.save_pretrained(os.path.join(tmp, "tokenizer"))
            with open(os.path.join(tmp, SERVING_INFO), "w") as f:
                json.dump(info, f, indent=2)
        filesystem.publish_dir(folder, write)
    finally:
        tf.keras.mixed_precision.set_global_policy(policy)
    log(f"Serving SavedModel written to {folder} (signature '{SIGNATURE}').")
    return info
