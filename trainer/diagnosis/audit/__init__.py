"""Data audit: measure a corpus and say why a fine-tune on it will go wrong.

Pure functions over lists of strings (and token lengths): no TensorFlow, no
model. One module per family of checks, each importing only common.py:

    size.py               size, lengths against the block
    duplicates.py         exact and near duplicates, templates, word diversity
    leakage.py            validation text the training set already holds
    prompt_completion.py  the checks of prompt/completion data
    domain_fit.py         tokens per word, add_tokens candidates, what normalising would change
    wrapping.py           hard-wrapped lines (a fixed width, few sentence ends)

In each, a `*_stats` function measures one thing and returns plain figures, a
`*_findings` function turns those into Findings (a severity, the measured figure
in words, why it matters and a concrete fix), and a Check pairs the two for the
registry below, which `audit_corpus` walks in order.

Cost on 100,000 documents of ~65 words (6.5M words) on 2 cores: every check is
linear in the corpus. Duplicates use MinHash LSH (no pair of documents is
compared unless they share an LSH bucket), distinct-n reads a fixed 200,000-word
sample and fertility tokenizes at most 20,000 documents, then at most 5,000
distinct words (the add_tokens candidates). The prompt/completion checks are
linear too.
"""

from trainer.diagnosis.audit import domain_fit, duplicates, leakage, prompt_completion, size, wrapping
from trainer.diagnosis.audit.common import SEVERITIES, Check, Corpus, Finding, normalise
from trainer.diagnosis.audit.domain_fit import (NORMALIZE_WARNING, fertility_findings, fertility_stats,
                                                normalization_findings, normalization_stats)
from trainer.diagnosis.audit.duplicates import (distinct_n_stats, diversity_findings, diversity_stats,
                                                duplicate_findings, duplicate_stats, first_occurrences, jaccard,
                                                mask_variables, template_key, template_stats)
from trainer.diagnosis.audit.leakage import leakage_findings, leakage_stats
from trainer.diagnosis.audit.prompt_completion import (is_separator, prompt_completion_findings,
                                                       prompt_completion_stats)
from trainer.diagnosis.audit.size import length_findings, length_stats, size_findings
from trainer.diagnosis.audit.wrapping import wrapping_findings, wrapping_stats

# The registry, in the order the doctor reports: findings are sorted by severity only,
# stably, so within a severity they keep this order (doctor.md, doctor.json).
CHECKS = (size.SIZE, duplicates.DUPLICATES, prompt_completion.PROMPT_COMPLETION, duplicates.DIVERSITY,
          size.LENGTH, wrapping.WRAPPING, leakage.LEAKAGE, domain_fit.NORMALIZATION, domain_fit.FERTILITY)


def audit_corpus(train_docs: list[str], val_docs: list[str], token_lengths: list[int] | None,
                 block_size: int, batching: str, tokenize=None, *, n_positions: int = 1024,
                 vocab_size: int = 50_257, seed: int = 0, normalized=(),
                 prompt_completion: dict | None = None,
                 text_separator: str | None = None) -> tuple[list[Finding], dict]:
    """Every check of CHECKS that applies to one corpus: (findings, most severe first; stats per check).

    prompt_completion: {"pairs", "prompt_tokens", "completion_tokens"} of prompt/completion
    data (train_docs are then prompt + completion); its own checks replace the length,
    diversity and template checks.

    token_lengths: per training doc, EOS included. When None and `tokenize` is
    given, they are computed with it; with neither, lengths are not checked.
    tokenize(list of texts) -> list of token id lists; without it, the domain
    fit is not checked. n_positions: the model's context length; vocab_size:
    the tokenizer's; normalized: the data.normalize steps the documents went through;
    text_separator: the data.text_separator plain text was read with (the wrapping
    check words its fix by it; None: told by the documents' shape).
    """
    token_counts = None
    if token_lengths is None and tokenize is not None:
        token_counts = [len(ids) for ids in tokenize(list(train_docs))]
        token_lengths = [count + 1 for count in token_counts]  # + the EOS the trainer appends
    elif token_lengths is not None:
        token_counts = [length - 1 for length in token_lengths]  # fertility counts words' tokens, no EOS
    corpus = Corpus(train_docs, val_docs, token_lengths, token_counts, block_size, batching, tokenize,
                    n_positions, vocab_size, seed, tuple(normalized), prompt_completion, text_separator)
    findings, stats = [], {}
    for check in CHECKS:
        if (check.needs_documents and not train_docs) or not check.applies(corpus):
            continue
        stats[check.name] = check.measure(corpus)
        findings += check.judge(stats[check.name], corpus)
    findings.sort(key=lambda f: SEVERITIES.index(f.severity))  # stable: checks keep their order
    return findings, stats
