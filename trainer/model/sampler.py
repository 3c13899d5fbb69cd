"""Sampling: seeded generations with a compiled key/value-cache sampler, and batched
greedy completions of prompts (the task metrics' and the review sheet's)."""

import functools

import numpy as np


def generate(model, tokenizer, prompt: str, max_new_tokens: int, seed: int = 0, **sampling) -> str:
    """Continue one prompt; sampling options are model.generate's (do_sample, top_p, ...)."""
    import tensorflow as tf

    encoded = tokenizer(prompt, return_tensors="tf")
    if encoded["input_ids"].shape[1] == 0:  # an empty prompt starts from EOS, GPT-2's document start
        encoded = {"input_ids": tf.constant([[tokenizer.eos_token_id]]),
                   "attention_mask": tf.constant([[1]])}
    if sampling.get("do_sample"):
        sampling["seed"] = [seed, 0]
    output = model.generate(**encoded, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                            eos_token_id=tokenizer.eos_token_id, **sampling)
    new_tokens = np.asarray(output[0, encoded["input_ids"].shape[1]:])
    return tokenizer.decode(new_tokens, skip_special_tokens=True)


# The nucleus is drawn from the 1,000 most likely tokens: sorting all 50,257 at each
# token cost 27% of a generation (small model: 1.39 -> 1.02 s for 3 x 40 tokens).
CANDIDATES = 1000


@functools.lru_cache(maxsize=4)
def _sampler(model):
    """A compiled (graph-mode) nucleus sampler with a key/value cache, one per model.

    transformers' TF generate runs eagerly: about 30 ms of Python per token even
    for a 2-layer model (1.1 s for 3 prompts x 40 tokens, at each of ~20
    evaluations, was 45% of make train-local). Wrapping generate in tf.function
    traces its whole machinery (9.6 s; 11 s with XLA). This loop traces the model
    (3.4 s once for the sample's model, ~6 s for 6 x 512) and then costs ~1.5 ms
    per token on the sample's model, ~25 ms on 6 x 512 (3 prompts, 50,257-token vocabulary).
    """
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def sample(input_ids, attention_mask, max_new_tokens, seed, temperature, top_p, eos_token_id):
        """top_p <= 0: greedy (the likeliest token). Stops early once every row has written EOS."""
        batch = tf.shape(input_ids)[0]
        # GPT-2 positions from the mask, so left padding does not shift them.
        positions = tf.maximum(tf.cumsum(attention_mask, axis=1) - 1, 0)
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                    use_cache=True, training=False)

        def pick(logits, i):
            return tf.cond(top_p > 0, lambda: nucleus(logits, i),
                           lambda: tf.argmax(logits, axis=-1, output_type=tf.int32))

        def nucleus(logits, i):
            """Nucleus sampling: the smallest set of (candidate) tokens holding top_p of the probability."""
            k = tf.minimum(CANDIDATES, tf.shape(logits)[-1])
            ranked, order = tf.math.top_k(tf.cast(logits, tf.float32) / temperature, k=k)
            before = tf.cumsum(tf.nn.softmax(ranked), axis=-1, exclusive=True)  # mass of better tokens
            ranked = tf.where(before < top_p, ranked, float("-inf"))  # the best token always stays
            choice = tf.random.stateless_categorical(ranked, 1, seed=tf.stack([seed, i]), dtype=tf.int32)
            return tf.gather(order, choice[:, 0], batch_dims=1)

        def body(i, logits, past, mask, position, tokens, finished):
            token = pick(logits, i)
            mask = tf.concat([mask, tf.ones([batch, 1], mask.dtype)], axis=1)
            step = model(input_ids=token[:, None], attention_mask=mask, position_ids=position[:, None],
                         past_key_values=past, use_cache=True, training=False)
            return (i + 1, step.logits[:, -1], step.past_key_values, mask, position + 1, tokens.write(i, token),
                    finished | tf.equal(token, eos_token_id))

        def any_length(t):
            return tf.TensorShape([None] * t.shape.rank)

        # The cache and the mask grow by one position per token; the rest keep their shape.
        # The token array grows with the loop: rows that all ended early leave no unwritten slots.
        loop_vars = (tf.constant(0), out.logits[:, -1], out.past_key_values, attention_mask, positions[:, -1] + 1,
                     tf.TensorArray(tf.int32, size=0, dynamic_size=True, element_shape=[None]),
                     tf.zeros([batch], tf.bool))
        invariants = (tf.TensorShape([]), any_length(loop_vars[1]), tf.nest.map_structure(any_length, loop_vars[2]),
                      any_length(attention_mask), any_length(loop_vars[4]), tf.TensorShape(None),
                      any_length(loop_vars[6]))
        *_, tokens, _ = tf.while_loop(lambda i, *rest: (i < max_new_tokens) & ~tf.reduce_all(rest[-1]), body,
                                      loop_vars, shape_invariants=invariants)
        return tf.transpose(tokens.stack())

    return sample


def sample_generations(model, tokenizer, prompts, max_new_tokens: int, seed: int) -> list[dict]:
    """Seeded nucleus samples (top_p 0.9 of the 1,000 likeliest tokens, temperature 0.8),
    comparable across evaluations.

    All prompts go in one left-padded batch: one decoding loop instead of one per
    prompt (GPT-2 derives position ids from the attention mask, so left padding
    does not shift them).
    """
    import tensorflow as tf

    if not prompts:
        return []
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        encoded = tokenizer([p or tokenizer.eos_token for p in prompts], return_tensors="tf", padding=True)
    finally:
        tokenizer.padding_side = side
    new_tokens = _sampler(model)(tf.cast(encoded["input_ids"], tf.int32), tf.cast(encoded["attention_mask"], tf.int32),
                                 tf.constant(max_new_tokens), tf.constant(seed), tf.constant(0.8),
                                 tf.constant(0.9), tf.constant(tokenizer.eos_token_id)).numpy()
    samples = []
    for prompt, tokens in zip(prompts, new_tokens):
        eos_at = np.flatnonzero(tokens == tokenizer.eos_token_id)  # the text ends at the first EOS
        length = int(eos_at[0]) + 1 if len(eos_at) else len(tokens)
        samples.append({"prompt": prompt, "completion": tokenizer.decode(tokens[:length], skip_special_tokens=True),
                        "tokens": length, "ended_with_eos": bool(len(eos_at))})
    return samples


# Prompts completed per decoding loop: the key/value cache of a chunk is
# chunk x (prompt + new tokens) x layers x 2 x width x 4 bytes; 32 x 300 x 6 x 2 x 768
# x 4 = 354 MB for distilgpt2, 3.5 GB for gpt2-large (36 x 1280).
COMPLETION_CHUNK = 32


def complete(model, tokenizer, prompts: list[str], max_new_tokens: int, max_prompt_tokens: int,
             should_stop=None) -> list[str] | None:
    """Greedy completions of prompts, tokenized exactly as in training (no special
    tokens; an empty prompt is EOS) and cut from the left to max_prompt_tokens; each
    ends at its first EOS. Batched, left-padded, and stopped as soon as every row
    of a chunk has written EOS, so short answers cost few steps.

    should_stop (a stop request): asked before each chunk; None is returned once it
    says yes, so a preemption waits for one chunk at most, not for every prompt."""
    import tensorflow as tf

    eos = tokenizer.eos_token_id
    encoded = tokenizer(list(prompts), add_special_tokens=False, verbose=False)["input_ids"] if prompts else []
    encoded = [(ids or [eos])[-max_prompt_tokens:] for ids in encoded]
    completions = []
    for start in range(0, len(encoded), COMPLETION_CHUNK):
        if should_stop is not None and should_stop():
            return None
        chunk = encoded[start: start + COMPLETION_CHUNK]
        width = max(map(len, chunk))
        ids = np.array([[tokenizer.pad_token_id] * (width - len(c)) + c for c in chunk], np.int32)
        mask = np.array([[0] * (width - len(c)) + [1] * len(c) for c in chunk], np.int32)
        new_tokens = _sampler(model)(tf.constant(ids), tf.constant(mask), tf.constant(max_new_tokens),
                                     tf.constant(0), tf.constant(1.0), tf.constant(0.0), tf.constant(eos)).numpy()
        for tokens in new_tokens:
            eos_at = np.flatnonzero(tokens == eos)
            completions.append(tokenizer.decode(tokens[: eos_at[0]] if len(eos_at) else tokens,
                                                skip_special_tokens=True))
    return completions
