"""Data audit: measure a corpus and say why a fine-tune on it will go wrong.

Pure functions over lists of strings (and token lengths): no TensorFlow, no
model. Each `*_stats` function measures one thing and returns plain figures;
each `*_findings` function turns those figures into Findings with a severity,
the measured figure in words, why it matters and a concrete fix.
`audit_corpus` runs them all.

Cost on 100,000 documents of ~65 words (6.5M words) on 2 cores: every check is
linear in the corpus. Duplicates use MinHash LSH (no pair of documents is
compared unless they share an LSH bucket), distinct-n reads a fixed 200,000-word
sample and fertility tokenizes at most 20,000 documents, then at most 5,000
distinct words (the add_tokens candidates). The prompt/completion checks
(`prompt_completion_stats`, called by the doctor on such data) are linear too.
"""

import array
import collections
import dataclasses
import re
import unicodedata
from typing import Callable

import numpy as np

# ----------------------------------------------------------------------------- thresholds

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

# Unique word bigrams over all bigrams of a 200,000-word sample. Varied English
# measures about 0.5 at that size (Vim's help text, 195,325 words: 0.48;
# distinct-1 0.09); below 0.2 four in five bigrams are repeats, i.e. the data
# says the same few things over and over.
DISTINCT_2_WARNING = 0.2

# Padded batching cuts every document at block_size. Warn as soon as 1% of the
# documents lose their ending (for instruction data that is the answer); it is
# an error when 10% of all tokens never reach the model.
TRUNCATED_DOCS_WARNING = 0.01
TRUNCATED_TOKENS_ERROR = 0.10
# Padded rows that are mostly padding spend compute on nothing (info only).
PADDING_INFO = 0.50

# Validation documents found verbatim in training, or validation word 8-grams
# that also occur in training: validation loss then measures recall, and early
# stopping keeps the checkpoint that memorised best. 8 words rarely repeat by
# chance in prose (quotes and boilerplate aside), hence the 10% / 30% levels.
LEAKAGE_EXACT_WARNING = 0.01
LEAKAGE_EXACT_ERROR = 0.05
LEAKAGE_NGRAM_WARNING = 0.10
LEAKAGE_NGRAM_ERROR = 0.30

# Tokens per whitespace word. GPT-2's byte-level BPE gives about 1.3 on
# ordinary English prose: a documented rule of thumb (OpenAI: "one token is
# roughly 3/4 of a word"), not a measurement of this corpus. Above 2.0 the text
# is far from the tokenizer's domain (code, another script or language), so a
# block holds under 1.3/2.0 = 65% of the words it would hold in English.
REFERENCE_TOKENS_PER_WORD = 1.3
TOKENS_PER_WORD_WARNING = 2.0
# That reference is for GPT-2's 50,257-token vocabulary. A small vocabulary cuts
# any text finer (measured: a 2,048-token BPE trained ON the corpus gives 2.8
# tokens per word on English READMEs), so below this size tokens per word says
# nothing about the domain and is not warned on.
FERTILITY_MIN_VOCABULARY = 30_000
# Characters outside printable ASCII, Latin-1 and common typographic
# punctuation: 2-4 UTF-8 bytes each, which GPT-2's byte-level BPE, built on
# English web text, rarely merges back into one token.
RARE_CHAR_WARNING = 0.05

# add_tokens candidates (--config.model.add_tokens): a word (a run of letters, the
# unit GPT-2's pre-tokenizer never merges across) seen at least 20 times in the
# fertility sample that costs at least 3 tokens as it occurs (" word" mid-sentence).
# A new token's embedding row starts at the mean of the others and learns only
# from its own occurrences: a word seen a handful of times would keep a
# near-meaningless row. Only the 5,000 most frequent forms are tokenized (one
# batch of short strings); rarer ones save little each.
SPLIT_WORD_MIN_COUNT = 20
SPLIT_WORD_MIN_PIECES = 3
SPLIT_WORD_MAX_CANDIDATES = 5_000
# The candidates are named when making each one token would save 5% of the
# tokens (info; a block then holds ~5% more text), a warning from 15%: about one
# token in seven is then the second or later piece of a few words, pieces that are
# nearly free to predict, so they fill the blocks and flatter the loss. Measured
# with the 2,048-token BPE that bench/bench_false_alarms.py builds on each corpus
# (which cuts far finer than GPT-2's 50,257): stdlib docstrings 2.8%, package
# READMEs 1.1%, stdlib code 0.9%, the embedded sample 0%.
SPLIT_WORD_SAVING_INFO = 0.05
SPLIT_WORD_SAVING_WARNING = 0.15
SPLIT_WORDS_LISTED = 20

# data.normalize: a step is suggested when it would change at least this share of
# the characters. Ordinary prose stays far below it (a double space after a full
# stop every ~80 characters is ~1%); scraped or exported text with tabs, runs of
# spaces, fullwidth forms or stray control bytes goes over it.
NORMALIZE_WARNING = 0.05
NORMALIZE_SAMPLE_DOCS = 5_000

# Prompt/completion data (data.prompt_field / completion_field). Each example is
# prompt + completion + EOS; only the completion and EOS are scored; an example
# longer than block_size loses the START of its prompt, and only a completion
# (+ EOS) longer than block_size is itself cut (at the right, prompt gone).
# A completion cut at the right teaches an answer with no question and no end; a
# prompt that alone fills the block always loses its opening (usually the
# instruction or the question). From 1% of the examples that is an error, as
# for free text that loses its endings (TRUNCATED_DOCS_WARNING); a handful of
# such outliers is a warning: they can be dropped.
PC_TRUNCATED_ERROR = 0.01
# A prompt cut from the left keeps the answer and the prompt's end: info while
# a few long prompts lose their opening, a warning from one example in twenty.
PROMPT_CUT_WARNING = 0.05
# The suggested block_size fits this percentile of the examples whole.
PC_FIT_PERCENTILE = 95
# A separator is an ending (up to 20 characters) shared by 90% of the non-empty
# prompts. OpenAI's prepare_data demanded one suffix common to ALL prompts; 90%
# lets a few malformed rows through without hiding a real separator (those rows
# are then listed, as info).
SEPARATOR_SHARE = 0.90
SEPARATOR_MAX_CHARS = 20
# Completions that start with whitespace: consistent at under 10% or over 90%;
# in between, the same answer is trained as two different first tokens.
LEADING_SPACE_MIXED = (0.10, 0.90)
# Examples whose prompt (stripped) has several different completions. Some
# tasks have several valid answers (paraphrase, open writing), so a few are
# info; from one example in twenty on, for a task with one right answer that is
# label noise of the same order, and the model learns an average answer.
CONFLICTING_PROMPTS_WARNING = 0.05
# Empty (blank) completions train "stop at once": any is a warning (usually a
# missing field); from 10% the model learns that an empty answer is common.
EMPTY_COMPLETION_ERROR = 0.10
# A non-empty completion is a short outlier when it has at most an eighth of
# the median completion's tokens (EOS not counted), checked only when that
# median is at least 8 tokens: one-token labels (classification) are never
# outliers. e.g. median 40 -> at most 5 tokens. A warning from 1% of examples.
SHORT_COMPLETION_MIN_MEDIAN = 8
SHORT_COMPLETION_WARNING = 0.01
# Prompts read for their endings (the check is per prompt: a sample is enough).
PROMPT_SAMPLE = 20_000

# Sampling budgets: distinct-n depends on sample size, so it is always read on
# the same number of words; fertility only needs a stable average.
DISTINCT_SAMPLE_WORDS = 200_000
FERTILITY_SAMPLE_DOCS = 20_000

# Examples quoted in findings are cut to this many characters.
EXAMPLE_CHARS = 200
MAX_EXAMPLES = 3

SEVERITIES = ("error", "warning", "info")


@dataclasses.dataclass
class Finding:
    check: str        # "duplicates", "diversity", "templates", "length", "leakage", "normalization",
                      # "domain_fit", "size", "prompt_completion" (data["issue"] says which part)
    severity: str     # "error" | "warning" | "info"
    figure: str       # the measured figure in words
    why: str          # why it matters for fine-tuning a causal LM
    fix: str          # a config override or a concrete action
    data: dict        # machine-readable figures (rates, counts, up to 3 examples)


def _percent_of(count: int, total: int) -> str:
    """'31.0% (310 of 1,000)': every figure in a finding shows both."""
    share = count / total if total else 0.0
    return f"{share:.1%} ({count:,} of {total:,})"


def _clip(text: str) -> str:
    return text if len(text) <= EXAMPLE_CHARS else text[: EXAMPLE_CHARS - 1] + "…"


def _severity(value: float, warning: float, error: float) -> str | None:
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


def _position_multipliers(n: int, seed: int) -> np.ndarray:
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
    multipliers = _position_multipliers(n, seed)
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
    multipliers = _position_multipliers(n, seed)
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
    mixers = _position_multipliers(rows, seed + 7)
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
    exact_examples = [(_clip(docs[first[i]]), _clip(docs[i])) for i in np.flatnonzero(exact)[:MAX_EXAMPLES]]
    near_examples = [(_clip(docs[source[i]]), _clip(docs[i]))
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
    severity = _severity(stats["exact_duplicate_rate"], EXACT_DUPLICATE_WARNING, EXACT_DUPLICATE_ERROR)
    if severity:
        findings.append(Finding(
            "duplicates", severity,
            f"{_percent_of(stats['exact_duplicates'], n)} of training examples are exact duplicates "
            "of an earlier one (ignoring case, punctuation and spacing)",
            "Each copy is trained on again every epoch, so the model memorises those documents, and "
            "copies that a random split puts on both sides make validation loss look better than it is.",
            "Deduplicate the training file before training: keep the first of each set of documents "
            "whose normalised text (lowercase, no punctuation, single spaces) is identical.",
            {"exact_duplicate_rate": stats["exact_duplicate_rate"],
             "exact_duplicates": stats["exact_duplicates"], "examples": stats["exact_examples"]}))
    near_only = stats["near_duplicates"] - stats["exact_duplicates"]
    near_only_rate = near_only / n if n else 0.0
    severity = _severity(near_only_rate, NEAR_DUPLICATE_WARNING, NEAR_DUPLICATE_ERROR)
    if severity:
        findings.append(Finding(
            "duplicates", severity,
            f"{_percent_of(near_only, n)} of training examples are near-duplicates of an earlier one "
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


# ----------------------------------------------------------------------------- diversity and templates


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
    examples = [{"template": _clip(mask_variables(docs[first_of_template[key]])), "documents": size,
                 "example": _clip(docs[first_of_template[key]])} for key, size in shared]
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
    severity = _severity(stats["template_rate"], TEMPLATE_WARNING, TEMPLATE_ERROR)
    if severity:
        findings.append(Finding(
            "templates", severity,
            f"{_percent_of(stats['templated_documents'], n_docs)} of training examples repeat an earlier "
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


# ----------------------------------------------------------------------------- lengths


def histogram_bounds(block_size: int) -> list[int]:
    """32, 64, 128, ... below block_size, then block_size itself."""
    bounds, bound = [], 32
    while bound < block_size:
        bounds.append(bound)
        bound *= 2
    return bounds + [block_size]


def length_stats(token_lengths: list[int], block_size: int, batching: str) -> dict:
    """Where the tokens of each document go at this block size and batching.

    token_lengths include the EOS the trainer appends. The histogram is a list
    of (upper_bound, count) with counts of lengths in (previous bound, bound];
    its last entry (None, count) holds the documents longer than block_size.
    """
    if batching not in ("packed", "padded"):
        raise ValueError(f"batching={batching!r}: use 'packed' or 'padded'.")
    lengths = np.asarray(token_lengths, np.int64)
    bounds = histogram_bounds(block_size)
    counts = np.bincount(np.searchsorted(bounds, lengths, side="left"), minlength=len(bounds) + 1)
    total = int(lengths.sum())
    long_docs = lengths > block_size
    stats = {
        "documents": len(lengths),
        "tokens": total,
        "block_size": block_size,
        "batching": batching,
        "histogram": [(bound, int(c)) for bound, c in zip(bounds + [None], counts)],
        "mean": float(lengths.mean()) if len(lengths) else 0.0,
        "p50": float(np.percentile(lengths, 50)) if len(lengths) else 0.0,
        "p95": float(np.percentile(lengths, 95)) if len(lengths) else 0.0,
        "p99": float(np.percentile(lengths, 99)) if len(lengths) else 0.0,
        "max": int(lengths.max()) if len(lengths) else 0,
        "long_documents": int(long_docs.sum()),
    }
    if batching == "padded":
        kept = np.minimum(lengths, block_size)
        rows = len(lengths)
        stats.update({
            "truncated_docs_share": float(long_docs.mean()) if rows else 0.0,
            "truncated_tokens": total - int(kept.sum()),
            "truncated_tokens_share": (total - int(kept.sum())) / total if total else 0.0,
            # rows x block_size positions, of which sum(kept) hold real tokens.
            "padding_share": 1 - int(kept.sum()) / (rows * block_size) if rows else 0.0,
        })
    else:
        # Packed: one stream cut into total // block_size rows; the tail is dropped.
        # e.g. 1,000 tokens at block_size 128: 7 rows, 104 tokens dropped.
        stats.update({
            "rows": total // block_size,
            "dropped_tail_tokens": total % block_size,
            "cross_block_docs_share": float(long_docs.mean()) if len(lengths) else 0.0,
        })
    return stats


def covering_block_size(tokens: float, n_positions: int) -> int:
    """The smallest power of two >= tokens, but no more than the model's positions."""
    return min(1 << int(np.ceil(np.log2(max(tokens, 2)))), n_positions)


def length_findings(stats: dict, n_positions: int = 1024) -> list[Finding]:
    n, block = stats["documents"], stats["block_size"]
    summary = (f"token lengths (EOS included): mean {stats['mean']:.0f}, median {stats['p50']:.0f}, "
               f"95th percentile {stats['p95']:.0f}, max {stats['max']:,}; block_size {block}")
    if stats["batching"] == "padded":
        return _padded_findings(stats, n_positions, summary)
    if stats["rows"] == 0:
        return [Finding(
            "length", "error",
            f"the training documents hold {stats['tokens']:,} tokens in all, less than one block of {block}",
            "Packed batching only keeps full blocks, so there is not a single training row.",
            f"Lower --config.data.block_size (e.g. --config.data.block_size={max(2, stats['tokens'] // 4)}), "
            "use --config.data.batching=padded, or add data.",
            {"tokens": stats["tokens"], "block_size": block})]
    long_docs = stats["long_documents"]
    larger = covering_block_size(stats["p99"], n_positions)
    return [Finding(
        "length", "info",
        f"{summary}. Packed into {stats['rows']:,} rows; {stats['dropped_tail_tokens']:,} tail tokens "
        f"are dropped; {_percent_of(long_docs, n)} of documents are longer than a block and are split "
        "across rows (nothing is lost)",
        "A document split across rows is never seen whole, so the model does not learn dependencies "
        f"longer than {block} tokens.",
        (f"If whole documents matter, raise --config.data.block_size={larger}."
         if long_docs and larger > block else "No change needed."),
        {k: stats[k] for k in ("mean", "p50", "p95", "max", "rows", "dropped_tail_tokens",
                               "cross_block_docs_share", "histogram")})]


def _padded_findings(stats: dict, n_positions: int, summary: str) -> list[Finding]:
    n, block = stats["documents"], stats["block_size"]
    findings = []
    severity = ("error" if stats["truncated_tokens_share"] >= TRUNCATED_TOKENS_ERROR
                else "warning" if stats["truncated_docs_share"] >= TRUNCATED_DOCS_WARNING else None)
    if severity:
        larger = covering_block_size(stats["p99"], n_positions)
        reach = "covers 99% of documents" if larger < n_positions else "the model's limit"
        bigger_block = f"--config.data.block_size={larger} ({reach}) or " if larger > block else ""
        findings.append(Finding(
            "length", severity,
            f"padded batching truncates {_percent_of(stats['long_documents'], n)} of documents at "
            f"block_size {block}, cutting {stats['truncated_tokens_share']:.1%} of all tokens "
            f"({stats['truncated_tokens']:,}); {summary}",
            "Tokens past block_size never reach the model: it never learns how long documents end "
            "(for prompt/answer data, the answer) and never sees their EOS.",
            f"Use {bigger_block}--config.data.batching=packed (long documents are split across rows, "
            "not cut).",
            {k: stats[k] for k in ("truncated_docs_share", "truncated_tokens_share", "truncated_tokens",
                                   "long_documents", "p95", "p99", "max", "histogram")}))
    if stats["padding_share"] >= PADDING_INFO:
        smaller = covering_block_size(stats["p95"], n_positions)
        findings.append(Finding(
            "length", "info",
            f"{stats['padding_share']:.1%} of padded row positions are padding; {summary}",
            "Padding is masked out of the loss but still computed: that share of every step's compute "
            "is spent on nothing.",
            "--config.data.batching=packed (no padding)" + (
                f", or --config.data.block_size={smaller} (the 95th percentile's power of two)."
                if smaller < block else "."),
            {"padding_share": stats["padding_share"], "histogram": stats["histogram"]}))
    return findings


# ----------------------------------------------------------------------------- leakage


def leakage_stats(train_docs: list[str], val_docs: list[str], ngram_words: int = 8) -> dict:
    """How much of the validation set the model will have seen in training.

    exact_overlap_rate: share of validation docs whose normalised text is a
    training doc's. ngram_overlap_rate: share of validation word 8-grams (with
    repeats, inside docs) that occur anywhere in training.
    """
    train_texts = [normalise(d) for d in train_docs]
    val_texts = [normalise(d) for d in val_docs]
    train_set = set(train_texts)
    exact = [i for i, text in enumerate(val_texts) if text in train_set]

    ids, offsets = word_ids(train_texts + val_texts)  # one vocabulary for both sides
    hashes, doc_of = ngram_hashes(ids, offsets, ngram_words)
    is_val = doc_of >= len(train_docs)
    seen = contained_in(hashes[is_val], distinct_sorted(hashes[~is_val]))
    val_doc_of = doc_of[is_val] - len(train_docs)
    # Per validation doc, the share of its n-grams seen in training, for the examples.
    grams_per_doc = np.bincount(val_doc_of, minlength=len(val_docs))
    seen_per_doc = np.bincount(val_doc_of[seen], minlength=len(val_docs))
    overlapping = np.argsort(-(seen_per_doc / np.maximum(grams_per_doc, 1)), kind="stable")
    partly_seen = [i for i in overlapping[:2 * MAX_EXAMPLES].tolist() if seen_per_doc[i] and i not in exact]
    examples = [_clip(val_docs[i]) for i in (exact + partly_seen)[:MAX_EXAMPLES]]
    n_val = len(val_docs)
    return {
        "validation_documents": n_val,
        "exact_overlaps": len(exact),
        "exact_overlap_rate": len(exact) / n_val if n_val else 0.0,
        "validation_ngrams": int(len(seen)),
        "ngram_overlap_rate": float(seen.mean()) if len(seen) else 0.0,
        "ngram_words": ngram_words,
        "examples": examples,
    }


def leakage_findings(stats: dict) -> list[Finding]:
    n_val = stats["validation_documents"]
    if n_val == 0:
        return []
    severities = [_severity(stats["exact_overlap_rate"], LEAKAGE_EXACT_WARNING, LEAKAGE_EXACT_ERROR),
                  _severity(stats["ngram_overlap_rate"], LEAKAGE_NGRAM_WARNING, LEAKAGE_NGRAM_ERROR)]
    if not any(severities):
        return []
    severity = "error" if "error" in severities else "warning"
    return [Finding(
        "leakage", severity,
        f"{_percent_of(stats['exact_overlaps'], n_val)} of validation documents also occur in training, "
        f"and {stats['ngram_overlap_rate']:.1%} of validation word {stats['ngram_words']}-grams occur "
        "in training",
        "Validation loss then measures recall of training text, not generalisation: it keeps falling "
        "while the model overfits, and early stopping keeps the most memorised checkpoint.",
        "Remove from the validation file every document that occurs in training (compare normalised "
        "text), or deduplicate the corpus first and let the trainer split it "
        "(--config.data.validation_files='' holds out whole documents).",
        {"exact_overlap_rate": stats["exact_overlap_rate"], "ngram_overlap_rate": stats["ngram_overlap_rate"],
         "examples": stats["examples"]})]


# ----------------------------------------------------------------------------- prompt/completion

# Suggested when the prompts share no ending: the first that no prompt contains.
SEPARATOR_SUGGESTIONS = ("\n\n###\n\n", " ->", "\n\n-->\n\n", "\n\n===\n\n")
# A shared ending that is only one of these (spaces aside) is where a sentence or
# a word ends, not where an answer starts: text goes on after it just as often.
_SENTENCE_END = set(".,;!)'\"")


def _clip_tail(text: str) -> str:
    """The END of a text, for prompts whose ending is the point."""
    return text if len(text) <= EXAMPLE_CHARS else "…" + text[-(EXAMPLE_CHARS - 1):]


def is_separator(ending: str) -> bool:
    """'\nAnswer:', ' ->', '?', '\n' are; '.', 'd', '  ' are not."""
    core = ending.strip(" \t")
    return bool(core) and not (len(core) == 1 and (core.isalnum() or core in _SENTENCE_END))


def prompt_ending_stats(prompts: list[str], seed: int = 0) -> dict:
    """The separator: of the endings (up to SEPARATOR_MAX_CHARS characters) shared
    by SEPARATOR_SHARE of the non-empty prompts that are separators, the longest
    of those ending the most prompts; read on a sample. Without one, the ending
    reported is the longest shared one, or else the longest within 90% of the
    most frequent suffix's count (often one character).
    """
    written = [p for p in prompts if p.strip()]  # empty prompts (open generation) have no boundary
    sample = [written[i] for i in sample_indices(len(written), PROMPT_SAMPLE, seed)]
    counts = collections.Counter()
    for prompt in sample:
        counts.update(prompt[-k:] for k in range(1, min(len(prompt), SEPARATOR_MAX_CHARS) + 1))
    n = len(sample)
    shared = [e for e, m in counts.items() if m >= SEPARATOR_SHARE * n]
    separators = [e for e in shared if is_separator(e)]  # "Answer: " counts even if " " ends more prompts
    if separators:
        # The longest of those most shared: "\nAnswer:" (100%) rather than "?\nAnswer:" (96%),
        # so the prompts listed as lacking it are the malformed ones, not the ones without "?".
        ending = max(separators, key=lambda e: (counts[e], len(e)))
    elif shared:
        ending = max(shared, key=len)
    elif counts:
        top = counts.most_common(1)[0][1]
        ending = max((e for e, m in counts.items() if m >= 0.9 * top), key=lambda e: (len(e), counts[e]))
    else:
        ending = ""
    lacking = [p for p in sample if not p.endswith(ending)] if ending else sample
    suggestion = next((s for s in SEPARATOR_SUGGESTIONS if not any(s in p for p in sample)),
                      SEPARATOR_SUGGESTIONS[0])
    return {
        "sampled_prompts": n,
        "ending": ending,
        "ending_share": counts[ending] / n if n and ending else 0.0,
        "separator": ending if separators else None,
        "lacking": len(lacking),
        "lacking_examples": [_clip_tail(p) for p in lacking[:MAX_EXAMPLES]],
        "suggested_separator": suggestion,
    }


def prompt_completion_stats(pairs: list[tuple[str, str]], prompt_tokens: list[int],
                            completion_tokens: list[int], block_size: int, *, n_positions: int = 1024,
                            seed: int = 0) -> dict:
    """Figures of prompt/completion training examples.

    prompt_tokens: tokens of each prompt; completion_tokens: of each completion,
    EOS included. An example longer than block_size keeps its completion and
    the END of its prompt; a completion longer than block_size is cut at the
    right and no prompt is left. n_positions caps the suggested block_size.
    """
    n = len(pairs)
    prompts = [p for p, _ in pairs]
    completions = [c for _, c in pairs]
    p = np.asarray(prompt_tokens, np.int64).reshape(-1)
    c = np.asarray(completion_tokens, np.int64).reshape(-1)
    if not (len(p) == len(c) == n):
        raise ValueError(f"{n} pairs but {len(p)} prompt and {len(c)} completion token counts.")
    total = p + c

    # Where the tokens go: three disjoint kinds of long example.
    completion_cut = c > block_size
    prompt_fills = ~completion_cut & (p >= block_size - 1) & (total > block_size)
    prompt_cut = ~completion_cut & ~prompt_fills & (total > block_size)
    kept_c = np.minimum(c, block_size)
    kept_p = np.minimum(p, block_size - kept_c)  # the prompt's last tokens that still fit
    # The block that fits 95% of the examples whole; when 95% already fit, the one that fits them all.
    fit = covering_block_size(float(np.percentile(total, PC_FIT_PERCENTILE)), n_positions) if n else block_size
    if fit <= block_size and n:
        fit = covering_block_size(float(total.max()), n_positions)

    # The answer's start and length.
    blank = np.array([not text.strip() for text in completions], bool)
    leading_space = np.array([text[:1].isspace() for text in completions], bool)
    content = c - 1  # without the EOS
    written = ~blank
    median = float(np.median(content[written])) if written.any() else 0.0
    short = np.zeros(n, bool)
    if median >= SHORT_COMPLETION_MIN_MEDIAN:
        short = written & (content <= max(1, int(median) // SHORT_COMPLETION_MIN_MEDIAN))

    # The same prompt (stripped; empty prompts are open generation) with different answers.
    # Answers that differ only in case, punctuation or spacing ("...a symbolic link" and
    # "...a symbolic link.") are one answer, as for duplicates.
    answers = collections.defaultdict(dict)  # prompt -> {answer key: completion}, in order of appearance
    examples_of = collections.Counter()
    for prompt, completion in pairs:
        key = prompt.strip()
        if key:
            answers[key].setdefault(normalise(completion) or completion.strip(), completion.strip())
            examples_of[key] += 1
    conflicting = [key for key, seen in answers.items() if len(seen) > 1]

    def quoted(mask, texts, clip=_clip):
        return [clip(texts[i]) for i in np.flatnonzero(mask)[:MAX_EXAMPLES]]

    return {
        "examples": n,
        "block_size": block_size,
        "n_positions": n_positions,
        "prompt_tokens": int(p.sum()),
        "completion_tokens": int(c.sum()),
        "median_prompt_tokens": float(np.median(p)) if n else 0.0,
        "median_completion_tokens": median,  # EOS not counted
        "completion_cut": int(completion_cut.sum()),
        "completion_cut_examples": quoted(completion_cut, completions),
        "prompt_fills_block": int(prompt_fills.sum()),
        "prompt_fills_block_examples": quoted(prompt_fills, prompts),
        "prompt_cut": int(prompt_cut.sum()),
        "prompt_cut_examples": quoted(prompt_cut, prompts),
        "prompt_tokens_cut": int((p - kept_p)[prompt_cut].sum()),
        "fitting_block_size": fit,
        "fitting_share": float((total <= fit).mean()) if n else 1.0,
        "supervised_tokens": int(kept_c.sum()),
        "supervised_share": float(kept_c.sum() / (kept_c + kept_p).sum()) if n else 0.0,
        "ending": prompt_ending_stats(prompts, seed),
        "written_completions": int(written.sum()),
        "leading_space": int((leading_space & written).sum()),
        "leading_space_examples": quoted(leading_space & written, completions),
        "no_leading_space_examples": quoted(~leading_space & written, completions),
        "conflicting_prompts": len(conflicting),
        "conflicting_examples": sum(examples_of[key] for key in conflicting),
        "conflict_examples": [{"prompt": _clip(key), "examples": examples_of[key],
                               "completions": [_clip(a) for a in list(answers[key].values())[:MAX_EXAMPLES]]}
                              for key in conflicting[:MAX_EXAMPLES]],
        "blank_completions": int(blank.sum()),
        "blank_examples": quoted(blank, prompts, _clip_tail),  # the prompts that got no answer
        "short_completions": int(short.sum()),
        "short_limit": max(1, int(median) // SHORT_COMPLETION_MIN_MEDIAN),
        "short_examples": quoted(short, completions),
    }


def prompt_completion_findings(stats: dict) -> list[Finding]:
    """Findings of the check "prompt_completion"; data["issue"] names which part."""
    n = stats["examples"]
    if n == 0:
        return []
    return [f for f in (
        *_pc_length_findings(stats), _pc_separator_finding(stats), _pc_leading_space_finding(stats),
        _pc_conflict_finding(stats), _pc_blank_finding(stats), _pc_short_finding(stats),
        _pc_supervised_finding(stats)) if f is not None]


def _pc_finding(issue: str, severity: str, figure: str, why: str, fix: str, data: dict) -> Finding:
    return Finding("prompt_completion", severity, figure, why, fix, {"issue": issue, **data})


def _pc_longer_block(stats: dict, otherwise: str) -> str:
    """'--config.data.block_size=512 (fits 97% of the examples whole), or <otherwise>'."""
    block, fit = stats["block_size"], stats["fitting_block_size"]
    if fit > block:
        return (f"--config.data.block_size={fit} (fits {stats['fitting_share']:.0%} of the examples whole), "
                f"or {otherwise}")
    return f"{otherwise[0].upper()}{otherwise[1:]} (block_size {block} is already the model's limit)"


def _pc_length_findings(stats: dict) -> list[Finding]:
    n, block = stats["examples"], stats["block_size"]
    kept = {"fitting_block_size": stats["fitting_block_size"], "fitting_share": stats["fitting_share"]}
    findings = []
    if stats["completion_cut"]:
        share = stats["completion_cut"] / n
        findings.append(_pc_finding(
            "completion_cut", "error" if share >= PC_TRUNCATED_ERROR else "warning",
            f"{_percent_of(stats['completion_cut'], n)} of completions (with EOS) are longer than block_size "
            f"{block}: they are cut at the right and their prompt is dropped",
            "Those examples teach an answer with no question before it and no end (the EOS is cut off): "
            "the model learns to ramble on regardless of the prompt.",
            _pc_longer_block(stats, "shorten or drop those examples."),
            {"count": stats["completion_cut"], "share": share, **kept,
             "examples": stats["completion_cut_examples"]}))
    if stats["prompt_fills_block"]:
        share = stats["prompt_fills_block"] / n
        findings.append(_pc_finding(
            "prompt_fills_block", "error" if share >= PC_TRUNCATED_ERROR else "warning",
            f"{_percent_of(stats['prompt_fills_block'], n)} of prompts alone fill block_size {block} (at least "
            f"{block - 1} tokens): only the end of each that the completion leaves room for is kept",
            "The start of those prompts, where the instruction or the question usually is, never reaches the "
            "model: it learns to answer from the tail of a text it cannot see whole.",
            _pc_longer_block(stats, "shorten those prompts and put the instruction or question at their END, "
                                    "since the start is what is cut."),
            {"count": stats["prompt_fills_block"], "share": share, **kept,
             "examples": stats["prompt_fills_block_examples"]}))
    if stats["prompt_cut"]:
        share = stats["prompt_cut"] / n
        warn = share >= PROMPT_CUT_WARNING
        findings.append(_pc_finding(
            "prompt_cut", "warning" if warn else "info",
            f"{_percent_of(stats['prompt_cut'], n)} of examples are longer than block_size {block}: their "
            f"prompts lose their start ({stats['prompt_tokens_cut']:,} prompt tokens in all); the completions "
            "are kept whole",
            "The model sees those prompts without their opening; if the opening holds the instruction, those "
            "examples teach answers to a question it was not shown.",
            _pc_longer_block(stats, "put the instruction or question at the end of each prompt." if warn else
                             "leave it: a few long prompts losing their opening is harmless."),
            {"count": stats["prompt_cut"], "share": share, "prompt_tokens_cut": stats["prompt_tokens_cut"],
             **kept, "examples": stats["prompt_cut_examples"]}))
    return findings


def _pc_separator_finding(stats: dict) -> Finding | None:
    ending = stats["ending"]
    n, suggestion = ending["sampled_prompts"], ending["suggested_separator"]
    if n == 0:
        return None
    data = {"ending": ending["ending"], "ending_share": ending["ending_share"], "lacking": ending["lacking"]}
    if ending["separator"] is None:
        return _pc_finding(
            "separator", "warning",
            f"the prompts do not end with a common separator: the most common ending, {ending['ending']!r}, "
            f"ends {ending['ending_share']:.0%} of them (a separator should end at least {SEPARATOR_SHARE:.0%}, "
            "and be more than a full stop or a letter)",
            "The model must tell where the prompt stops and its answer starts. Without a fixed marker it may "
            "go on writing the prompt instead of answering, and at inference no ending says 'answer now'.",
            f"End every prompt with one separator that occurs nowhere else, e.g. {suggestion!r} (or a template "
            "such as 'Question: ...\\nAnswer:'), in the data file, and end inference prompts the same way.",
            {**data, "suggested_separator": suggestion, "examples": ending["lacking_examples"]})
    if ending["lacking"]:
        return _pc_finding(
            "separator", "info",
            f"{_percent_of(ending['lacking'], n)} of the sampled prompts do not end with the separator "
            f"{ending['separator']!r} that the others end with",
            "Those examples mark the start of the answer differently: a few are harmless, but they are often "
            "malformed rows.",
            f"Check those rows and end them with {ending['separator']!r}.",
            {**data, "separator": ending["separator"], "examples": ending["lacking_examples"]})
    return None


def _pc_leading_space_finding(stats: dict) -> Finding | None:
    written, spaced = stats["written_completions"], stats["leading_space"]
    share = spaced / written if written else 0.0
    low, high = LEADING_SPACE_MIXED
    if not low < share < high:
        return None
    minority = stats["no_leading_space_examples"] if share >= 0.5 else stats["leading_space_examples"]
    return _pc_finding(
        "completion_start", "warning",
        f"{_percent_of(spaced, written)} of completions start with whitespace and the rest do not",
        "GPT-2's tokenizer gives ' Paris' and 'Paris' different tokens: the same answer is learnt as two "
        "different first tokens, and at inference the model's first token depends on a habit the data does "
        "not settle.",
        "Start every completion the same way: with one space (' Paris') after prompts that end without one, "
        "as OpenAI's data preparation recommends for this tokenizer, or with none if every prompt ends with "
        "a space or a newline.",
        {"leading_space_share": share, "examples": minority})


def _pc_conflict_finding(stats: dict) -> Finding | None:
    n, affected = stats["examples"], stats["conflicting_examples"]
    if not affected:
        return None
    share = affected / n
    return _pc_finding(
        "conflicting_completions", "warning" if share >= CONFLICTING_PROMPTS_WARNING else "info",
        f"{_percent_of(affected, n)} of the examples share their prompt with an example whose completion "
        f"differs ({stats['conflicting_prompts']:,} prompt{'s' if stats['conflicting_prompts'] > 1 else ''} "
        "with several completions)",
        "For one prompt the model can only learn the mix of its answers: for a task with one right answer "
        "(a label, an extraction) that is noise in the labels; for tasks with several valid answers "
        "(paraphrase, open writing) it is expected.",
        "If each prompt has one right answer, keep one completion per prompt (the correct or the most "
        "frequent one); if several are valid, no change is needed.",
        {"conflicting_prompts": stats["conflicting_prompts"], "share": share,
         "examples": stats["conflict_examples"]})


def _pc_blank_finding(stats: dict) -> Finding | None:
    n, blank = stats["examples"], stats["blank_completions"]
    if not blank:
        return None
    share = blank / n
    return _pc_finding(
        "empty_completions", "error" if share >= EMPTY_COMPLETION_ERROR else "warning",
        f"{_percent_of(blank, n)} of completions are empty (only whitespace)",
        "An empty completion trains the model to stop at once (its only scored token is the EOS); usually "
        "the field was missing. Past a few percent the model learns that an empty answer is a common one.",
        "Fill or drop those rows; if empty means 'no answer', write that as a word (e.g. ' none') so the "
        "model learns to say it and you can tell it from a failure.",
        {"count": blank, "share": share, "prompts": stats["blank_examples"]})


def _pc_short_finding(stats: dict) -> Finding | None:
    n, short = stats["examples"], stats["short_completions"]
    if not short:
        return None
    share = short / n
    return _pc_finding(
        "short_completions", "warning" if share >= SHORT_COMPLETION_WARNING else "info",
        f"{_percent_of(short, n)} of completions have at most {stats['short_limit']} token(s) while the "
        f"median completion has {stats['median_completion_tokens']:.0f}",
        "Outliers this short are often placeholders ('N/A', '-', a cut field): each teaches the model to "
        "stop almost at once for that kind of prompt.",
        "Check those rows: fix or drop placeholders; keep them if a short answer is right there.",
        {"count": short, "share": share, "short_limit": stats["short_limit"],
         "median_completion_tokens": stats["median_completion_tokens"], "examples": stats["short_examples"]})


def _pc_supervised_finding(stats: dict) -> Finding:
    share = stats["supervised_share"]
    return _pc_finding(
        "supervised_share", "info",
        f"{share:.1%} of the tokens the model reads are scored ({stats['supervised_tokens']:,} completion and "
        f"EOS tokens); median prompt {stats['median_prompt_tokens']:.0f} tokens, median completion "
        f"{stats['median_completion_tokens']:.0f}",
        f"The other {1 - share:.0%} of the compute reads prompts. Loss and perplexity are measured on "
        "completions only, so they do not compare with a free-text run's, nor with a run whose prompts differ.",
        "No change needed; if the prompts hold text the answer does not need, shorter prompts make each "
        "step cheaper.",
        {"supervised_share": share, "supervised_tokens": stats["supervised_tokens"],
         "prompt_tokens": stats["prompt_tokens"], "completion_tokens": stats["completion_tokens"]})


# ----------------------------------------------------------------------------- domain fit

# Printable ASCII and whitespace, all of Latin-1 above 0xA0 (accented letters,
# £, °, ©) and the General Punctuation block's dashes, quotes and ellipsis
# (U+2010-U+2027), which ordinary English text uses. Anything else is rare.
_RARE_CHARACTER = re.compile("[^\t\n\r\x20-\x7e\xa0-\xff\u2010-\u2027]")


def fertility_stats(docs: list[str], tokenize: Callable[[list[str]], list[list[int]]] | None,
                    sample_docs: int = FERTILITY_SAMPLE_DOCS, seed: int = 0,
                    token_counts: list[int] | None = None) -> dict:
    """Tokens per whitespace word, the share of rare characters and the add_tokens
    candidates (split_word_stats), on a sample of docs.

    token_counts: tokens of each doc (no EOS) when already known, so the sample
    is not tokenized a second time; otherwise `tokenize` is called on it.
    """
    chosen = sample_indices(len(docs), sample_docs, seed)
    sample = [docs[i] for i in chosen]
    words = sum(len(d.split()) for d in sample)
    if token_counts is not None:
        tokens = sum(token_counts[i] for i in chosen)
    else:
        tokens = sum(len(t) for t in tokenize(sample))
    characters = sum(len(d) for d in sample)
    rare = sum(len(_RARE_CHARACTER.findall(d)) for d in sample)
    return {
        "sample_documents": len(sample),
        "tokens_per_word": tokens / words if words else 0.0,
        "rare_char_share": rare / characters if characters else 0.0,
        "reference_tokens_per_word": REFERENCE_TOKENS_PER_WORD,
        **split_word_stats(sample, tokenize, tokens),
    }


# A word as GPT-2's pre-tokenizer cuts it: a run of letters with the space before
# it, if any (` ?\p{L}+`): digits, "_" and punctuation are separate pre-tokens, so
# no token spans them. " Create" mid-sentence and "Create" opening a line are
# tokenized differently, so each form is counted and tokenized on its own.
_PRE_TOKEN_WORD = re.compile(r" ?[^\W\d_]+")


def split_word_stats(sample: list[str], tokenize: Callable[[list[str]], list[list[int]]] | None,
                     sample_tokens: int) -> dict:
    """Frequent words the tokenizer cuts into many pieces: the add_tokens candidates.

    Each distinct frequent form (" word" or "word") is tokenized once; count x
    pieces is what it costs in the sample. saving_share: the share of the
    sample's tokens saved if each candidate form became one token. Listed per
    word, most tokens saved first. Without `tokenize` nothing is measured.
    """
    forms = []
    if tokenize is not None and sample_tokens:
        counts = collections.Counter()
        for doc in sample:
            counts.update(_PRE_TOKEN_WORD.findall(doc))
        frequent = [(form, n) for form, n in counts.most_common(SPLIT_WORD_MAX_CANDIDATES)
                    if n >= SPLIT_WORD_MIN_COUNT]
        pieces = [len(ids) for ids in tokenize([form for form, _ in frequent])] if frequent else []
        forms = [(form, n, k) for (form, n), k in zip(frequent, pieces) if k >= SPLIT_WORD_MIN_PIECES]
    words = {}
    for form, n, k in forms:  # most frequent form first, so a word shows its commonest pieces
        word = words.setdefault(form.lstrip(" "), {"word": form.lstrip(" "), "count": 0, "pieces": k, "saved": 0,
                                                   "forms": []})
        word["forms"].append(form)  # what the add_tokens file needs: " word" is the mid-sentence token
        word["count"] += n
        word["saved"] += n * (k - 1)
    listed = sorted(words.values(), key=lambda w: -w["saved"])[:SPLIT_WORDS_LISTED]
    cost = sum(n * k for _, n, k in forms)
    saved = sum(n * (k - 1) for _, n, k in forms)
    return {
        "split_words": len(words),
        "split_word_examples": listed,
        "split_word_tokens_share": cost / sample_tokens if sample_tokens else 0.0,
        "split_word_saving_share": saved / sample_tokens if sample_tokens else 0.0,
    }


def fertility_findings(stats: dict, block_size: int, n_positions: int = 1024,
                       vocab_size: int = 50_257) -> list[Finding]:
    return [_domain_fit_finding(stats, block_size, n_positions, vocab_size)] + _split_word_findings(stats, vocab_size)


def _domain_fit_finding(stats: dict, block_size: int, n_positions: int, vocab_size: int) -> Finding:
    per_word, rare = stats["tokens_per_word"], stats["rare_char_share"]
    figure = (f"{per_word:.2f} tokens per word (GPT-2 on English prose: about "
              f"{REFERENCE_TOKENS_PER_WORD}); {rare:.1%} of characters are outside ASCII/Latin-1")
    data = {k: stats[k] for k in ("tokens_per_word", "rare_char_share", "reference_tokens_per_word",
                                  "sample_documents")}
    data["vocab_size"] = vocab_size
    if vocab_size < FERTILITY_MIN_VOCABULARY:
        per_word = 0.0  # no reference for so small a vocabulary: only rare characters can tell
        figure += f" (a {vocab_size:,}-token vocabulary: tokens per word not compared)"
    if per_word <= TOKENS_PER_WORD_WARNING and rare <= RARE_CHAR_WARNING:
        return Finding("domain_fit", "info", figure,
                       "The tokenizer splits this text about as efficiently as the text it was built for.",
                       "No change needed.", data)
    # Keep the words per row of English: block_size x (tokens per word / 1.3).
    same_words = min(n_positions, int(block_size * per_word / REFERENCE_TOKENS_PER_WORD))
    return Finding(
        "domain_fit", "warning", figure,
        "The text is far from what the tokenizer was built on (code, another script or language): "
        "each word costs more tokens, so a block holds fewer words and the model must first learn "
        "unfamiliar token sequences.",
        "Check that these files hold the text you meant; for another language or code prefer a model "
        "whose tokenizer covers it (--config.model.name_or_path=...), or keep as many words per row "
        f"with --config.data.block_size={same_words}.",
        data)


def _split_word_findings(stats: dict, vocab_size: int) -> list[Finding]:
    """The add_tokens hint: frequent words cut into many pieces, when making them
    single tokens would save SPLIT_WORD_SAVING_INFO of the tokens or more.

    Below FERTILITY_MIN_VOCABULARY it stays info: so small a vocabulary cuts
    most words (a 300-token BPE saves 51% on the tests' corpus), and a larger
    one is the first fix, not a list of added words.
    """
    saving = stats["split_word_saving_share"]
    if saving < SPLIT_WORD_SAVING_INFO:
        return []
    small = vocab_size < FERTILITY_MIN_VOCABULARY
    words = stats["split_word_examples"]
    listed = ", ".join(f"{w['word']!r} ({w['count']:,}x, {w['pieces']} tokens)" for w in words[:5])
    add = (f"write these words one per line to a file, each exactly as quoted (a leading space is the form "
           f"a word takes mid-sentence), and pass --config.model.add_tokens=FILE: "
           f"{', '.join(repr(form) for w in words for form in w['forms'])}. Each becomes one token whose embedding row starts at "
           "the mean of the existing rows and is learnt in the fine-tune.")
    return [Finding(
        "domain_fit", "warning" if saving >= SPLIT_WORD_SAVING_WARNING and not small else "info",
        f"{stats['split_words']:,} words seen at least {SPLIT_WORD_MIN_COUNT} times in the sample are cut into "
        f"{SPLIT_WORD_MIN_PIECES} or more tokens each and take {stats['split_word_tokens_share']:.1%} of the "
        f"sample's tokens; one token each would save {saving:.1%} of them. Most costly: {listed}",
        "Each occurrence spends several positions on one word, so a block holds less text, and the later "
        "pieces of a word are nearly free to predict once it has begun: they fill the blocks and make the "
        "loss look lower than the text is hard.",
        (f"A {vocab_size:,}-token vocabulary cuts most words: build the tokenizer larger (for the bootstrap "
         f"tiny model, --config.model.tiny.vocab_size), or {add}" if small else add[0].upper() + add[1:]),
        {"split_words": [{k: w[k] for k in ("word", "count", "pieces")} for w in words],
         "split_word_count": stats["split_words"],
         "split_word_tokens_share": stats["split_word_tokens_share"],
         "split_word_saving_share": saving})]


# ----------------------------------------------------------------------------- size


def size_findings(n_train: int, n_val: int, token_total: int | None) -> list[Finding]:
    if n_train == 0:
        return [Finding("size", "error", "there are no training documents",
                        "There is nothing to fine-tune on.",
                        "Point --config.data.train_files at non-empty files.", {"train_documents": 0})]
    tokens = f", {token_total:,} tokens" if token_total is not None else ""
    return [Finding(
        "size", "info", f"{n_train:,} training documents{tokens}; {n_val:,} validation documents",
        "Small corpora overfit within a few epochs; the trainer's early stopping guards against it.",
        "No change needed; keep --config.train.early_stopping_patience above 0.",
        {"train_documents": n_train, "validation_documents": n_val, "train_tokens": token_total})]


def normalization_stats(docs: list[str], applied=(), seed: int = 0) -> dict:
    """The share of characters each data.normalize step not already applied would
    change (control, nfkc, whitespace), on a sample of documents. Lowercasing is a
    choice, not a repair, and is not measured."""
    picked = [docs[i] for i in sample_indices(len(docs), NORMALIZE_SAMPLE_DOCS, seed)]
    counts = collections.Counter("".join(picked))
    total = max(1, sum(counts.values()))
    changed = {}
    if "control" not in applied:
        changed["control"] = sum(n for c, n in counts.items() if c not in "\n\t" and unicodedata.category(c) == "Cc")
    if "nfkc" not in applied:
        changed["nfkc"] = sum(n for c, n in counts.items() if unicodedata.normalize("NFKC", c) != c)
    if "whitespace" not in applied:
        changed["whitespace"] = sum(_whitespace_changes(d) for d in picked)
    return {"sampled_documents": len(picked), "characters": total,
            "changed_share": {step: n / total for step, n in changed.items()}}


def _whitespace_changes(doc: str) -> int:
    """Characters the whitespace step (data.normalize_text) removes or replaces: a run of
    spaces and tabs inside a line keeps one character (unchanged if it holds a plain
    space), trailing runs go, and so do the newlines past one blank line. Indentation is
    kept, so it is not counted."""
    from trainer.data import BLANK_LINES, HORIZONTAL_SPACE

    changes = 0
    for line in doc.split("\n"):
        body = line.lstrip()
        interior = body.rstrip()
        changes += len(body) - len(interior)  # trailing
        for run in HORIZONTAL_SPACE.finditer(interior):
            changes += len(run.group()) - (1 if " " in run.group() else 0)
    # Each run of 3+ newlines (blank lines between) becomes exactly two.
    return changes + sum(m.group().count("\n") - 2 for m in BLANK_LINES.finditer(doc))


def normalization_findings(stats: dict) -> list[Finding]:
    over = {step: share for step, share in stats["changed_share"].items() if share >= NORMALIZE_WARNING}
    if not over:
        return []
    figures = ", ".join(f"{step} {share:.1%}" for step, share in over.items())
    return [Finding(
        "normalization", "warning", f"normalising would change this share of the characters: {figures}",
        "The model learns whatever the text holds, stray whitespace, fullwidth forms and control bytes "
        "included, and spends tokens on them; a byte-level tokenizer cuts such text into more pieces.",
        f"--config.data.normalize={','.join(over)} (the model then writes the normalised form; prompts "
        "should match it).", {k: round(v, 4) for k, v in over.items()})]


# ----------------------------------------------------------------------------- the whole audit


def audit_corpus(train_docs: list[str], val_docs: list[str], token_lengths: list[int] | None,
                 block_size: int, batching: str, tokenize=None, *, n_positions: int = 1024,
                 vocab_size: int = 50_257, seed: int = 0, normalized=(),
                 prompt_completion: dict | None = None) -> tuple[list[Finding], dict]:
    """Every check on one corpus: (findings, most severe first; stats per check).

    prompt_completion: {"pairs", "prompt_tokens", "completion_tokens"} of prompt/completion
    data (train_docs are then prompt + completion). Its own checks replace the length
    check (prompts are cut from the left, not documents split), and the diversity and
    template checks are skipped: a task set is a fixed instruction around varied
    inputs by design (data/task's well-formed sample measured 51.6% "templated").

    token_lengths: per training doc, EOS included. When None and `tokenize` is
    given, they are computed with it; with neither, lengths are not checked.
    tokenize(list of texts) -> list of token id lists; without it, the domain
    fit is not checked. n_positions: the model's context length; vocab_size:
    the tokenizer's; normalized: the data.normalize steps the documents went through.
    """
    token_counts = None
    if token_lengths is None and tokenize is not None:
        token_counts = [len(ids) for ids in tokenize(list(train_docs))]
        token_lengths = [count + 1 for count in token_counts]  # + the EOS the trainer appends
    elif token_lengths is not None:
        token_counts = [length - 1 for length in token_lengths]  # fertility counts words' tokens, no EOS
    stats = {"size": {"train_documents": len(train_docs), "validation_documents": len(val_docs),
                      "train_tokens": int(sum(token_lengths)) if token_lengths is not None else None}}
    findings = size_findings(len(train_docs), len(val_docs), stats["size"]["train_tokens"])
    if not train_docs:
        return findings, stats

    stats["duplicates"] = duplicate_stats(train_docs, seed=seed)
    findings += duplicate_findings(stats["duplicates"])
    if prompt_completion is not None:
        stats["prompt_completion"] = prompt_completion_stats(
            prompt_completion["pairs"], prompt_completion["prompt_tokens"], prompt_completion["completion_tokens"],
            block_size, n_positions=n_positions, seed=seed)
        findings += prompt_completion_findings(stats["prompt_completion"])
    else:
        stats["diversity"] = diversity_stats(train_docs, seed=seed)
        findings += diversity_findings(stats["diversity"], len(train_docs))
    if token_lengths is not None and prompt_completion is None:
        stats["length"] = length_stats(token_lengths, block_size, batching)
        findings += length_findings(stats["length"], n_positions)
    stats["leakage"] = leakage_stats(train_docs, val_docs)
    findings += leakage_findings(stats["leakage"])
    stats["normalization"] = normalization_stats(train_docs, normalized, seed=seed)
    findings += normalization_findings(stats["normalization"])
    if tokenize is not None:
        stats["fertility"] = fertility_stats(train_docs, tokenize, seed=seed, token_counts=token_counts)
        findings += fertility_findings(stats["fertility"], block_size, n_positions, vocab_size)
    findings.sort(key=lambda f: SEVERITIES.index(f.severity))  # stable: checks keep their order
    return findings, stats
