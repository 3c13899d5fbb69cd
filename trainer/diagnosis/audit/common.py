"""What every family of checks shares: the Finding, the Corpus a check reads, the Check
itself, and the text helpers (normalising, word ids, n-gram hashes, sampling)."""

import array
import dataclasses
import re
from typing import Callable

import numpy as np

# Examples quoted in findings are cut to this many characters.
EXAMPLE_CHARS = 200
MAX_EXAMPLES = 3

SEVERITIES = ("error", "warning", "info")


@dataclasses.dataclass(frozen=True)
class Corpus:
    """What the checks read: one corpus, and the run's settings that bear on it."""
    train_docs: list[str]
    val_docs: list[str]
    token_lengths: list[int] | None  # per training document, EOS included; None: lengths are not checked
    token_counts: list[int] | None   # the same without the EOS (fertility counts a word's own tokens)
    block_size: int
    batching: str                    # "packed" | "padded", decided
    tokenize: Callable[[list[str]], list[list[int]]] | None  # None: the domain fit is not checked
    n_positions: int                 # the model's context length
    vocab_size: int                  # the tokenizer's
    seed: int
    normalized: tuple                # the data.normalize steps the documents went through
    prompt_completion: dict | None   # {"pairs", "prompt_tokens", "completion_tokens"} of such data
    text_separator: str | None = None  # data.text_separator plain text was read with; None: not known


@dataclasses.dataclass(frozen=True)
class Check:
    """One check of the registry (trainer/diagnosis/audit/__init__.py, CHECKS)."""
    name: str                        # its key in doctor.json's stats
    measure: Callable[[Corpus], dict]                 # the figures
    judge: Callable[[dict, Corpus], list]             # figures -> Findings
    applies: Callable[[Corpus], bool] = lambda corpus: True
    needs_documents: bool = True     # False: it runs on an empty corpus too (and says so)


@dataclasses.dataclass
class Finding:
    check: str        # "duplicates", "diversity", "templates", "length", "leakage", "normalization",
                      # "domain_fit", "size", "prompt_completion" (data["issue"] says which part), "wrapping"
    severity: str     # "error" | "warning" | "info"
    figure: str       # the measured figure in words
    why: str          # why it matters for fine-tuning a causal LM
    fix: str          # a config override or a concrete action
    data: dict        # machine-readable figures (rates, counts, up to 3 examples)


def percent_of(count: int, total: int) -> str:
    """'31.0% (310 of 1,000)': every figure in a finding shows both."""
    share = count / total if total else 0.0
    return f"{share:.1%} ({count:,} of {total:,})"


def clip(text: str) -> str:
    return text if len(text) <= EXAMPLE_CHARS else text[: EXAMPLE_CHARS - 1] + "…"


def severity_of(value: float, warning: float, error: float) -> str | None:
    if value >= error:
        return "error"
    if value >= warning:
        return "warning"
    return None


def distinct_sorted(values: np.ndarray) -> np.ndarray:
    """np.unique by sorting: numpy 2.4's np.unique hashes uint64 keys and is
    ~50x slower than a sort on a million of them (0.6 s against 0.01 s)."""
    values = np.sort(values)
    return values[np.r_[True, values[1:] != values[:-1]]] if len(values) else values


def contained_in(values: np.ndarray, sorted_distinct: np.ndarray) -> np.ndarray:
    """np.isin(values, sorted_distinct) by binary search, for the same reason."""
    if not len(sorted_distinct):
        return np.zeros(len(values), bool)
    at = np.minimum(np.searchsorted(sorted_distinct, values), len(sorted_distinct) - 1)
    return sorted_distinct[at] == values


def sample_indices(n: int, k: int, seed: int) -> np.ndarray:
    """k of range(n) at random, in corpus order; all of them when n <= k.

    Random rather than the first k, because corpora are often sorted by source
    or date and the head is not representative.
    """
    if n <= k:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))


# ----------------------------------------------------------------------------- text forms

_PUNCTUATION = re.compile(r"[^\w\s]|_")


def normalise(text: str) -> str:
    """Lowercase, drop punctuation, collapse whitespace: 'Hello,  World!' -> 'hello world'.

    Two documents that differ only in case, punctuation or spacing teach the
    model the same thing, so they count as exact duplicates.
    """
    return " ".join(_PUNCTUATION.sub("", text.lower()).split())


# ----------------------------------------------------------------------------- word ids and n-gram hashes


def word_ids(normalised_docs: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Words of already normalised docs as integer ids, flat, and offsets[len(docs) + 1].

    Doc i's words are ids[offsets[i]:offsets[i + 1]]. Ids number the words in
    order of first appearance, so they do not depend on Python's per-process
    string hash seed and every run gives the same figures.
    """
    # 8 bytes per word in an array, not a list of every word as a string (~77 bytes per
    # word: 1.2 GB at 20M tokens, measured in bench/bench_memory.py).
    lengths = np.zeros(len(normalised_docs) + 1, np.int64)
    vocabulary, flat = {}, array.array("q")
    for i, text in enumerate(normalised_docs):
        words = text.split()
        lengths[i + 1] = len(words)
        flat.extend([vocabulary.setdefault(word, len(vocabulary)) for word in words])
    return np.frombuffer(flat, np.int64), np.cumsum(lengths)


def _word_keys(vocabulary_size: int, seed: int) -> np.ndarray:
    """A random 64-bit key per word id: n-gram hashes are sums of these."""
    rng = np.random.default_rng([seed, 1])
    return rng.integers(0, np.iinfo(np.uint64).max, size=max(vocabulary_size, 1), dtype=np.uint64,
                        endpoint=True)


def position_multipliers(n: int, seed: int) -> np.ndarray:
    """Odd 64-bit multipliers, one per position in the n-gram, so word order counts."""
    rng = np.random.default_rng([seed, 2])
    return rng.integers(0, np.iinfo(np.uint64).max, size=n, dtype=np.uint64, endpoint=True) | np.uint64(1)


def ngram_hashes(ids: np.ndarray, offsets: np.ndarray, n: int, seed: int = 0):
    """64-bit hashes of every word n-gram that lies inside one document.

    hash = sum over k of multiplier[k] * key[word at i + k] (mod 2**64): random
    keys make two different n-grams collide with probability ~2**-64.
    Returns (hashes, doc index of each hash); docs shorter than n words give none.
    """
    windows = len(ids) - n + 1
    if windows <= 0:
        return np.zeros(0, np.uint64), np.zeros(0, np.int64)
    values = _word_keys(int(ids.max()) + 1, seed)[ids]
    multipliers = position_multipliers(n, seed)
    hashes = np.zeros(windows, np.uint64)
    for k in range(n):
        hashes += multipliers[k] * values[k: k + windows]
    doc_of = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))[:windows]
    inside = np.arange(windows) + n <= offsets[doc_of + 1]
    return hashes[inside], doc_of[inside]


def _short_doc_hashes(ids: np.ndarray, offsets: np.ndarray, n: int, seed: int):
    """One hash of the whole word sequence for each doc shorter than n words.

    Such a doc has no n-gram, so its only shingle is itself; empty docs all
    hash to 0, which makes them duplicates of one another, as they are.
    """
    lengths = np.diff(offsets)
    short = np.flatnonzero(lengths < n)
    values = _word_keys(int(ids.max()) + 1 if len(ids) else 1, seed)
    multipliers = position_multipliers(n, seed)
    hashes = np.zeros(len(short), np.uint64)
    for k in range(n - 1):
        present = lengths[short] > k
        positions = offsets[short][present] + k
        hashes[present] += multipliers[k] * values[ids[positions]]
    return hashes, short


def shingle_hashes(ids: np.ndarray, offsets: np.ndarray, n: int, seed: int = 0):
    """Word n-gram hashes with every doc present at least once, grouped by doc."""
    hashes, doc_of = ngram_hashes(ids, offsets, n, seed)
    short_hashes, short_docs = _short_doc_hashes(ids, offsets, n, seed)
    hashes = np.concatenate([hashes, short_hashes])
    doc_of = np.concatenate([doc_of, short_docs])
    order = np.argsort(doc_of, kind="stable")
    return hashes[order], doc_of[order]


# ----------------------------------------------------------------------------- duplicates


def covering_block_size(tokens: float, n_positions: int) -> int:
    """The smallest power of two >= tokens, but no more than the model's positions."""
    return min(1 << int(np.ceil(np.log2(max(tokens, 2)))), n_positions)
