"""Size and length: how much data there is, and how its documents fit the block
(truncated documents, padding wasted, a block size that covers them)."""

import numpy as np

from trainer.diagnosis.audit.common import Check, Corpus, Finding, covering_block_size, percent_of

# Padded batching cuts every document at block_size. Warn as soon as 1% of the
# documents lose their ending (for instruction data that is the answer); it is
# an error when 10% of all tokens never reach the model.
TRUNCATED_DOCS_WARNING = 0.01

TRUNCATED_TOKENS_ERROR = 0.10


# Padded rows that are mostly padding spend compute on nothing (info only).
PADDING_INFO = 0.50


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
        f"are dropped; {percent_of(long_docs, n)} of documents are longer than a block and are split "
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
            f"padded batching truncates {percent_of(stats['long_documents'], n)} of documents at "
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


def _size_stats(corpus: Corpus) -> dict:
    return {"train_documents": len(corpus.train_docs), "validation_documents": len(corpus.val_docs),
            "train_tokens": int(sum(corpus.token_lengths)) if corpus.token_lengths is not None else None}


SIZE = Check("size", _size_stats,
             lambda stats, corpus: size_findings(stats["train_documents"], stats["validation_documents"],
                                                 stats["train_tokens"]),
             needs_documents=False)
# Prompt/completion data has its own length checks: prompts are cut from the left, not documents split.
LENGTH = Check("length", lambda corpus: length_stats(corpus.token_lengths, corpus.block_size, corpus.batching),
               lambda stats, corpus: length_findings(stats, corpus.n_positions),
               applies=lambda corpus: corpus.token_lengths is not None and corpus.prompt_completion is None)
