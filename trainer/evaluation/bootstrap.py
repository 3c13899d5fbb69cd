"""95% intervals by the bootstrap: resample the scored units (examples, or rows of
packed text) with replacement, recompute the figure, keep the middle 95%.

Why the bootstrap: a test loss is a token-weighted mean of units of unequal size
and a task metric may be a corpus statistic (BLEU); neither has a textbook
formula that holds here, and 1,000 resamples of a few thousand units cost well
under a second in numpy. Percentile intervals, seeded, so a rerun prints the same.
"""

import numpy as np

RESAMPLES = 1000
# Units resampled per numpy call: 100 resamples x 50,000 rows of int64 indices = 40 MB.
_CHUNK = 100


def ratio_interval(numerators, denominators, seed: int, resamples: int = RESAMPLES) -> list[float] | None:
    """[low, high] of sum(numerators) / sum(denominators) over resampled units, e.g. loss
    sums and token counts per row -> the token-weighted mean loss. None for < 2 units."""
    num = np.asarray(numerators, np.float64)
    den = np.asarray(denominators, np.float64)
    n = len(num)
    if n < 2:
        return None
    rng = np.random.default_rng([seed, n])
    figures = []
    for start in range(0, resamples, _CHUNK):
        picks = rng.integers(0, n, size=(min(_CHUNK, resamples - start), n))
        figures.append(num[picks].sum(axis=1) / np.maximum(den[picks].sum(axis=1), 1e-12))
    low, high = np.percentile(np.concatenate(figures), [2.5, 97.5])
    return [float(low), float(high)]


def mean_interval(values, seed: int, resamples: int = RESAMPLES) -> list[float] | None:
    """[low, high] of the mean of per-unit values (exact match 0/100 per example, ...)."""
    return ratio_interval(values, np.ones(len(values)), seed, resamples)


def statistic_interval(n: int, statistic, seed: int, resamples: int = 200) -> list[float] | None:
    """[low, high] of statistic(indices) over resampled unit indices, for figures that are
    not means (corpus BLEU). Fewer resamples: each calls back into Python."""
    if n < 2:
        return None
    rng = np.random.default_rng([seed, n])
    figures = [statistic(rng.integers(0, n, size=n)) for _ in range(resamples)]
    low, high = np.percentile(figures, [2.5, 97.5])
    return [float(low), float(high)]
