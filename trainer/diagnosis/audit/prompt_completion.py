"""Prompt/completion data: the checks OpenAI's data-preparation tool made standard, adapted
(prompts filling the block, completions cut, separators, leading spaces, one prompt with
several answers, empty and outlier-short completions, the supervised share)."""

import collections

import numpy as np

from trainer.diagnosis.audit.common import (EXAMPLE_CHARS, MAX_EXAMPLES, Check, Corpus, Finding, clip,
                                            covering_block_size, normalise, percent_of, sample_indices)

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

    def quoted(mask, texts, clip=clip):
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
        "conflict_examples": [{"prompt": clip(key), "examples": examples_of[key],
                               "completions": [clip(a) for a in list(answers[key].values())[:MAX_EXAMPLES]]}
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
            f"{percent_of(stats['completion_cut'], n)} of completions (with EOS) are longer than block_size "
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
            f"{percent_of(stats['prompt_fills_block'], n)} of prompts alone fill block_size {block} (at least "
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
            f"{percent_of(stats['prompt_cut'], n)} of examples are longer than block_size {block}: their "
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
            f"{percent_of(ending['lacking'], n)} of the sampled prompts do not end with the separator "
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
        f"{percent_of(spaced, written)} of completions start with whitespace and the rest do not",
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
        f"{percent_of(affected, n)} of the examples share their prompt with an example whose completion "
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
        f"{percent_of(blank, n)} of completions are empty (only whitespace)",
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
        f"{percent_of(short, n)} of completions have at most {stats['short_limit']} token(s) while the "
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


def _measure(corpus: Corpus) -> dict:
    data = corpus.prompt_completion
    return prompt_completion_stats(data["pairs"], data["prompt_tokens"], data["completion_tokens"],
                                   corpus.block_size, n_positions=corpus.n_positions, seed=corpus.seed)


PROMPT_COMPLETION = Check("prompt_completion", _measure, lambda stats, corpus: prompt_completion_findings(stats),
                          applies=lambda corpus: corpus.prompt_completion is not None)
