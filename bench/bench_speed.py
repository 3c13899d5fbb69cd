"""Training speed: the usual Keras recipe, Hugging Face's run_clm and tunewell's default path, side by side.

    make bench
    # = .venv/bin/python bench/bench_speed.py [--models tiny,small,distilgpt2] [--steps N] [--out bench]

Writes bench/results.json and bench/speed.md (the table, also printed). About
13 minutes on 2 cores (measured 13 min 9 s with other work on the cores, load
average 0.9-1.6): tiny's 4 records ~1.5 min, small's and distilgpt2's ~4.5 min
each (60-100 s a record, most of it start-up, compiling and the held-out pass),
the CLI runs ~2.5 min. The first run also builds the models (under a minute).
Nothing is downloaded: the corpus, the tokenizers and the randomly initialised
models are made here and cached in bench/.work/ (delete it to rebuild them).

The question: on the same model, data, seed, number of optimizer steps and
peak learning rate, how many useful tokens a second does each way of training
push through, how close does it get to the machine's matmul peak, where does
the time go (input, first step), and does it learn as well (held-out loss)?

Recipes, each record in its own child process (so its peak RSS is its own):
    usual     the tutorial: one document per row, padded to block_size
              (padding="max_length", truncation=True), labels = input ids with
              padding at -100, TFGPT2LMHeadModel compiled with only an optimizer
              (transformers' internal loss), model.fit on a tf.data pipeline, float32
    run_clm   Hugging Face's run_clm: every document tokenized, concatenated and
              cut into block_size rows, labels = input ids, model.fit, float32
    tunewell  what `python -m trainer.task` does with configs/default.py and
              overrides only for the data files, model, block size, batch size,
              output folder and train.max_steps: the trainer's own functions in
              train_and_evaluate's order (precision and steps per call resolved
              as the trainer resolves them); again forced to float32 when the
              default resolves to 16-bit
All three use the trainer's derived peak learning rate for the model and batch
(read off the tunewell record's plan) with its warm-up and decay to 0.1 of the
peak; the Keras recipes get them through transformers.create_optimizer, as
run_clm does. Step 1 (tracing and compiling) is never timed.

The corpus: JSONL documents of lognormal length in tokens of the model's own
tokenizer (median 120, sigma 0.9, targets clipped to [8, 2000]), words drawn Zipf-like
from bench_memory's made-up vocabulary, plus 64 held-out documents. Models:
    tiny        configs/default.py's model.tiny (2 x 128, its own 2,048-token BPE), block 128, batch 16
    small       6 layers x 512, 8 heads, block 512, batch 8
    distilgpt2  6 layers x 768, 12 heads (distilgpt2's shape), block 512, batch 4
small and distilgpt2 share one 8,192-token byte-level BPE trained here and keep
GPT-2's 50,257-wide embedding and LM head (the trainer never shrinks a
vocabulary), so the LM head costs what a real distilgpt2's does.
"""

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # runs from a clone whether or not the package is installed in the venv

import trainer  # noqa: E402,F401  (TF_USE_LEGACY_KERAS before TensorFlow)
from bench_memory import commit, document, make_vocabulary  # noqa: E402  (one made-up language for the benches)

WORK = os.path.join(REPO, "bench", ".work")
# The trainer keeps tokenized corpora in data.cache_dir (default ~/.cache/tunewell).
# The records share one here, so the bench writes nothing outside bench/.work; the
# cold CLI runs each get an empty one of their own.
TOKEN_CACHE = os.path.join(WORK, "token-cache")
RECIPES = ("usual", "run_clm", "tunewell")
# steps: optimizer steps of every record of the model (--steps overrides); step 1
# compiles, so 3 steps time 2. A small step (8 x 512 tokens x 287 MFLOP a token
# = 1.2 TFLOP) takes 5-9 s on 2 cores, a tiny one (16 x 128 x 4.3 MFLOP = 9 GFLOP)
# about 0.1 s: a small or distilgpt2 record takes 1-2 minutes, most of it
# start-up, compiling and the held-out pass.
MODELS = {
    "tiny": {"tokenizer": "tiny", "block_size": 128, "batch_size": 16, "steps": 30},
    "small": {"tokenizer": "bpe-8192", "block_size": 512, "batch_size": 8, "steps": 3,
              "n_layer": 6, "n_embd": 512, "n_head": 8},
    "distilgpt2": {"tokenizer": "bpe-8192", "block_size": 512, "batch_size": 4, "steps": 3,
                   "n_layer": 6, "n_embd": 768, "n_head": 12},
}
GPT2_VOCABULARY, GPT2_POSITIONS = 50_257, 1024
BPE_VOCABULARY = 8_192
# Document lengths in tokens: lognormal, median e^mu = 120, sigma 0.9 puts the
# mean at 120 x e^(0.9^2 / 2) = 180 and 1 document in 50 above 760 tokens
# (e^(ln 120 + 2.05 x 0.9)), so a 512-token row often holds one long document.
MEDIAN_TOKENS, SIGMA, MIN_TOKENS, MAX_TOKENS = 120, 0.9, 8, 2000
# 5,000 x ~180 = ~0.9M tokens: 1,760 rows of 512 or 7,000 of 128, far more than
# any record trains on, and enough for trainer.prepare's throughput to mean something.
# 64 held-out documents x ~180 = ~11.5k tokens: a pass costs a small model 2 x 45M x
# 11.5k = 1 TFLOP (~6 s), paid by every record and twice by each first-step run; the
# loss's standard error is about 2 nats / sqrt(11.5k) = 0.02.
TRAIN_DOCUMENTS, HELDOUT_DOCUMENTS, DRAFT_DOCUMENTS = 5_000, 64, 2_000
ZIPF_EXPONENT = 1.05
SEED = 42  # configs/default.py's seed, used by every recipe
# The CLI runs of the first-step figures stop after this many optimizer steps.
FIRST_STEP_MAX_STEPS = 1


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- machine and matmul peak


def machine() -> dict:
    with open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown")
    return {"cpu": cpu, "cores": os.cpu_count()}


def matmul_peak(dtype_name: str, n: int = 4096, repeats: int = 5) -> float:
    """GFLOP/s of the best of `repeats` warm n x n matmuls in a tf.function: 2 n^3 FLOPs each
    (n^3 multiply-adds), 4096: 137 GFLOP, about half a second at 250 GFLOP/s."""
    import tensorflow as tf

    dtype = tf.as_dtype(dtype_name)
    a = tf.cast(tf.random.stateless_normal([n, n], seed=[1, 2]), dtype)
    b = tf.cast(tf.random.stateless_normal([n, n], seed=[3, 4]), dtype)

    @tf.function
    def product():
        # The sum (n^2 adds, 0.01% of the work) makes the call return only once the product exists.
        return tf.reduce_sum(tf.cast(tf.linalg.matmul(a, b), tf.float32))

    product().numpy()  # trace and warm
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        product().numpy()
        best = min(best, time.perf_counter() - started)
    return 2 * n**3 / best / 1e9


# ----------------------------------------------------------------------------- corpus


def draw_documents(count: int, tokens_per_word: float, seed: int) -> list[str]:
    """`count` documents whose lengths in tokens are lognormal (MEDIAN_TOKENS, SIGMA), clipped
    to [MIN_TOKENS, MAX_TOKENS], when a word makes `tokens_per_word` tokens."""
    rng = np.random.default_rng(seed)
    vocabulary = make_vocabulary(np.random.default_rng(0))  # bench_memory's words, the same in every corpus
    zipf = 1.0 / np.arange(1, len(vocabulary) + 1) ** ZIPF_EXPONENT
    tokens = np.clip(rng.lognormal(np.log(MEDIAN_TOKENS), SIGMA, count), MIN_TOKENS, MAX_TOKENS)
    words = np.maximum(1, np.round(tokens / tokens_per_word)).astype(int)
    drawn = vocabulary[rng.choice(len(vocabulary), size=words.sum(), p=zipf / zipf.sum())].tolist()
    starts = np.concatenate([[0], np.cumsum(words)])
    return [document(drawn[start:stop], rng) for start, stop in zip(starts[:-1], starts[1:])]


def token_lengths(documents: list[str], tokenizer) -> np.ndarray:
    return np.array([len(ids) for ids in tokenizer(documents, add_special_tokens=False)["input_ids"]])


def calibrated_documents(count: int, tokenizer, seed: int) -> tuple[list[str], np.ndarray]:
    """Documents whose median length in `tokenizer`'s tokens is MEDIAN_TOKENS (within 2%):
    draw, measure the median, rescale the tokens per word, draw again with the same seed."""
    tokens_per_word = 1.3
    for _ in range(5):
        documents = draw_documents(count, tokens_per_word, seed)
        lengths = token_lengths(documents, tokenizer)
        ratio = np.median(lengths) / MEDIAN_TOKENS
        if abs(ratio - 1) < 0.02:
            break
        tokens_per_word *= ratio
    return documents, lengths


def write_jsonl(path: str, documents: list[str]) -> None:
    with open(path, "w") as f:
        f.writelines(json.dumps({"text": d}) + "\n" for d in documents)


def read_jsonl(path: str) -> list[str]:
    with open(path) as f:
        return [json.loads(line)["text"] for line in f]


def write_corpus(name: str, tokenizer) -> dict:
    """WORK/data/NAME/{train,heldout}.jsonl calibrated to `tokenizer`; their paths."""
    folder = os.path.join(WORK, "data", name)
    os.makedirs(folder, exist_ok=True)
    paths = {}
    for split, count, seed in (("train", TRAIN_DOCUMENTS, 1), ("heldout", HELDOUT_DOCUMENTS, 2)):
        documents, lengths = calibrated_documents(count, tokenizer, seed)
        paths[split] = os.path.join(folder, f"{split}.jsonl")
        write_jsonl(paths[split], documents)
        say(f"Corpus {name}/{split}: {count:,} documents, {lengths.sum():,} tokens; per document median "
            f"{np.median(lengths):.0f}, mean {lengths.mean():.0f}, min {lengths.min()}, max {lengths.max()} tokens.")
    return paths


# ----------------------------------------------------------------------------- models


def model_dir(name: str) -> str:
    return os.path.join(WORK, "models", name)


def build_bpe(folder: str, documents: list[str]) -> None:
    """A BPE_VOCABULARY-token byte-level BPE (GPT-2's scheme) with EOS, trained on `documents`."""
    from trainer import filesystem, model as model_lib

    tokenizer = model_lib.train_tokenizer(documents, BPE_VOCABULARY, GPT2_POSITIONS)
    filesystem.publish_dir(folder, tokenizer.save_pretrained)


def build_gpt2(folder: str, shape: dict, tokenizer_folder: str) -> None:
    """A randomly initialised GPT-2 of `shape` with GPT-2's vocabulary and positions, saved with
    the tokenizer like a downloaded checkpoint (tf_model.h5 + config + tokenizer files)."""
    from trainer import model as model_lib

    model_lib.save_random_gpt2(folder, model_lib.load_tokenizer(tokenizer_folder), SEED,
                               vocab_size=GPT2_VOCABULARY, n_positions=GPT2_POSITIONS, n_layer=shape["n_layer"],
                               n_embd=shape["n_embd"], n_head=shape["n_head"])


def setup(names: list[str]) -> dict:
    """In a child: the matmul peaks, then the models not cached yet and the corpora.
    {"peaks": {dtype: GFLOP/s}, "files": {model: {"dir", "train", "heldout"}}}."""
    from configs import default
    from trainer import model as model_lib

    peaks = {dtype: matmul_peak(dtype) for dtype in ("float32", "bfloat16")}
    say(f"Matmul peak: float32 {peaks['float32']:,.0f} GFLOP/s, bfloat16 {peaks['bfloat16']:,.0f} GFLOP/s.")
    # The tokenizers learn from a draft of the same language; each corpus is then
    # calibrated in the tokens of the tokenizer that reads it.
    draft = draw_documents(DRAFT_DOCUMENTS, 1.3, seed=0)
    families = {MODELS[name]["tokenizer"] for name in names}
    if "tiny" in families and not os.path.isdir(model_dir("tiny")):
        model_lib.build_tiny(model_dir("tiny"), draft, default.get_config().model.tiny, SEED, say)
    if "bpe-8192" in families and not os.path.isdir(model_dir("bpe-8192")):
        build_bpe(model_dir("bpe-8192"), draft)
    for name in names:
        if MODELS[name]["tokenizer"] != "tiny" and not os.path.isdir(model_dir(name)):
            say(f"Building {name} ...")
            build_gpt2(model_dir(name), MODELS[name], model_dir("bpe-8192"))
    corpora = {family: write_corpus(family, model_lib.load_tokenizer(model_dir(family))) for family in sorted(families)}
    return {"peaks": peaks, "files": {name: {"dir": model_dir(name), **corpora[MODELS[name]["tokenizer"]]}
                                      for name in names}}


# ----------------------------------------------------------------------------- figures shared by the recipes


def flops_per_token(parameters: int, n_positions: int, n_layer: int, n_embd: int, block_size: int) -> float:
    """Training FLOPs per token, PaLM's estimate (Chowdhery et al. 2022, appendix B; nanoGPT's estimate_mfu).

    6 per parameter (forward 2: one multiply-add; backward 4: the gradients of the
    activations and of the weights), the position embedding left out (a lookup); the
    token embedding counts, as it is also the LM head (a d x vocabulary matmul per
    token). Plus attention, which has no parameters: per layer QK^T and AV are 2 x T x d
    multiply-adds each, 4Td FLOPs forward, x3 with backward = 12 x n_layer x d x T.
    distilgpt2's shape at T = 512: 6 x (81.9M - 1,024 x 768) + 12 x 6 x 768 x 512
    = 487M + 28M = 515 MFLOP a token, 1.05 TFLOP for a step of 4 x 512 tokens.
    """
    return 6 * (parameters - n_positions * n_embd) + 12 * n_layer * n_embd * block_size


def heldout_loss(model, tokenizer, documents: list[str], block_size: int, batch_size: int, strategy) -> float:
    """Mean next-token cross-entropy over every supervised token of the held-out documents,
    the same for every recipe: tokenized with EOS after each document, packed into
    block_size rows (the last one padded and masked), scored by the trainer's own
    evaluation step (the one shift, the global token mean)."""
    from trainer import data as data_lib
    from trainer import evaluation
    from trainer.training import steps as steps_lib

    blocks = data_lib.pack_blocks(data_lib.tokenize(documents, tokenizer, desc="Tokenizing held-out"),
                                  block_size, tokenizer.pad_token_id, keep_tail=True)
    rows = data_lib.distributed_eval_data(strategy, blocks, batch_size, tokenizer.pad_token_id)
    return evaluation.evaluate(steps_lib.make_eval_step(model, strategy), rows)["loss"]


class Phases:
    """Wall seconds of a record's phases, for the progress line: where a record's time goes."""

    def __init__(self):
        self.last, self.seconds = time.perf_counter(), {}

    def done(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name], self.last = now - self.last, now

    def __str__(self):
        return ", ".join(f"{name} {seconds:.0f} s" for name, seconds in self.seconds.items())


def timed(seconds: list[float], tokens: list[float], steps: list[int]) -> dict:
    """Figures of the timed calls (one step each, or several in one compiled call):
    the median seconds per step and useful tokens over seconds."""
    per_step = [s / n for s, n in zip(seconds, steps)]
    return {"step_seconds": float(np.median(per_step)), "useful_tokens_per_sec": sum(tokens) / sum(seconds)}


def keras_fit(model, dataset, steps: int) -> list[float]:
    """model.fit for `steps` steps; the seconds of each, from the start of the epoch (the
    iterator exists by then) and between consecutive ends of batches."""
    import tensorflow as tf

    class StepClock(tf.keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.stamps = []

        def on_epoch_begin(self, epoch, logs=None):
            self.stamps.append(time.perf_counter())

        def on_train_batch_end(self, batch, logs=None):
            self.stamps.append(time.perf_counter())

    clock = StepClock()
    model.fit(dataset, epochs=1, steps_per_epoch=steps, callbacks=[clock], verbose=0)
    return np.diff(clock.stamps).tolist()


def untraced(function, run):
    """run(), checking that it did not trace `function` again: a synthetic step timed
    with its compilation would hide the input's cost."""
    before = function.experimental_get_tracing_count()
    result = run()
    if function.experimental_get_tracing_count() != before:
        raise RuntimeError(f"{function.__name__} was traced again for the batch held in memory: give it "
                           "the same input signature as the real input.")
    return result


# ----------------------------------------------------------------------------- recipes (child processes)


def keras_recipe(spec: dict) -> dict:
    """usual or run_clm: rows made the recipe's way, transformers' internal loss, model.fit, float32."""
    import tensorflow as tf
    from transformers import TFGPT2LMHeadModel, create_optimizer

    from trainer import model as model_lib
    from trainer.data import IGNORE_INDEX

    block, batch, steps = spec["block_size"], spec["batch_size"], spec["steps"]
    phases = Phases()
    tokenizer = model_lib.load_tokenizer(spec["dir"])  # GPT-2's tutorial: pad_token = eos_token
    documents = read_jsonl(spec["train"])
    if spec["recipe"] == "usual":
        # One document per row, padded or truncated to the block; padding is not scored.
        encoded = tokenizer(documents, padding="max_length", truncation=True, max_length=block, return_tensors="np")
        ids, mask = encoded["input_ids"].astype(np.int32), encoded["attention_mask"].astype(np.int32)
        labels = np.where(mask == 1, ids, IGNORE_INDEX).astype(np.int32)
    else:
        # run_clm's tokenize_function + group_texts: no EOS between documents, the tail
        # shorter than a block dropped, labels = input ids (the model shifts them).
        stream = np.concatenate([np.asarray(x, np.int32) for x in tokenizer(documents)["input_ids"]])
        ids = stream[: len(stream) // block * block].reshape(-1, block)
        mask, labels = np.ones_like(ids), ids.copy()
    # The rows of the run, shuffled with the seed (what .shuffle() would do), wrapped
    # around if there are fewer than steps x batch: batch k is order[k*batch:(k+1)*batch].
    order = np.resize(np.random.default_rng(SEED).permutation(len(ids)), steps * batch)
    rows = {"input_ids": ids[order], "attention_mask": mask[order], "labels": labels[order]}
    useful = rows["attention_mask"].reshape(steps, batch * block).sum(axis=1)
    dataset = tf.data.Dataset.from_tensor_slices(rows).batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)

    tf.keras.utils.set_random_seed(SEED)
    model = TFGPT2LMHeadModel.from_pretrained(spec["dir"])
    optimizer, _ = create_optimizer(init_lr=spec["learning_rate"], num_train_steps=steps,
                                    num_warmup_steps=spec["warmup_steps"], min_lr_ratio=spec["final_lr_ratio"],
                                    weight_decay_rate=spec["weight_decay"],
                                    adam_global_clipnorm=spec["max_grad_norm"])
    model.compile(optimizer=optimizer)  # no loss given: transformers' internal loss on "labels"
    phases.done("rows and model")
    seconds = keras_fit(model, dataset, steps)[1:]  # step 1 traces and compiles
    figures = timed(seconds, useful[1:].tolist(), [1] * len(seconds))
    phases.done(f"{steps} steps")
    loss = heldout_loss(model, tokenizer, read_jsonl(spec["heldout"]), block, batch, tf.distribute.get_strategy())
    phases.done("held-out")
    # The same batch over and over from memory: what a step costs with no input to wait for.
    synthetic = tf.data.Dataset.from_tensors(next(iter(dataset))).repeat()
    synthetic_seconds = float(np.median(untraced(
        model.train_function, lambda: keras_fit(model, synthetic, spec["synthetic_steps"]))))
    phases.done(f"{spec['synthetic_steps']} from memory")
    say(f"    {phases}")
    return {**figures, "synthetic_step_seconds": synthetic_seconds, "heldout_loss": loss,
            "precision": tf.keras.mixed_precision.global_policy().name, "model": model}


def tunewell_config(spec: dict):
    """configs/default.py with overrides only for data files, model, block, batch, output, steps
    (and the token cache, kept in the work folder)."""
    from configs import default

    config = default.get_config()
    config.data.train_files = spec["train"]
    config.data.validation_files = spec["heldout"]
    config.model.name_or_path = spec["dir"]
    config.data.block_size = spec["block_size"]
    config.train.batch_size = spec["batch_size"]
    config.output_dir = os.path.join(WORK, "runs", f"record-{spec['model']}")
    config.train.max_steps = spec["steps"]
    config.data.cache_dir = TOKEN_CACHE
    if spec["precision"]:
        config.runtime.precision = spec["precision"]
    config.runtime.xla = spec.get("xla", False)
    return config


def tunewell_calls(train_loop, iterator, config, total_steps: int, strategy) -> tuple[list, int]:
    """train_and_evaluate's loop without its evaluations and checkpoints (in a run of
    thousands of steps they come every ~150 steps; the log steps, every 10, are what
    bound the calls): calls of up to per_call steps ending on log steps, per_call set
    after the second call when runtime.steps_per_execution is unset. Per call:
    (seconds, useful tokens, steps); and the steps per call it settled on."""
    import tensorflow as tf

    from trainer.training import distribution

    log_every = config.train.log_every_steps
    per_call, calls, step = config.runtime.steps_per_execution or 1, [], 0
    while step < total_steps:
        steps = min(per_call, (step // log_every + 1) * log_every - step, total_steps - step)
        started = time.perf_counter()
        out, _ = train_loop(iterator, tf.constant(steps), tf.constant(0.0))
        out = {k: float(v) for k, v in out.items()}  # the call's one read back to the host, as in the trainer
        seconds = time.perf_counter() - started
        steps = int(out["steps"])
        step += steps
        calls.append((seconds, out["tokens"], steps))
        if len(calls) == 2 and not config.runtime.steps_per_execution:
            per_call = distribution.steps_per_call(strategy, seconds / steps, log_every)
    return calls, per_call


def tunewell_from_memory(train_loop, strategy, blocks, global_batch: int, calls: int, per_call: int) -> float:
    """Median seconds per step over `calls` calls of per_call steps on the first global batch,
    held in memory and repeated, through the same kind of distributed iterator as the real
    input, so the compiled loop is reused (untraced checks it)."""
    import tensorflow as tf

    from trainer import data as data_lib

    def from_memory(context):
        rows = context.get_per_replica_batch_size(global_batch)
        return tf.data.Dataset.from_tensors({k: getattr(blocks, k)[:rows] for k in data_lib.FIELDS}).repeat()

    iterator = iter(strategy.distribute_datasets_from_function(from_memory))

    def run():
        per_step = []
        for _ in range(calls):
            started = time.perf_counter()
            out, _ = train_loop(iterator, tf.constant(per_call), tf.constant(0.0))
            per_step.append((time.perf_counter() - started) / float(out["steps"]))
        return per_step

    return float(np.median(untraced(train_loop, run)))


def tunewell_recipe(spec: dict) -> dict:
    """train_and_evaluate's functions in its order, then its loop minus evaluations and checkpoints."""
    import tensorflow as tf

    from trainer import data as data_lib
    from trainer.training import distribution, optimization
    from trainer import settings
    from trainer.run import train
    from trainer import model as model_lib
    from trainer.training import steps as steps_lib

    phases = Phases()
    config = settings.resolve(tunewell_config(spec))
    strategy = distribution.get_strategy(config.runtime, say)
    precision = distribution.set_precision(config.runtime, strategy, say)
    prep = train.prepare(config, say)
    config, plan = prep.config, prep.plan
    with strategy.scope():
        tf.keras.utils.set_random_seed(config.seed)
        model, _ = model_lib.load_model(config.model.name_or_path, say)
        model_lib.match_vocabulary(model, prep.tokenizer, say)
        optimizer = optimization.make_optimizer(plan, config.optim,
                                                loss_scaling=distribution.uses_loss_scaling(precision))
        optimizer.build(model.trainable_variables)
    train_loop = steps_lib.make_train_loop(model, optimizer, strategy, config.train.grad_accum_steps,
                                           config.optim.max_grad_norm, config.runtime.xla)
    iterator = iter(data_lib.distributed_train_data(strategy, prep.train_source, config.train.batch_size,
                                                    plan.steps_per_epoch, plan.total_steps, 0, config.seed))
    phases.done("rows and model")
    calls, per_call = tunewell_calls(train_loop, iterator, config, plan.total_steps, strategy)
    seconds, tokens, steps = zip(*calls[1:])  # the first call traces and compiles
    figures = timed(list(seconds), list(tokens), list(steps))
    phases.done(f"{plan.total_steps} steps")
    loss = heldout_loss(model, prep.tokenizer, read_jsonl(spec["heldout"]), config.data.block_size,
                        config.train.batch_size, strategy)
    phases.done("held-out")
    synthetic_calls = max(1, round(spec["synthetic_steps"] / per_call))
    synthetic_seconds = tunewell_from_memory(train_loop, strategy, prep.train_blocks, config.train.batch_size,
                                             synthetic_calls, per_call)
    phases.done(f"{synthetic_calls * per_call} from memory")
    say(f"    {phases}")
    return {**figures, "synthetic_step_seconds": synthetic_seconds, "heldout_loss": loss, "precision": precision,
            "model": model, "learning_rate": plan.learning_rate, "warmup_steps": plan.warmup_steps,
            "final_lr_ratio": config.optim.final_lr_ratio, "weight_decay": config.optim.weight_decay,
            "max_grad_norm": config.optim.max_grad_norm, "steps_per_call": per_call}


def run_record(spec: dict) -> dict:
    """One record, in this (child) process; the model's FLOPs per token and this process's peak RSS."""
    from trainer import model as model_lib

    result = (tunewell_recipe if spec["recipe"] == "tunewell" else keras_recipe)(spec)
    model = result.pop("model")
    config = model.config
    result["flops_per_token"] = flops_per_token(model_lib.count_parameters(model), config.n_positions,
                                                config.n_layer, config.n_embd, spec["block_size"])
    result["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return result


def in_child(task: str, spec) -> dict:
    """setup or run_record in a child process, whose last stdout line is the JSON result.

    Every figure that needs TensorFlow is taken in a child, and this process never
    imports it: Linux carries a process's peak RSS across exec (ru_maxrss), so a
    child of a 1.5 GB parent would report at least 1.5 GB."""
    child = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", json.dumps([task, spec])],
                           cwd=REPO, stdout=subprocess.PIPE, text=True)
    if child.returncode:
        sys.exit(f"The {task} child failed with exit code {child.returncode} (its stderr is above).")
    return json.loads(child.stdout.strip().splitlines()[-1])


def measure_record(spec: dict) -> dict:
    say(f"--- {spec['model']} / {spec['recipe']}{' / ' + spec['precision'] if spec['precision'] else ''}: "
        f"{spec['steps']} steps of {spec['batch_size']} x {spec['block_size']}")
    started = time.perf_counter()
    result = in_child("record", spec)
    say(f"    {result['useful_tokens_per_sec']:,.0f} useful tokens/s, {result['step_seconds']:.3f} s/step "
        f"({result['synthetic_step_seconds']:.3f} from memory), held-out loss {result['heldout_loss']:.4f}, "
        f"peak {result['peak_rss_bytes'] / 2**20:,.0f} MB; {time.perf_counter() - started:.0f} s in all")
    return result


# ----------------------------------------------------------------------------- the three recipes on one model


def measure_model(name: str, files: dict, steps: int, peaks: dict) -> tuple[list[dict], dict]:
    """tunewell first (its plan gives the learning rate the others use), then float32 when
    tunewell's default is 16-bit, then usual and run_clm; the records in table order and
    what tunewell settled on (learning rate, steps per call by precision)."""
    shape = MODELS[name]
    spec = {"model": name, "dir": files["dir"], "train": files["train"], "heldout": files["heldout"],
            "block_size": shape["block_size"], "batch_size": shape["batch_size"], "steps": steps,
            # Fewer steps on the batch held in memory; none compiles (the compiled step is
            # reused, see untraced), so every one is timed.
            "synthetic_steps": max(1, steps // 3), "precision": None}
    default = measure_record({**spec, "recipe": "tunewell"})
    results = [("tunewell", default)]
    if default["precision"] != "float32":
        results.append(("tunewell", measure_record({**spec, "recipe": "tunewell", "precision": "float32"})))
    optimizer = {k: default[k] for k in ("learning_rate", "warmup_steps", "final_lr_ratio", "weight_decay",
                                          "max_grad_norm")}
    for recipe in ("usual", "run_clm"):
        results.append((recipe, measure_record({**spec, "recipe": recipe, **optimizer})))
    best = max(peaks.values())
    records = []
    for recipe, r in sorted(results, key=lambda item: RECIPES.index(item[0])):
        model_flops = r["useful_tokens_per_sec"] * r["flops_per_token"] / 1e9  # GFLOP/s
        records.append({
            "model": name, "recipe": recipe, "precision": r["precision"], "batch_size": shape["batch_size"],
            "block_size": shape["block_size"], "useful_tokens_per_sec": r["useful_tokens_per_sec"],
            "step_seconds": r["step_seconds"],
            "input_wait_share": max(0.0, 1.0 - r["synthetic_step_seconds"] / r["step_seconds"]),
            "peak_rss_bytes": r["peak_rss_bytes"], "heldout_loss": r["heldout_loss"],
            "mfu_vs_float32_peak": model_flops / peaks["float32"], "mfu_vs_best_peak": model_flops / best})
    return records, {"learning_rate": default["learning_rate"], "steps": steps,
                     "steps_per_call": {r["precision"]: r["steps_per_call"] for recipe, r in results
                                        if recipe == "tunewell"}}


# ----------------------------------------------------------------------------- the real CLI


def run_cli(command: list[str], log_name: str) -> float:
    """Run a trainer command from the repository root, its output to WORK/logs; its wall seconds."""
    path = os.path.join(WORK, "logs", log_name + ".log")
    say(f"--- {' '.join(command[1:])}")
    started = time.perf_counter()
    with open(path, "w") as log:
        code = subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - started
    if code:
        with open(path) as log:
            sys.exit(f"{' '.join(command)}\nfailed with exit code {code}; end of {path}:\n{log.read()[-3000:]}")
    say(f"    {seconds:.1f} s (log: {os.path.relpath(path, REPO)})")
    return seconds


def timing(output_dir: str) -> dict:
    with open(os.path.join(output_dir, "report.json")) as f:
        return json.load(f)["timing"]


def fresh_cache(name: str) -> str:
    """--config.data.cache_dir of an empty folder: a cold run tokenizes as a first launch does."""
    return "--config.data.cache_dir=" + os.path.join(WORK, "runs", f"token-cache-{name}")


def train_local() -> dict:
    """The cold first run of `make train-local`: fresh output folder, tiny model and token cache."""
    output, model = os.path.join(WORK, "runs", "train-local"), os.path.join(WORK, "runs", "train-local-tiny")
    wall = run_cli([sys.executable, "-m", "trainer.task", "--config=configs/local.py",
                    f"--config.output_dir={output}", f"--config.model.name_or_path={model}",
                    fresh_cache("train-local")], "train-local")
    return {"wall_seconds": wall, "training_share": timing(output)["training_seconds"] / wall}


def first_step(name: str, files: dict) -> tuple[dict, dict]:
    """Launch to the end of the first step from the raw corpus (cold: nothing tokenized
    yet) and from prepared shards, and trainer.prepare's throughput (cold too) in between."""
    shape = MODELS[name]
    flags = ["--config=configs/default.py", f"--config.data.train_files={files['train']}",
             f"--config.data.validation_files={files['heldout']}", f"--config.model.name_or_path={files['dir']}",
             f"--config.data.block_size={shape['block_size']}", f"--config.train.batch_size={shape['batch_size']}",
             f"--config.train.max_steps={FIRST_STEP_MAX_STEPS}"]
    prepared = os.path.join(WORK, "runs", "prepared")
    runs = {kind: os.path.join(WORK, "runs", f"first-step-{kind}") for kind in ("cold", "prepared")}
    task = [sys.executable, "-m", "trainer.task", *flags]
    run_cli(task + [f"--config.output_dir={runs['cold']}", fresh_cache("first-step")], "first-step-cold")
    run_cli([sys.executable, "-m", "trainer.prepare", *flags, f"--config.data.prepared_dir={prepared}",
             f"--config.output_dir={runs['prepared']}", fresh_cache("prepare")], "prepare")
    run_cli(task + [f"--config.output_dir={runs['prepared']}", f"--config.data.prepared_dir={prepared}"],
            "first-step-prepared")
    # trainer.prepare's own clock, from reading the files to the manifest (Python and
    # TensorFlow start-up left out): "Prepared FOLDER in 12.3 s: ..."
    with open(os.path.join(WORK, "logs", "prepare.log")) as f:
        seconds = float(re.search(r"Prepared .* in ([0-9.]+) s:", f.read()).group(1))
    with open(os.path.join(prepared, "manifest.json")) as f:
        stats = [split["stats"] for split in json.load(f)["splits"].values()]
    throughput = {"documents_per_sec": sum(s["documents"] for s in stats) / seconds,
                  "tokens_per_sec": sum(s["tokens"] for s in stats) / seconds}
    return {kind: timing(folder)["first_step_seconds"] for kind, folder in runs.items()}, throughput


# ----------------------------------------------------------------------------- report


def markdown(result: dict, plans: dict, first_step_model: str, load: list[float], minutes: float) -> str:
    m, peaks, records = result["machine"], result["matmul_peak_gflops"], result["records"]
    lines = [
        "# Training speed (bench/bench_speed.py)", "",
        f"Commit {commit()}; {m['cpu']}, {m['cores']} cores. Matmul peak (4096 x 4096, best of 5): float32 {peaks['float32']:,.0f} "
        f"GFLOP/s, bfloat16 {peaks['bfloat16']:,.0f} GFLOP/s. {minutes:.0f} minutes in all; load average "
        f"{load[0]:.1f} before and {load[1]:.1f} after (other work on the cores slows every figure).", "",
        "Randomly initialised models on a generated corpus (document lengths lognormal, median "
        f"{MEDIAN_TOKENS} tokens). The records of a model take the same steps from the same seed and peak "
        "learning rate; step 1 (compiling) is not timed. Useful tokens are those that are not padding; input "
        "wait = 1 - (step time on a batch held in memory) / (step time on the real input); held-out loss = "
        f"mean next-token cross-entropy on {HELDOUT_DOCUMENTS} held-out documents packed into rows, the same "
        "for every recipe; MFU = useful model FLOP/s (6N + 12 L d T per token) over a matmul peak.", "",
        "| model | recipe | precision | batch x block | useful tokens/s | s/step | input wait | peak RSS "
        "| held-out loss | MFU vs float32 peak | MFU vs best peak |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in records:
        lines.append(f"| {r['model']} | {r['recipe']} | {r['precision']} | {r['batch_size']} x {r['block_size']} | "
                     f"{r['useful_tokens_per_sec']:,.0f} | {r['step_seconds']:.3f} | {r['input_wait_share']:.0%} | "
                     f"{r['peak_rss_bytes'] / 2**20:,.0f} MB | {r['heldout_loss']:.3f} | "
                     f"{r['mfu_vs_float32_peak']:.0%} | {r['mfu_vs_best_peak']:.0%} |")
    lines += ["", "| model | steps | peak learning rate (derived) | tunewell | steps per call | useful tokens/s "
              "vs usual | vs run_clm |", "|---|---:|---:|---|---:|---:|---:|"]
    for name, plan in plans.items():
        speed = {r["recipe"]: r["useful_tokens_per_sec"] for r in records
                 if r["model"] == name and r["recipe"] != "tunewell"}
        for r in records:
            if r["model"] == name and r["recipe"] == "tunewell":
                lines.append(f"| {name} | {plan['steps']} | {plan['learning_rate']:.3g} | {r['precision']} | "
                             f"{plan['steps_per_call'][r['precision']]} | "
                             f"{r['useful_tokens_per_sec'] / speed['usual']:.2f}x | "
                             f"{r['useful_tokens_per_sec'] / speed['run_clm']:.2f}x |")
    local, first, prep = result["train_local"], result["first_step_seconds"], result["prepare"]
    lines += ["",
              f"- `make train-local`, cold (new output folder, tiny model and token cache): "
              f"{local['wall_seconds']:.0f} s, {local['training_share']:.0%} of it in training calls.",
              f"- Launch to the end of the first step ({first_step_model}, step-0 evaluation included): "
              f"{first['cold']:.1f} s from the raw corpus (cold token cache), {first['prepared']:.1f} s from "
              "prepared shards.",
              f"- `python -m trainer.prepare` on that corpus: {prep['documents_per_sec']:,.0f} documents/s, "
              f"{prep['tokens_per_sec']:,.0f} tokens/s (its own clock: reading, tokenizing, the data audit, "
              "writing the shards; start-up left out).", ""]
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated, from " + ", ".join(MODELS))
    parser.add_argument("--steps", type=int, default=None,
                        help="optimizer steps of every record (default per model: " +
                        ", ".join(f"{k} {v['steps']}" for k, v in MODELS.items()) + ")")
    parser.add_argument("--first_step_model", default="small", choices=list(MODELS),
                        help="the model of the first-step and trainer.prepare runs")
    parser.add_argument("--out", default=os.path.join(REPO, "bench"),
                        help="folder for results.json and speed.md")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: [task, spec] as JSON (see in_child)
    args = parser.parse_args()
    if args.child:
        task, spec = json.loads(args.child)
        print(json.dumps({"setup": setup, "record": run_record}[task](spec)))
        return

    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        parser.error(f"--models: unknown {unknown}; choose from {', '.join(MODELS)}")
    if args.steps is not None and args.steps < 3:
        parser.error("--steps must be at least 3 (step 1 compiles and is not timed)")
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    shutil.rmtree(os.path.join(WORK, "runs"), ignore_errors=True)
    for folder in ("runs", "logs", "models"):
        os.makedirs(os.path.join(WORK, folder), exist_ok=True)

    # ------------------------------------------------------------------ matmul peak, models, corpora
    prepared = in_child("setup", sorted(set(names) | {args.first_step_model}, key=list(MODELS).index))
    peaks, files = prepared["peaks"], prepared["files"]

    # ------------------------------------------------------------------ records
    records, plans = [], {}
    for name in names:
        model_records, plans[name] = measure_model(name, files[name], args.steps or MODELS[name]["steps"], peaks)
        records += model_records

    # ------------------------------------------------------------------ the real CLI
    local = train_local()
    first, throughput = first_step(args.first_step_model, files[args.first_step_model])

    result = {"machine": machine(), "matmul_peak_gflops": peaks, "records": records, "train_local": local,
              "first_step_seconds": first, "prepare": throughput}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(result, f, indent=2)
    minutes = (time.perf_counter() - started) / 60
    table = markdown(result, plans, args.first_step_model, [load_before, os.getloadavg()[0]], minutes)
    with open(os.path.join(args.out, "speed.md"), "w") as f:
        f.write(table)
    print(table)


if __name__ == "__main__":
    main()
