"""Hard-wrapped lines: prose broken at a fixed width inside its sentences (Project
Gutenberg's 70 columns, e-mail's 72, fixed-width exports), trained as if the breaks
belonged to the text."""

import numpy as np

from trainer.diagnosis.audit.common import MAX_EXAMPLES, Check, Corpus, Finding, clip, percent_of, sample_indices

# Lines are measured in at most this many documents (a random sample): a width shows
# in a few thousand lines, and the check stays linear on any corpus.
SAMPLE_DOCUMENTS = 20_000
# Fewer lines than this say little about a layout.
MIN_LINES = 200
# W, the 95th percentile of line length, in characters. Below 40: verse, lists, code
# and short records; above 120: paragraphs on one line, which is how text should be.
WIDTH_RANGE = (40, 120)
# A line is "at the width" when its length is within [0.75 W, W + 2]: textwrap-style
# wrapping at 70 puts ~90% of a paragraph's lines in 53-72 (a word is ~6 characters).
BAND_LOW, BAND_SLACK = 0.75, 2
BAND_SHARE = 0.60
# Wrapped prose ends ~1 line in 12 with a sentence (a ~80-character sentence ends at a
# break only when its last word happens to fill the line); written lines nearly always do.
SENTENCE_ENDS = tuple(".!?:;\"'”’)…»。！？」』")
SENTENCE_END_SHARE = 0.35
# And the next line goes on in lowercase: a sentence carried over. Verse shares the width
# and the few stops (Milton's blank verse ends ~1 line in 10 with one), but each of its
# lines starts with a capital; a numbered list starts with digits.
CONTINUED_SHARE = 0.50


def _line_pairs(documents: list[str], seed: int) -> tuple[list[tuple[str, str | None]], bool]:
    """(line, the line after it or None) for the lines a wrap would have broken, and
    whether the documents are themselves lines (text_separator=line, or one-line records).

    In multi-line documents the last line of each paragraph ends where its author ended
    it, so only the other lines count. Documents that are lines all count, each followed
    by the next document."""
    picked = sample_indices(len(documents), SAMPLE_DOCUMENTS, seed)
    as_lines = not any("\n" in documents[i] for i in picked)
    pairs = []
    if as_lines:
        for i in picked:
            pairs.append((documents[i], documents[i + 1] if i + 1 < len(documents) else None))
        return pairs, True
    for i in picked:
        paragraph = []
        for line in documents[i].split("\n") + [""]:
            if line.strip():
                paragraph.append(line.rstrip())
            else:
                pairs += zip(paragraph[:-1], paragraph[1:])
                paragraph = []
    return pairs, False


def _continues(line: str | None) -> bool:
    """The line goes on with a lowercase letter (or a letter of a script without case)."""
    first = line.lstrip()[:1] if line else ""
    return first.isalpha() and not first.isupper()


def wrapping_stats(documents: list[str], seed: int = 0) -> dict:
    """How many lines end near one width (W, the 95th percentile of line length), how
    many end a sentence, and how many run on into the next line."""
    pairs, as_lines = _line_pairs(documents, seed)
    stats = {"lines": len(pairs), "documents_are_lines": as_lines, "width": 0, "in_band": 0, "in_band_share": 0.0,
             "sentence_ends": 0, "sentence_end_share": 0.0, "continued": 0, "continued_share": 0.0,
             "examples": []}
    if not pairs:
        return stats
    lengths = np.array([len(line.rstrip()) for line, _ in pairs])
    width = int(round(float(np.percentile(lengths, 95))))
    in_band = (lengths >= BAND_LOW * width) & (lengths <= width + BAND_SLACK)
    ends = np.array([line.rstrip().endswith(SENTENCE_ENDS) for line, _ in pairs])
    followed = [after for _, after in pairs if after is not None]
    continued = sum(_continues(after) for after in followed)
    wrapped = np.flatnonzero(in_band & ~ends)[:MAX_EXAMPLES]
    stats.update({
        "width": width, "in_band": int(in_band.sum()), "in_band_share": float(in_band.mean()),
        "sentence_ends": int(ends.sum()), "sentence_end_share": float(ends.mean()),
        "continued": continued, "continued_share": continued / len(followed) if followed else 0.0,
        "examples": [clip(pairs[i][0]) for i in wrapped]})
    return stats


def wrapping_findings(stats: dict, text_separator: str | None = None) -> list[Finding]:
    """A warning when the lines look hard-wrapped. text_separator: the data.text_separator
    the documents were read with (None: not known, then told by the documents' shape)."""
    width = stats["width"]
    if not (stats["lines"] >= MIN_LINES and WIDTH_RANGE[0] <= width <= WIDTH_RANGE[1]
            and stats["in_band_share"] >= BAND_SHARE and stats["sentence_end_share"] < SENTENCE_END_SHARE
            and stats["continued_share"] >= CONTINUED_SHARE):
        return []
    line_mode = text_separator in ("line", "") if text_separator is not None else stats["documents_are_lines"]
    why = (f"A line break inside a sentence is trained as a newline: the model learns to break its own "
           f"sentences every ~{width} characters, a habit of the file's layout, not of the language.")
    unwrap = "`fmt -w 2500 in.txt > out.txt` re-flows each paragraph onto one line, blank lines kept between them"
    if line_mode:
        why += (f" With text_separator=line it is worse: every line became a document ending in EOS, so the "
                f"model learns to stop every ~{width} characters.")
        fix = (f"Set --config.data.text_separator=blank_line so a paragraph (up to a blank line) is one document, "
               f"and join its wrapped lines ({unwrap}).")
    else:
        fix = (f"Join the wrapped lines of each paragraph before training ({unwrap}), and keep "
               "--config.data.text_separator=blank_line so paragraphs stay whole documents.")
    return [Finding(
        "wrapping", "warning",
        f"the text looks hard-wrapped: {percent_of(stats['in_band'], stats['lines'])} of lines end near one "
        f"width (~{width} characters, the 95th percentile of line length), only "
        f"{stats['sentence_end_share']:.1%} end in sentence punctuation and {stats['continued_share']:.1%} run "
        "on into a next line starting in lowercase",
        why, fix,
        {k: stats[k] for k in ("lines", "width", "in_band_share", "sentence_end_share", "continued_share",
                               "documents_are_lines", "examples")})]


def _measure(corpus: Corpus) -> dict:
    return wrapping_stats(corpus.train_docs, corpus.seed)


# Prompt/completion records are not read from plain text, and their line breaks are the task's.
WRAPPING = Check("wrapping", _measure, lambda stats, corpus: wrapping_findings(stats, corpus.text_separator),
                 applies=lambda corpus: corpus.prompt_completion is None)
