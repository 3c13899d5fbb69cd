"""Domain fit: how well the tokenizer fits the text (tokens per word, rare characters,
frequent words cut into many tokens: model.add_tokens candidates), and what
data.normalize would change."""

import collections
import re
import unicodedata
from typing import Callable

from trainer.data import BLANK_LINES, HORIZONTAL_SPACE
from trainer.diagnosis.audit.common import Check, Finding, sample_indices

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

FERTILITY_SAMPLE_DOCS = 20_000


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


NORMALIZATION = Check("normalization",
                      lambda corpus: normalization_stats(corpus.train_docs, corpus.normalized, seed=corpus.seed),
                      lambda stats, corpus: normalization_findings(stats))
FERTILITY = Check("fertility",
                  lambda corpus: fertility_stats(corpus.train_docs, corpus.tokenize, seed=corpus.seed,
                                                 token_counts=corpus.token_counts),
                  lambda stats, corpus: fertility_findings(stats, corpus.block_size, corpus.n_positions,
                                                           corpus.vocab_size),
                  applies=lambda corpus: corpus.tokenize is not None)
