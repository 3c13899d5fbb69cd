"""The main job: fine-tune tunewell-base, the small GPT-2 shipped in this repository,
on the embedded sample (data/sample/corpus.jsonl: 467 short everyday texts).

    make train-local
    # = python -m trainer.task --config=configs/local.py

No network: data/pretrained/tunewell-base/ (4 layers x 256, 5.3M parameters,
pretrained here on the Python docs and WordNet, see its README.md) loads through
the same from_pretrained path as a user's distilgpt2. Everything else (epochs,
learning rate, warm-up, evaluation interval, early stopping) is derived from the
data and the model by the same rules as for any corpus. About 100 s on a 2-core CPU
(bench/main_job.md).
"""

from configs import default


def get_config():
    config = default.get_config()
    config.output_dir = "runs/local"
    config.data.train_files = "data/sample/corpus.jsonl"
    # The sample's documents are at most ~200 tokens; packed rows of 128 cost less
    # attention than the model's 256 positions and lose nothing (packing).
    config.data.block_size = 128
    config.model.name_or_path = "data/pretrained/tunewell-base"
    return config
