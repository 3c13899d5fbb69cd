"""The test split, scored once on the exported model: loss, perplexity and (prompt/
completion data) task metrics, each with a 95% bootstrap interval.

Nothing selects on these figures: early stopping, the export and learning_rate=auto
read validation only, so the test figures are the ones to quote. The validation
figures of the exported model are biased low (or high for task metrics) by the very
choice of that checkpoint among ~20 evaluated.
"""

import math

from trainer import settings
from trainer.evaluation import bootstrap
from trainer.evaluation import loss as loss_lib
from trainer.evaluation import metrics
from trainer.evaluation.tasks import TaskEvaluation


def score(model, tokenizer, blocks, pairs, config, n_positions: int, batch_size: int, source: str) -> dict:
    """report.json's "test": figures of the model as it is now (the exported weights).

    Packed test rows are scored with each document alone (trainer/model/documents.py), as
    the model will meet a document at inference. The loss interval resamples rows: one example per row when examples are padded (one
    per row), a block of packed text otherwise (neighbouring tokens are correlated and a
    row keeps them together; rows of one long document are treated as independent, so
    for long documents the interval is somewhat narrow)."""
    seed = config.seed
    # As at inference: each document alone, from position 0, whatever data.packed_attention
    # trained with (packed rows are scored with each document attending only to itself), so
    # runs that differ in it are compared on the same footing.
    alone = tokenizer.eos_token_id if settings.batching_of(config.data) == "packed" else None
    loss_sums, counts = loss_lib.row_sums(model, blocks, batch_size, alone)
    scored = counts > 0
    tokens = float(counts.sum())
    loss = float(loss_sums.sum() / max(tokens, 1.0))
    interval = bootstrap.ratio_interval(loss_sums[scored], counts[scored], seed)
    padded = settings.batching_of(config.data) == "padded"
    result = {
        "source": source, "documents": int(blocks.documents), "rows": int(blocks.rows), "tokens": int(tokens),
        "loss": loss, "loss_interval": interval,
        "perplexity": math.exp(min(loss, 50.0)),
        "perplexity_interval": [math.exp(min(x, 50.0)) for x in interval] if interval else None,
        "interval": f"95%, bootstrap over {'examples' if padded else 'rows'} ({bootstrap.RESAMPLES} resamples)",
    }
    task = TaskEvaluation.of(config, pairs, tokenizer, n_positions)
    if task.examples:
        predictions = task.complete(model, tokenizer)
        references = task.references
        each = metrics.per_example(predictions, references)
        figures = {name: {"value": sum(values) / len(values), "interval": bootstrap.mean_interval(values, seed)}
                   for name, values in each.items()}
        figures["bleu"] = {
            "value": metrics.corpus_bleu(predictions, references),
            "interval": bootstrap.statistic_interval(
                len(predictions), lambda picks: metrics.corpus_bleu([predictions[i] for i in picks],
                                                                    [references[i] for i in picks]), seed)}
        result["task_metrics"] = {"examples": len(task.examples), **figures}
    return result

