"""Leakage: validation documents whose text the training documents already hold, whole or
as long word n-grams, which make the validation loss flatter than the truth."""

import numpy as np

from trainer.diagnosis.audit.common import (MAX_EXAMPLES, Check, Finding, clip, contained_in,
                                            distinct_sorted, ngram_hashes, normalise, percent_of, severity_of,
                                            word_ids)

# Validation documents found verbatim in training, or validation word 8-grams
# that also occur in training: validation loss then measures recall, and early
# stopping keeps the checkpoint that memorised best. 8 words rarely repeat by
# chance in prose (quotes and boilerplate aside), hence the 10% / 30% levels.
LEAKAGE_EXACT_WARNING = 0.01

LEAKAGE_EXACT_ERROR = 0.05

LEAKAGE_NGRAM_WARNING = 0.10

LEAKAGE_NGRAM_ERROR = 0.30


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
    examples = [clip(val_docs[i]) for i in (exact + partly_seen)[:MAX_EXAMPLES]]
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
    severities = [severity_of(stats["exact_overlap_rate"], LEAKAGE_EXACT_WARNING, LEAKAGE_EXACT_ERROR),
                  severity_of(stats["ngram_overlap_rate"], LEAKAGE_NGRAM_WARNING, LEAKAGE_NGRAM_ERROR)]
    if not any(severities):
        return []
    severity = "error" if "error" in severities else "warning"
    return [Finding(
        "leakage", severity,
        f"{percent_of(stats['exact_overlaps'], n_val)} of validation documents also occur in training, "
        f"and {stats['ngram_overlap_rate']:.1%} of validation word {stats['ngram_words']}-grams occur "
        "in training",
        "Validation loss then measures recall of training text, not generalisation: it keeps falling "
        "while the model overfits, and early stopping keeps the most memorised checkpoint.",
        "Remove from the validation file every document that occurs in training (compare normalised "
        "text), or deduplicate the corpus first and let the trainer split it "
        "(--config.data.validation_files='' holds out whole documents).",
        {"exact_overlap_rate": stats["exact_overlap_rate"], "ngram_overlap_rate": stats["ngram_overlap_rate"],
         "examples": stats["examples"]})]


LEAKAGE = Check("leakage", lambda corpus: leakage_stats(corpus.train_docs, corpus.val_docs),
                lambda stats, corpus: leakage_findings(stats))
