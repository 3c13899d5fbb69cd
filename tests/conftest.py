"""Shared fixtures: a hand-made corpus, a tiny GPT-2 built locally, small configs.

Nothing is downloaded: the tiny model goes through model.build_tiny and is then
loaded by the same from_pretrained path as a user's distilgpt2.
"""

import json
import os
import random
import sys

import pytest

import trainer  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from configs import default
from tests.gcs_server import gcs_server  # noqa: F401  (one local Cloud Storage server per session)
from trainer import settings

WORDS = ("river stone lamp garden winter morning bread window letter engine cloud harbor "
         "market violin ladder pepper candle meadow orbit copper feather basket tunnel").split()
VERBS = "carries holds warms finds opens follows mends paints lifts counts".split()


def make_documents(n: int, seed: int = 0) -> list[str]:
    """Varied short documents from a small grammar: learnable, not templated."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        sentences = []
        for _ in range(rng.randint(1, 4)):
            words = [rng.choice(WORDS), rng.choice(VERBS), "the", rng.choice(WORDS)]
            if rng.random() < 0.5:
                words += ["near", "the", rng.choice(WORDS)]
            sentences.append(" ".join(words).capitalize() + ".")
        docs.append(f"Note {i}. " + " ".join(sentences))
    return docs


def write_jsonl(path, docs, field="text"):
    with open(path, "w") as f:
        for d in docs:
            f.write(json.dumps({field: d}) + "\n")
    return str(path)


@pytest.fixture(scope="session")
def corpus_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("corpus") / "train.jsonl", make_documents(240))


def build_tiny_model(folder, dropout):
    """A 1-layer, 32-wide GPT-2 with a 300-token BPE vocabulary."""
    from trainer import model as model_lib

    tiny = default.get_config().model.tiny
    tiny.n_layer, tiny.n_embd, tiny.n_head, tiny.n_positions, tiny.vocab_size = 1, 32, 2, 64, 300
    tiny.dropout = dropout
    model_lib.build_tiny(str(folder), make_documents(240), tiny, seed=0, log=lambda m: None)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """No dropout: two runs of the same steps give the same weights, bit for bit."""
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny", dropout=0.0)


@pytest.fixture(scope="session")
def tiny_dropout_model_dir(tmp_path_factory):
    """Dropout 0.1, as distilgpt2 has: a resumed run matches within tolerance, not bit for bit."""
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-dropout", dropout=0.1)


@pytest.fixture(scope="session")
def main_job(tmp_path_factory):
    """`make train-local` itself: configs/local.py through the CLI, only the output folder
    moved. Session-wide: tests/test_recipe.py checks the run, tests/test_serving.py serves
    its serving/ export."""
    output = tmp_path_factory.mktemp("main-job") / "out"
    result = run_cli("trainer.task", "--config=configs/local.py", f"--config.output_dir={output}")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result, json.load(open(output / "report.json"))


def small_config(output_dir, train_files, model_dir, **overrides):
    """configs/default.py shrunk for tests; overrides use dotted keys: {"train.epochs": 2}."""
    config = default.get_config()
    config.output_dir = str(output_dir)
    config.data.train_files = train_files
    config.data.block_size = 32
    config.model.name_or_path = model_dir
    config.train.batch_size = 8
    config.train.epochs = 2
    config.optim.learning_rate = 3e-3
    config.eval.num_prompts = 1
    config.eval.max_new_tokens = 4
    # Pinned: "auto" picks bfloat16 on some of these CPUs and float32 on others, and
    # the suite's exact comparisons must not depend on the machine it runs on.
    config.runtime.precision = "float32"
    config.data.cache_dir = ""  # each test tokenizes; the cache has its own tests
    # No test split unless a test asks for one (tests/test_heldout.py, the task and prepare
    # tests, the main job): the suite's exact row and step counts predate it.
    config.data.test_fraction = 0.0
    # No serving SavedModel unless a test asks for one (tests/test_serving.py, the main job):
    # tracing and saving the sampler costs seconds a run, times the suite's ~100 runs.
    config.export_serving = False
    # The linear schedule over the given epochs unless a test asks for wsd (test_faults,
    # test_optimization): the suite's step counts and early stops predate optim.schedule=auto.
    config.optim.schedule = "linear"
    settings.override(config, overrides)
    config.lock()
    return config


@pytest.fixture(autouse=True)
def float32_policy():
    """The Keras precision policy is process-global: a test that trains in bfloat16
    must not leave the next test's models in it."""
    yield
    if "tensorflow" in sys.modules:  # a test that never imported TensorFlow did not change it (2 s saved)
        sys.modules["tensorflow"].keras.mixed_precision.set_global_policy("float32")


def quiet(_message):
    """log= for train_and_evaluate in tests."""


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The pretrained model shipped in the repository and the embedded sample it is fine-tuned
# on by `make train-local`: for the tests where a model that has learnt something is the
# point (the recipe's rules measured); the fast unit tests keep their tiny random models.
BASE_MODEL_DIR = os.path.join(ROOT, "data", "pretrained", "tunewell-base")
SAMPLE_CORPUS = os.path.join(ROOT, "data", "sample", "corpus.jsonl")


def run_cli(module, *args, timeout=300, env=None):
    """Run `python -m module args` from the repo root; returns CompletedProcess."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def cli_args(config, **overrides):
    """--config=configs/default.py plus the overrides that make `config` (a small_config)."""
    values = {"output_dir": config.output_dir, "data.train_files": config.data.train_files,
              "model.name_or_path": config.model.name_or_path, "data.block_size": config.data.block_size,
              "train.batch_size": config.train.batch_size, "train.epochs": config.train.epochs,
              "optim.learning_rate": config.optim.learning_rate,
              "eval.max_new_tokens": config.eval.max_new_tokens, "eval.num_prompts": config.eval.num_prompts,
              "runtime.precision": config.runtime.precision, "data.cache_dir": config.data.cache_dir,
              "data.test_fraction": config.data.test_fraction, "optim.schedule": config.optim.schedule,
              "export_serving": config.export_serving,
              **overrides}
    return ["--config=configs/default.py"] + [f"--config.{k}={v}" for k, v in values.items()]


def write_shards(blocks, folder: str, split: str, num_shards: int) -> list[dict]:
    """Rows in order, dealt into num_shards contiguous runs; [{"file", "rows"}] per shard. For
    tests that need shards of known rows fast (trainer.prepare deals rows by keys instead)."""
    import tensorflow as tf

    from trainer import filesystem
    from trainer.data import shards

    n, written = blocks.rows, []
    for i in range(num_shards):
        start, stop = i * n // num_shards, (i + 1) * n // num_shards
        name = shards.shard_name(split, i, num_shards)
        with tf.io.TFRecordWriter(filesystem.join(folder, name)) as writer:
            for row in range(start, stop):
                writer.write(shards.serialize_row(blocks.input_ids[row], blocks.attention_mask[row],
                                                  blocks.labels[row]))
        written.append({"file": name, "rows": stop - start})
    return written
