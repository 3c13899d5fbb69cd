"""The embedded sample: a tiny GPT-2 built here, fine-tuned on data/sample.

    make train-local
    # = python -m trainer.task --config=configs/local.py

No network: the first run trains a 2,048-token byte-level BPE tokenizer on the
sample corpus and saves a randomly initialised 2-layer GPT-2 (0.9M parameters)
at runs/tiny-gpt2/, then loads it through the same from_pretrained path as
distilgpt2. About 1-2 minutes on a 2-core CPU.
"""

from configs import default


def get_config():
    config = default.get_config()
    config.output_dir = "runs/local"
    config.data.train_files = "data/sample/corpus.jsonl"
    config.data.block_size = 128
    config.model.name_or_path = "runs/tiny-gpt2"
    config.model.bootstrap_tiny = True
    return config
