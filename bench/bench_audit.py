"""Benchmark: trainer.diagnosis.audit.audit_corpus on 100,000 synthetic documents.

    .venv/bin/python bench/bench_audit.py [--docs 100000] [--breakdown]

Target: under 60 s on a 2-core machine; measured 19-24 s there, of which
9 s is tokenizing (building the corpus first takes another ~20 s, untimed).
The corpus is random word sequences of 10-120 words (62 a document with the
short templated ones, 6.2M words in all) drawn Zipf-like from a generated
30,000-word vocabulary, with sentence breaks, numbers and mid-sentence names,
and defects seeded at known rates so the findings can be checked by eye:
2% exact copies, 2% near-copies (one word changed), 5% templated orders, and
50 of the 2,000 validation documents copied from training.

The tokenizer is a byte-level BPE (GPT-2's scheme) trained here on 5,000 of the
documents, outside the timed part; audit_corpus then tokenizes every training
document itself (token_lengths=None), the slowest path.
"""

import argparse
import os
import sys
import time

import numpy as np

# Runs from a clone whether or not the package is installed in the venv.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from trainer.diagnosis import audit  # noqa: E402

VOCABULARY_WORDS = 30_000
SYLLABLES = [c + v for c in "bcdfghjklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ai", "ou")]
NAMES = "Alice Bruno Chen Dana Emeka Farah Goran Hana Ivan Jules Kiri Lena".split()


def make_vocabulary(rng: np.random.Generator) -> np.ndarray:
    """Distinct pseudo-words of 1-4 syllables."""
    words = set()
    while len(words) < VOCABULARY_WORDS:
        words.add("".join(rng.choice(SYLLABLES, size=rng.integers(1, 5))))
    return np.array(sorted(words))


def random_document(rng: np.random.Generator, vocabulary: np.ndarray, zipf: np.ndarray) -> str:
    words = list(vocabulary[rng.choice(len(vocabulary), size=rng.integers(10, 121), p=zipf)])
    for i in range(0, len(words), 12):  # a sentence about every 12 words
        words[i] = words[i].capitalize()
        if i:
            words[i - 1] += "."
    if rng.random() < 0.3:
        words[rng.integers(1, len(words))] = str(rng.integers(1, 10_000))
    if rng.random() < 0.3:
        words[rng.integers(1, len(words))] = rng.choice(NAMES)
    return " ".join(words) + "."


def templated_order(rng: np.random.Generator) -> str:
    month, day = rng.integers(1, 13), rng.integers(1, 29)
    return (f"Order {rng.integers(1000, 99999)} shipped on 2024-{month:02d}-{day:02d} to "
            f"{rng.choice(NAMES)}. Tracking number {rng.integers(10**8, 10**9)}.")


def make_corpus(n_docs: int, seed: int = 0) -> tuple[list[str], list[str], list[tuple[int, int]]]:
    """(train, validation, (source, copy) index pairs of the seeded near copies)."""
    rng = np.random.default_rng(seed)
    vocabulary = make_vocabulary(rng)
    zipf = 1.0 / np.arange(1, len(vocabulary) + 1) ** 1.05
    zipf /= zipf.sum()
    train, near_copies = [], []
    for i in range(n_docs):
        roll = rng.random()
        if i > 10 and roll < 0.02:  # exact copy of an earlier document
            train.append(train[rng.integers(0, i)])
        elif i > 10 and roll < 0.04:  # near copy: one word changed
            source = int(rng.integers(0, i))
            words = train[source].split()
            words[len(words) // 2] = "changed"
            train.append(" ".join(words))
            near_copies.append((source, i))
        elif roll < 0.09:
            train.append(templated_order(rng))
        else:
            train.append(random_document(rng, vocabulary, zipf))
    validation = [random_document(rng, vocabulary, zipf) for _ in range(1_950)]
    validation += [train[i] for i in rng.choice(n_docs, size=50, replace=False)]
    return train, validation, near_copies


def shingle_jaccard(a: str, b: str, n: int = 5) -> float:
    """The audit's definition, computed directly: Jaccard of normalised word n-gram sets."""
    def shingles(text):
        words = audit.normalise(text).split()
        return {tuple(words[i:i + n]) for i in range(max(len(words) - n + 1, 1))}
    return audit.jaccard(shingles(a), shingles(b))


def expected_near_duplicates(train: list[str], near_copies: list[tuple[int, int]]) -> int:
    """Exact copies plus the seeded near copies whose true Jaccard reaches 0.8.

    One changed word leaves J = (n - 9) / (n + 1), so only near copies of docs
    with 49 words or more count; shorter ones are rightly not near-duplicates.
    """
    normalised = [audit.normalise(d) for d in train]
    exact = audit.first_occurrences(normalised) != np.arange(len(train))
    near = exact.copy()
    for source, copy in near_copies:
        near[copy] |= shingle_jaccard(train[source], train[copy]) >= 0.8
    return int(near.sum())


def make_tokenize(docs: list[str]):
    """A byte-level BPE trained on the docs, as a texts -> token-id-lists callable."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.train_from_iterator(docs, trainers.BpeTrainer(
        vocab_size=8_000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    return lambda texts: [encoding.ids for encoding in tokenizer.encode_batch(texts)]


def time_stages(train, validation, tokenize, block_size):
    """Each check on its own, to see where the time goes."""
    stages = {
        "tokenize": lambda: tokenize(train),
        "duplicates": lambda: audit.duplicate_stats(train),
        "diversity": lambda: audit.diversity_stats(train),
        "leakage": lambda: audit.leakage_stats(train, validation),
        "fertility": lambda: audit.fertility_stats(train, tokenize),
    }
    for name, run in stages.items():
        start = time.perf_counter()
        run()
        print(f"  {name:<11} {time.perf_counter() - start:6.1f} s")


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--block_size", type=int, default=256)
    parser.add_argument("--breakdown", action="store_true", help="also time each check alone")
    args = parser.parse_args()

    start = time.perf_counter()
    train, validation, near_copies = make_corpus(args.docs)
    tokenize = make_tokenize(train[:5_000])
    words = sum(len(d.split()) for d in train)
    print(f"corpus: {len(train):,} training docs ({words:,} words, {words / len(train):.0f} per doc), "
          f"{len(validation):,} validation docs; built in {time.perf_counter() - start:.1f} s")

    start = time.perf_counter()
    findings, stats = audit.audit_corpus(train, validation, None, args.block_size, "padded", tokenize)
    seconds = time.perf_counter() - start
    for f in findings:
        print(f"[{f.severity}] {f.check}: {f.figure}")
    duplicates, diversity = stats["duplicates"], stats["diversity"]
    near_expected = expected_near_duplicates(train, near_copies)
    print(f"seeded vs measured: exact copies 2% -> {duplicates['exact_duplicate_rate']:.1%}, "
          f"exact + near copies with J >= 0.8 (checked directly) {near_expected:,}"
          f" -> {duplicates['near_duplicates']:,} found by MinHash LSH, "
          f"templated orders 5% -> {diversity['template_rate']:.1%}, "
          f"leaked validation docs 2.5% -> {stats['leakage']['exact_overlap_rate']:.1%}")
    print(f"audit_corpus: {seconds:.1f} s for {len(train):,} documents (target < 60 s)")
    if args.breakdown:
        time_stages(train, validation, tokenize, args.block_size)


if __name__ == "__main__":
    main()
