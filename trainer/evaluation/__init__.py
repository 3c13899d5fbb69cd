"""Evaluation: validation loss, task metrics of prompt/completion data, the test split, and
the blinded review sheet.

    heldout.py       the test split scored once on the exported model, with 95% intervals
    loss.py          evaluate: loss, perplexity and accuracy from the eval step's sums; row_sums
    tasks.py         TaskEvaluation: held-out prompts completed greedily, their bounds, the summary
    metrics.py       exact match, token F1, BLEU, ROUGE-L
    review_sheet.py  the sheet a person rates (base against tuned, blinded) and its summary
    bootstrap.py     95% intervals by resampling examples or rows

It uses data and model; the run calls it. It never imports the doctor or reporting.
"""

from trainer.evaluation.loss import evaluate
from trainer.evaluation.tasks import TASK_MAX_NEW_TOKENS, TaskEvaluation, default_prompts
