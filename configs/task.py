"""Prompt/completion fine-tuning on the embedded task sample (data/task/, written by
data/task/generate.py): numbers to words and dates written out.

    make train-task
    # = python -m trainer.task --config=configs/task.py

No network: like configs/local.py it builds a tiny GPT-2 and a tokenizer trained
on the training texts (at runs/tiny-gpt2-task/), then fine-tunes it with the
loss on the completions only. At each evaluation 64 held-out prompts are
completed greedily and scored (exact match, token F1, BLEU, ROUGE-L, in
TensorBoard under validation/task/); the run ends with OUTPUT/review.html and
review.csv. A few minutes on a 2-core CPU.
"""

from configs import default


def get_config():
    config = default.get_config()
    config.output_dir = "runs/task"
    config.data.train_files = "data/task/train.jsonl"
    config.data.validation_files = "data/task/validation.jsonl"
    config.data.prompt_field = "prompt"
    config.data.completion_field = "completion"
    # The longest example is 19 tokens of this tokenizer (prompt + completion + EOS): 32
    # holds each one whole, alone in its row (data.batching auto = padded for this data).
    config.data.block_size = 32
    config.model.name_or_path = "runs/tiny-gpt2-task"
    config.model.bootstrap_tiny = True
    config.model.tiny.n_positions = 64
    # Derived for prompt/completion data, nothing set here: the exported weights are those
    # that complete the held-out prompts best (train.select_best_by=auto -> token_f1), and
    # early stopping waits 30% of the planned evaluations (6 of ~20), since a task metric on
    # 64 prompts plateaus before it climbs.
    return config
