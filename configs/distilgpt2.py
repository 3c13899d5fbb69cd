"""distilgpt2 (82M parameters) on your own corpus.

    python -m trainer.task --config=configs/distilgpt2.py \
        --config.data.train_files='my_data/*.jsonl'

Needs the model: from the Hugging Face hub (network), or a local copy via
--config.model.name_or_path=/path/to/distilgpt2. On one modern GPU, about 10
minutes per 10M training tokens; on a 2-core CPU about 2,500 tokens/s.
"""

from configs import default


def get_config():
    config = default.get_config()
    config.output_dir = "runs/distilgpt2"
    config.model.name_or_path = "distilgpt2"
    config.data.block_size = 512
    config.train.batch_size = 16
    return config
