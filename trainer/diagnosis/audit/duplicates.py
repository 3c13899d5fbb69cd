"""Duplicates and templates: exact and near-duplicate documents (MinHash LSH), documents
that differ only in names, numbers and dates, and the corpus's word diversity."""

import collections
import re

import numpy as np

from trainer.diagnosis.audit.common import (MAX_EXAMPLES, Check, Finding, clip, distinct_sorted, normalise,
                                            percent_of, position_multipliers, severity_of, shingle_hashes, word_ids)

# Exact duplicates (same text after normalise). 1% already means some documents
# are trained on twice per epoch; at 10% a tenth of every epoch is repetition,
# and a random validation split holds copies of training documents.
EXACT_DUPLICATE_WARNING = 0.01

EXACT_DUPLICATE_ERROR = 0.10


# Near-duplicates that exact deduplication would NOT remove (near rate minus
# exact rate), so the two findings never report the same documents twice.
# Looser than exact: light boilerplate overlap is normal in scraped text.
NEAR_DUPLICATE_WARNING = 0.05

NEAR_DUPLICATE_ERROR = 0.20


# Documents that repeat an earlier one's skeleton with only numbers, dates,
# names, e-mails or URLs swapped. A few form templates are fine; at 30% the
# model learns the skeleton in a few hundred steps and then only the fillers.
TEMPLATE_WARNING = 0.10

TEMPLATE_ERROR = 0.30


# Sampling budgets: distinct-n depends on sample size, so it is always read on
# the same number of words; fertility only needs a stable average.
DISTINCT_SAMPLE_WORDS = 200_000

_MONTH = (r"(?:Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?"
          r"|Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?)")

_UPPER = "A-ZÀ-ÖØ-Þ"

_LOWER = "a-zß-öø-ÿ"


# A capitalised word that does not start a sentence: the character before it
# is a space or tab, and the one before that is neither whitespace nor . ! ?
# (so "Then Alice" keeps "Then"); after an honorific it is a name too. The
# look-behind comes after the capital, which lets the regex engine skip ahead
# to capitals instead of testing every position (25x faster).
_NAME = re.compile(
    rf"[{_UPPER}](?:(?<=[^\s.!?][ \t].)|(?<=\bMr\. .)|(?<=\bMrs\. .)|(?<=\bMs\. .)|(?<=\bDr\. .))"
    rf"[{_LOWER}]+(?:['’-][{_UPPER}{_LOWER}]+)*\b"
    r"(?<!\bMr)(?<!\bMrs)(?<!\bMs)(?<!\bDr)")  # the honorific itself stays

_URL = re.compile(r"\b(?:https?://|www\.)[^\s<>\"']+[^\s<>\"'.,;:!?)]")

_EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+")

_DATE = re.compile(
    r"\b\d{4}-\d{1,2}-\d{1,2}\b"                                  # 2024-03-01
    r"|\b\d{1,4}[/.]\d{1,2}[/.]\d{1,4}\b"                          # 01/03/2024, 1.3.2024
    rf"|\b{_MONTH}\.? \d{{1,2}}(?:st|nd|rd|th)?\b(?:,? \d{{4}}\b)?"  # March 1, 2024
    rf"|\b\d{{1,2}}(?:st|nd|rd|th)? {_MONTH}\b(?:,? \d{{4}}\b)?")   # 1st March 2024

_TIME = re.compile(
    r"\b\d{1,2}:\d{2}(?::\d{2})?(?:\s?(?i:[ap]m\b|[ap]\.m\.))?"  # 14:30, 2:30 pm
    r"|\b\d{1,2}\s?(?i:[ap]m\b|[ap]\.m\.)")                     # 2pm, 2 p.m.

_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")                      # 1234, 3.5, 1,234.56

_DIGIT = re.compile(r"\d")

_SPACES = re.compile(r"[ \t]+")


def mask_variables(text: str) -> str:
    """Replace what fills a template with placeholders.

    'Order 1234 shipped on 2024-03-01 to Alice.' -> 'Order <NUM> shipped on <DATE> to <NAME>.'
    Sentence-initial capitals stay ("Order"), since every sentence has one.
    Runs of spaces and tabs become one space first, so "to  Alice" is masked too.

    Applied in this order, so a URL's digits never become <NUM> and a date's
    month never becomes <NAME>; placeholders are all capitals, which the name
    pattern cannot match. A pattern runs only when the text holds the character
    it needs (every date, time and number has a digit): most prose has none.
    """
    text = _SPACES.sub(" ", text)
    if "://" in text or "www." in text:
        text = _URL.sub("<URL>", text)
    if "@" in text:
        text = _EMAIL.sub("<EMAIL>", text)
    if _DIGIT.search(text):
        text = _DATE.sub("<DATE>", text)
        text = _TIME.sub("<TIME>", text)
        text = _NUMBER.sub("<NUM>", text)
    return _NAME.sub("<NAME>", text)


def template_key(text: str) -> str:
    """The skeleton two documents share when only their fillers differ."""
    return normalise(mask_variables(text))


# 120 MinHash values read as 20 bands of 6 rows. Two docs with Jaccard J share
# at least one band with probability 1 - (1 - J**6)**20: 0.998 at J = 0.8,
# 0.27 at J = 0.5, 0.015 at J = 0.3. Candidates are then checked exactly, so
# the loose end costs only a few set intersections.
MINHASH_PERMUTATIONS = 120

LSH_BANDS = 20

LSH_ROWS = 6


# Within one bucket, each doc is compared with the (up to) 4 docs before it.
# Exact copies are found without LSH, so this only bounds the work in buckets
# that many different documents share (boilerplate openings).
LSH_NEIGHBOURS = 4


# Signatures agreeing on fewer than threshold - 0.15 of their values skip the
# exact check: with 120 values the estimate's standard error is at most
# sqrt(0.25 / 120) = 0.046, so 0.15 is over three standard errors.
MINHASH_MARGIN = 0.15


# Shingles per MinHash chunk: 4,096 x 120 uint64 = 3.9 MB stays in cache;
# 65,536 (63 MB) measured 4x slower.
MINHASH_CHUNK = 4_096


def minhash_signatures(hashes: np.ndarray, doc_of: np.ndarray, n_docs: int,
                       permutations: int = MINHASH_PERMUTATIONS, seed: int = 0) -> np.ndarray:
    """[n_docs, permutations] MinHash signatures of shingle hashes grouped by doc.

    Each permutation is x -> a * x + b (mod 2**64) with a odd, i.e. a
    bijection of the 64-bit hashes; a doc's value is the minimum over its
    shingles. Every doc must have at least one shingle.
    """
    rng = np.random.default_rng([seed, 3])
    top = np.iinfo(np.uint64).max
    a = rng.integers(0, top, size=permutations, dtype=np.uint64, endpoint=True) | np.uint64(1)
    b = rng.integers(0, top, size=permutations, dtype=np.uint64, endpoint=True)
    starts = np.searchsorted(doc_of, np.arange(n_docs + 1))  # shingles of doc d: starts[d]:starts[d+1]
    signatures = np.empty([n_docs, permutations], np.uint64)
    first = 0
    while first < n_docs:
        # Whole docs only, about MINHASH_CHUNK shingles (at least one doc).
        last = max(int(np.searchsorted(starts, starts[first] + MINHASH_CHUNK, side="right")) - 1, first + 1)
        last = min(last, n_docs)
        lo, hi = starts[first], starts[last]
        values = hashes[lo:hi, None] * a[None, :]
        values += b[None, :]
        signatures[first:last] = np.minimum.reduceat(values, starts[first:last] - lo, axis=0)
        first = last
    return signatures


def lsh_candidate_pairs(signatures: np.ndarray, bands: int = LSH_BANDS, rows: int = LSH_ROWS,
                        neighbours: int = LSH_NEIGHBOURS, seed: int = 0) -> np.ndarray:
    """[pairs, 2] doc indices (earlier, later) that share a bucket in some band."""
    n = len(signatures)
    mixers = position_multipliers(rows, seed + 7)
    doc_index = np.arange(n)
    codes = []
    for band in range(bands):
        # One 64-bit bucket key per doc from its `rows` values in this band.
        keys = (signatures[:, band * rows:(band + 1) * rows] * mixers[None, :]).sum(axis=1, dtype=np.uint64)
        order = np.lexsort((doc_index, keys))  # by bucket, then by position in the corpus
        sorted_keys = keys[order]
        for offset in range(1, min(neighbours, n - 1) + 1):
            same = sorted_keys[offset:] == sorted_keys[:-offset]
            codes.append(order[:-offset][same] * n + order[offset:][same])
    if not codes:
        return np.zeros([0, 2], np.int64)
    codes = distinct_sorted(np.concatenate(codes))
    return np.stack([codes // n, codes % n], axis=1)


def _signature_agreement(signatures: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Share of equal MinHash values per pair: an estimate of their Jaccard."""
    agreement = np.empty(len(pairs))
    for lo in range(0, len(pairs), 50_000):
        chunk = pairs[lo:lo + 50_000]
        agreement[lo:lo + 50_000] = (signatures[chunk[:, 0]] == signatures[chunk[:, 1]]).mean(axis=1)
    return agreement


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def first_occurrences(texts: list[str]) -> np.ndarray:
    """For each text, the index of the first text equal to it (its own index if new)."""
    first_seen = {}
    return np.fromiter((first_seen.setdefault(text, i) for i, text in enumerate(texts)), np.int64, len(texts))


def near_duplicate_sources(normalised: list[str], threshold: float, shingle_words: int, seed: int,
                           skip: np.ndarray) -> np.ndarray:
    """For each doc, an earlier doc whose shingle Jaccard with it is >= threshold, else -1.

    Docs where `skip` is True (exact copies, already explained) are not
    searched. Candidates come from MinHash LSH; the Jaccard of every candidate
    pair that survives the signature estimate is then computed exactly.
    """
    n = len(normalised)
    source = np.full(n, -1, np.int64)
    if n < 2:
        return source
    ids, offsets = word_ids(normalised)
    hashes, doc_of = shingle_hashes(ids, offsets, shingle_words, seed)
    signatures = minhash_signatures(hashes, doc_of, n, seed=seed)
    pairs = lsh_candidate_pairs(signatures, seed=seed)
    pairs = pairs[~skip[pairs[:, 1]]]
    pairs = pairs[_signature_agreement(signatures, pairs) >= threshold - MINHASH_MARGIN]
    starts = np.searchsorted(doc_of, np.arange(n + 1))  # shingles of doc d: starts[d]:starts[d+1]
    shingle_sets = {}
    for doc in distinct_sorted(pairs.ravel()).tolist():
        shingle_sets[doc] = set(hashes[starts[doc]:starts[doc + 1]].tolist())
    for earlier, later in pairs[np.lexsort((pairs[:, 0], pairs[:, 1]))].tolist():  # by later, then earlier
        if source[later] < 0 and jaccard(shingle_sets[earlier], shingle_sets[later]) >= threshold:
            source[later] = earlier
    return source


def duplicate_stats(docs: list[str], near_threshold: float = 0.8, shingle_words: int = 5,
                    seed: int = 0) -> dict:
    """Exact duplicates (same normalised text as an earlier doc) and near-duplicates.

    A doc is a near-duplicate when the Jaccard similarity of its set of word
    5-shingles with an EARLIER doc's is >= near_threshold (exact copies
    included). One changed word in an n-word doc replaces 5 of its n - 4
    shingles: J = (n - 9) / (n + 1), so it counts from n = 49 words at 0.8
    (J = 0.84 at 60 words). Examples are (earlier doc, later doc) pairs.
    """
    n = len(docs)
    normalised = [normalise(d) for d in docs]
    first = first_occurrences(normalised)
    exact = first != np.arange(n)
    source = near_duplicate_sources(normalised, near_threshold, shingle_words, seed, skip=exact)
    near = exact | (source >= 0)
    exact_examples = [(clip(docs[first[i]]), clip(docs[i])) for i in np.flatnonzero(exact)[:MAX_EXAMPLES]]
    near_examples = [(clip(docs[source[i]]), clip(docs[i]))
                     for i in np.flatnonzero(source >= 0)[:MAX_EXAMPLES]]
    return {
        "documents": n,
        "exact_duplicates": int(exact.sum()),
        "exact_duplicate_rate": float(exact.mean()) if n else 0.0,
        "near_duplicates": int(near.sum()),
        "near_duplicate_rate": float(near.mean()) if n else 0.0,
        "near_threshold": near_threshold,
        "shingle_words": shingle_words,
        "exact_examples": exact_examples,
        "examples": near_examples or exact_examples,  # near-only pairs are the informative ones
    }


def duplicate_findings(stats: dict) -> list[Finding]:
    n = stats["documents"]
    findings = []
    severity = severity_of(stats["exact_duplicate_rate"], EXACT_DUPLICATE_WARNING, EXACT_DUPLICATE_ERROR)
    if severity:
        findings.append(Finding(
            "duplicates", severity,
            f"{percent_of(stats['exact_duplicates'], n)} of training examples are exact duplicates "
            "of an earlier one (ignoring case, punctuation and spacing)",
            "Each copy is trained on again every epoch, so the model memorises those documents, and "
            "copies that a random split puts on both sides make validation loss look better than it is.",
            "Deduplicate the training file before training: keep the first of each set of documents "
            "whose normalised text (lowercase, no punctuation, single spaces) is identical.",
            {"exact_duplicate_rate": stats["exact_duplicate_rate"],
             "exact_duplicates": stats["exact_duplicates"], "examples": stats["exact_examples"]}))
    near_only = stats["near_duplicates"] - stats["exact_duplicates"]
    near_only_rate = near_only / n if n else 0.0
    severity = severity_of(near_only_rate, NEAR_DUPLICATE_WARNING, NEAR_DUPLICATE_ERROR)
    if severity:
        findings.append(Finding(
            "duplicates", severity,
            f"{percent_of(near_only, n)} of training examples are near-duplicates of an earlier one "
            f"(Jaccard >= {stats['near_threshold']} on word {stats['shingle_words']}-shingles) without "
            f"being exact copies; {stats['near_duplicate_rate']:.1%} including exact copies",
            "Near-copies (the same text with a word or a header changed) are memorised like exact "
            "copies, but exact deduplication does not remove them.",
            f"Remove near-duplicates: keep the first of each group of documents sharing >= "
            f"{stats['near_threshold']:.0%} of their word {stats['shingle_words']}-shingles "
            "(e.g. with MinHash LSH, as this audit does).",
            {"near_duplicate_rate": stats["near_duplicate_rate"], "near_only_rate": near_only_rate,
             "near_duplicates": stats["near_duplicates"], "examples": stats["examples"]}))
    return findings


def template_stats(docs: list[str]) -> dict:
    """Docs whose template_key occurred in an earlier doc while their text differs.

    Exact duplicates (same normalised text) are left to duplicate_stats, so a
    doc counts here only if it is the first of its own text. A template's size
    counts its distinct texts.
    """
    n = len(docs)
    seen_texts = set()
    template_sizes = collections.Counter()
    first_of_template = {}
    templated = 0
    for i, doc in enumerate(docs):
        text = normalise(doc)
        if text in seen_texts:
            continue
        seen_texts.add(text)
        key = template_key(doc)
        template_sizes[key] += 1
        if first_of_template.setdefault(key, i) != i:
            templated += 1
    shared = [(key, size) for key, size in template_sizes.most_common(MAX_EXAMPLES) if size > 1]
    examples = [{"template": clip(mask_variables(docs[first_of_template[key]])), "documents": size,
                 "example": clip(docs[first_of_template[key]])} for key, size in shared]
    return {
        "templated_documents": templated,
        "template_rate": templated / n if n else 0.0,
        "largest_template_share": shared[0][1] / n if shared else 0.0,
        "template_examples": examples,
    }


def distinct_n_stats(docs: list[str], sample_words: int = DISTINCT_SAMPLE_WORDS, seed: int = 0) -> dict:
    """distinct-1 and distinct-2: unique word uni/bigrams over all of them.

    Read on random docs up to sample_words words, because the figure falls as a
    corpus grows: only equal-size samples compare across corpora. Bigrams do
    not cross document boundaries.
    """
    order = np.random.default_rng([seed, 4]).permutation(len(docs))
    chosen, words = [], 0
    for i in order:
        if words >= sample_words:
            break
        chosen.append(docs[i])
        words += len(docs[i].split())  # whitespace words: close to normalised words, and cheap
    ids, offsets = word_ids([normalise(d) for d in chosen])
    ids = ids[:sample_words]
    offsets = np.minimum(offsets, len(ids))
    if len(ids) == 0:
        return {"distinct_1": 0.0, "distinct_2": 0.0, "sample_words": 0}
    starts_doc = np.zeros(len(ids), bool)
    starts_doc[offsets[:-1][offsets[:-1] < len(ids)]] = True
    inside = ~starts_doc[1:]  # bigram (i, i+1) is inside a doc unless i+1 starts one
    bigrams = ids[:-1][inside] * (int(ids.max()) + 1) + ids[1:][inside]
    return {
        "distinct_1": len(distinct_sorted(ids)) / len(ids),
        "distinct_2": len(distinct_sorted(bigrams)) / len(bigrams) if len(bigrams) else 0.0,
        "sample_words": int(len(ids)),
    }


def diversity_stats(docs: list[str], seed: int = 0) -> dict:
    """distinct_1, distinct_2 (on a fixed-size sample) and the template figures."""
    return {**distinct_n_stats(docs, seed=seed), **template_stats(docs)}


def diversity_findings(stats: dict, n_docs: int) -> list[Finding]:
    findings = []
    severity = severity_of(stats["template_rate"], TEMPLATE_WARNING, TEMPLATE_ERROR)
    if severity:
        findings.append(Finding(
            "templates", severity,
            f"{percent_of(stats['templated_documents'], n_docs)} of training examples repeat an earlier "
            "example word for word except for numbers, dates, names, e-mails or URLs; the largest "
            f"template covers {stats['largest_template_share']:.1%} of the examples",
            "The model learns a repeated skeleton within a few hundred steps; after that the loss "
            "falls only on the fillers, and generations come out in that one shape whatever the prompt.",
            "Cap the examples per template (e.g. keep at most 10 of each) or add varied examples; "
            "and train for less, e.g. --config.train.epochs=1, watching validation loss.",
            {"template_rate": stats["template_rate"],
             "largest_template_share": stats["largest_template_share"],
             "examples": stats["template_examples"]}))
    if stats["sample_words"] and stats["distinct_2"] < DISTINCT_2_WARNING:
        findings.append(Finding(
            "diversity", "warning",
            f"the data barely varies: distinct-2 is {stats['distinct_2']:.2f} (unique word bigrams over "
            f"all bigrams in {stats['sample_words']:,} words; varied English text measures about 0.5), "
            f"distinct-1 is {stats['distinct_1']:.3f}",
            "With four in five word pairs being repeats, the model sees little it has not seen and "
            "overfits within the first epoch; it will also lose some of its general fluency.",
            "Add more varied examples, or train for less: --config.train.epochs=1 and keep early stopping "
            "(--config.train.early_stopping_patience=3).",
            {"distinct_1": stats["distinct_1"], "distinct_2": stats["distinct_2"],
             "sample_words": stats["sample_words"]}))
    return findings


# Unique word bigrams over all bigrams of a 200,000-word sample. Varied English
# measures about 0.5 at that size (Vim's help text, 195,325 words: 0.48;
# distinct-1 0.09); below 0.2 four in five bigrams are repeats, i.e. the data
# says the same few things over and over.
DISTINCT_2_WARNING = 0.2


DUPLICATES = Check("duplicates", lambda corpus: duplicate_stats(corpus.train_docs, seed=corpus.seed),
                   lambda stats, corpus: duplicate_findings(stats))
# Not on prompt/completion data: a task set is a fixed instruction around varied inputs by
# design (data/task's well-formed sample measured 51.6% "templated").
DIVERSITY = Check("diversity", lambda corpus: diversity_stats(corpus.train_docs, seed=corpus.seed),
                  lambda stats, corpus: diversity_findings(stats, len(corpus.train_docs)),
                  applies=lambda corpus: corpus.prompt_completion is None)
