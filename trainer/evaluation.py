"""Evaluation: validation loss, perplexity and token accuracy; sample generations."""

import math

import numpy as np


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


def default_prompts(documents: list[str], n: int, words: int = 4) -> list[str]:
    """The first few words of the first n validation documents."""
    return [" ".join(d.split()[:words]) for d in documents[:n] if d.split()]


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


def sample_generations(model, tokenizer, prompts, max_new_tokens: int, seed: int) -> list[dict]:
    """Seeded nucleus samples (top_p 0.9, temperature 0.8), comparable across evaluations.

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
    output = model.generate(**encoded, max_new_tokens=max_new_tokens, do_sample=True, top_p=0.9,
                            temperature=0.8, seed=[seed, 0], pad_token_id=tokenizer.pad_token_id,
                            eos_token_id=tokenizer.eos_token_id)
    new_tokens = tf.convert_to_tensor(output)[:, encoded["input_ids"].shape[1]:].numpy()
    samples = []
    for prompt, tokens in zip(prompts, new_tokens):
        eos_at = np.flatnonzero(tokens == tokenizer.eos_token_id)  # after EOS come pad (= EOS) ids
        length = int(eos_at[0]) + 1 if len(eos_at) else len(tokens)
        samples.append({"prompt": prompt, "completion": tokenizer.decode(tokens[:length], skip_special_tokens=True),
                        "tokens": length, "ended_with_eos": bool(len(eos_at))})
    return samples
