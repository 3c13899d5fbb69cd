"""Watching a run while it trains.

- generation_health: repetition, diversity, stopping and memorisation of the
  samples generated at each evaluation.
- monitor: warnings from the latest evaluations (divergence, spikes,
  oscillation, overfitting, stagnation), raised once each.
"""

import numpy as np

MEMORISATION_NGRAM_WORDS = 8  # 8 words copied verbatim are rarely chance in prose
MEMORISATION_MAX_DOCS = 20_000  # the index is a sorted array of hashes: ~8 bytes per n-gram


def _ngrams(words, n):
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


class TrainingNgrams:
    """Word 8-grams of the training documents, to measure copying in generations."""

    def __init__(self, documents: list[str], n: int = MEMORISATION_NGRAM_WORDS):
        self.n = n
        hashes = [hash(g) for d in documents[:MEMORISATION_MAX_DOCS] for g in _ngrams(d.split(), n)]
        self.sorted_hashes = np.unique(np.asarray(hashes, np.int64))

    def copied_share(self, texts: list[str]) -> float:
        grams = [hash(g) for t in texts for g in _ngrams(t.split(), self.n)]
        if not grams or not len(self.sorted_hashes):
            return 0.0
        grams = np.asarray(grams, np.int64)
        at = np.clip(np.searchsorted(self.sorted_hashes, grams), 0, len(self.sorted_hashes) - 1)
        return float(np.mean(self.sorted_hashes[at] == grams))


def generation_health(samples: list[dict], training_ngrams: TrainingNgrams | None) -> dict:
    """Figures over one evaluation's samples (dicts with completion, tokens, ended_with_eos).

    repetition: share of word 3-grams inside a sample that already occurred in it
    (a looping "the the the" sample scores near 1); distinct_1/2: unique words
    and bigrams over all, across samples; memorised: share of generated word
    8-grams found verbatim in the training set.
    """
    words = [s["completion"].split() for s in samples]
    repeats = total = 0
    for w in words:
        grams = _ngrams(w, 3)
        repeats += len(grams) - len(set(grams))
        total += len(grams)
    unigrams = [x for w in words for x in w]
    bigrams = [g for w in words for g in _ngrams(w, 2)]
    return {
        "repetition": repeats / total if total else 0.0,
        "distinct_1": len(set(unigrams)) / len(unigrams) if unigrams else 0.0,
        "distinct_2": len(set(bigrams)) / len(bigrams) if bigrams else 0.0,
        "ended_with_eos": float(np.mean([s["ended_with_eos"] for s in samples])) if samples else 0.0,
        "mean_length_tokens": float(np.mean([s["tokens"] for s in samples])) if samples else 0.0,
        "memorised": training_ngrams.copied_share([s["completion"] for s in samples])
        if training_ngrams else 0.0,
    }


# A change in validation loss counts only above this much: the larger of 0.01 nats
# and 0.5% of the loss. A plateau wiggles by 1e-4-1e-3 nats between evaluations
# (measured: 3e-4 on the sample), an unstable learning rate by 0.05-1.
MIN_VALIDATION_CHANGE_NATS, MIN_VALIDATION_CHANGE_SHARE = 0.01, 0.005


# A training-loss spike: the latest logged window above the median of the windows
# before it by more than 25% AND by more than 5 robust standard deviations of
# those windows (1.4826 x median absolute deviation), so a corpus whose batches
# differ a lot (code beside prose) does not raise it.
SPIKE_SHARE, SPIKE_SIGMAS, SPIKE_HISTORY = 0.25, 5.0, 10


def validation_tolerance(loss: float) -> float:
    return max(MIN_VALIDATION_CHANGE_NATS, MIN_VALIDATION_CHANGE_SHARE * abs(loss))


def training_spike(train_losses: list[float]) -> bool:
    """The latest window against the SPIKE_HISTORY before it (needs 5 of them)."""
    recent = np.asarray(train_losses[-SPIKE_HISTORY - 1:-1], np.float64)
    if len(recent) < 5:
        return False
    median = float(np.median(recent))
    sigma = 1.4826 * float(np.median(np.abs(recent - median)))
    return train_losses[-1] > median + max(SPIKE_SHARE * median, SPIKE_SIGMAS * sigma)


def monitor(train_points: list[dict], val_points: list[dict]) -> dict:
    """Conditions visible in the evaluations so far: name -> plain-words message.

    Each threshold sits above the ordinary noise of the curve it reads, so a
    healthy run on ordinary data raises none (bench/bench_false_alarms.py)."""
    found = {}
    train = [p["loss"] for p in train_points]
    if training_spike(train):
        found["loss_spike"] = (f"training loss jumped to {train[-1]:.3f} against {np.median(train[-11:-1]):.3f} "
                               "over the last logged windows: a loss spike; lower the learning rate or "
                               "--config.optim.max_grad_norm.")
    losses = [p["loss"] for p in val_points]
    if len(losses) < 3:
        return found
    best = min(losses)
    tolerance = validation_tolerance(losses[-1])
    if losses[-1] > best + 0.5 and losses[-1] > 1.1 * best:
        found["divergence"] = (f"validation loss {losses[-1]:.3f} is far above its best {best:.3f}: the run "
                               "is diverging; lower --config.optim.learning_rate.")
    steps = np.diff(losses[-7:])
    flips = np.sum(np.sign(steps[1:]) != np.sign(steps[:-1])) if len(steps) >= 6 else 0
    if flips >= 4 and np.median(np.abs(steps)) >= tolerance:
        found["oscillation"] = (f"validation loss goes up and down by about {np.median(np.abs(steps)):.3f} nats at "
                                "every evaluation: the learning rate is at the edge of stability; lower it by 2-3x.")
    if (len(losses) >= 4 and losses[-1] > losses[-2] > losses[-3] and losses[-1] - losses[-3] >= tolerance
            and len(train) >= 2 and train[-1] < train[0]):
        gap = losses[-1] - train[-1]
        found["overfitting"] = (f"validation loss rose by {losses[-1] - losses[-3]:.3f} nats over 2 evaluations while "
                                f"training loss falls (gap {gap:.3f} nats): overfitting; early stopping will restore "
                                "the best weights.")
    if len(losses) >= 5 and min(losses[-4:]) >= min(losses[:-4]) - 1e-4:
        found["stagnation"] = "no validation improvement in the last 4 evaluations."
    return found
