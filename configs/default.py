"""The whole configuration schema, with the defaults for a real pretrained model.

Every other file in configs/ imports this one and overrides only what differs.
Any field can be overridden on the command line:

    python -m trainer.task --config=configs/default.py \
        --config.data.train_files=my_corpus.jsonl --config.optim.learning_rate=5e-5

The config is locked: a misspelt key or a value of the wrong type stops the run
at launch. Fields whose default is None are derived from the data and the model
when the run starts (see trainer/training/optimization.py: plan_training); the resolved
values are written to OUTPUT/config.json.
"""

import ml_collections
from absl import flags
from ml_collections import config_dict
from ml_collections import config_flags


class LearningRateParser(flags.ArgumentParser):
    """--config.optim.learning_rate: a positive number or "auto" (a short range test)."""

    def parse(self, argument):
        if isinstance(argument, str) and argument.strip().lower() == "auto":
            return "auto"
        try:
            return float(argument)
        except (TypeError, ValueError):
            raise ValueError(f"{argument!r} is neither a number nor auto") from None

    def flag_type(self):
        return "float or auto"


# The learning-rate field holds None, a float or "auto": its placeholder type is
# `object`, parsed on the command line by the parser above.
config_flags.register_flag_parser_for_type(object, LearningRateParser())


def get_config():
    config = ml_collections.ConfigDict()

    # Where everything goes: config.json, logs/, checkpoints/, export/,
    # export_pytorch/, report.json. Running again with the same directory resumes.
    config.output_dir = "runs/default"
    # Seed for the validation split, shuffling, initialisation of from-scratch
    # models and sampling of the evaluation generations.
    config.seed = 42

    # Doctor checks before training (trainer/diagnosis/): "strict" stops before any
    # compute on an error-level finding, "warn" reports and trains, "off" skips.
    config.preflight = "warn"

    # Also export OUTPUT/serving/: a SavedModel with a `generate` signature (token ids in,
    # new ids and their log-probabilities out; greedy or sampled; README "Serve the model")
    # that TensorFlow alone loads, for TF Serving, a Vertex AI endpoint or your own code.
    # Costs ~2 s at the end of the main job (tracing the sampler, writing the weights again).
    config.export_serving = True

    # ---------------------------------------------------------------- data
    config.data = ml_collections.ConfigDict()
    # Training files: comma-separated paths or glob patterns. The format comes
    # from the extension: .txt, .jsonl/.json, .csv, .parquet.
    config.data.train_files = ""
    # Validation files in the same forms. Empty: hold out validation_fraction of
    # the training DOCUMENTS (split before packing, so no block straddles both).
    config.data.validation_files = ""
    # Share of training documents held out when validation_files is empty.
    config.data.validation_fraction = 0.1
    # Upper bound on the held-out documents, so evaluation stays cheap on big corpora.
    config.data.validation_max_examples = 2000
    # Test files in the same forms: scored once, on the exported model, with 95%
    # intervals; nothing (early stopping, the export, learning_rate=auto) selects on
    # them, so their figures are the honest ones. Empty: hold out test_fraction.
    config.data.test_files = ""
    # Share of the training documents held out for test when test_files is empty: those
    # whose seeded key lies in the top 5% of the key range (a fixed threshold, so every
    # reader, in memory or in a Beam pipeline, takes the same ones), ~5% +- sqrt(5% x n).
    # 0 = no test split. A corpus of under ~40 documents may get none: the run says so.
    config.data.test_fraction = 0.05
    # Column holding the text in JSON/JSONL/CSV/Parquet files.
    config.data.text_field = "text"
    # Prompt/completion data: the fields (JSON keys or columns) holding the input and
    # the output. Set both to train on "given the prompt, write the completion": each
    # example is prompt + completion + EOS, and only the completion and EOS are scored
    # (prompt positions get label -100). Both "" = free text from text_field.
    config.data.prompt_field = ""
    config.data.completion_field = ""
    # Plain-text files (.txt, .md): "blank_line" = documents separated by one or more
    # blank lines, so hard-wrapped paragraphs stay whole; "line" = one document per line
    # ("" is its old spelling: old configs and resumed runs keep their meaning); any
    # other string (e.g. "<|endoftext|>") splits the files at that literal separator.
    # Each document ends in EOS: one per line teaches wrapped prose to stop every line.
    config.data.text_separator = "blank_line"
    # Text normalisation for messy corpora, applied as documents are read: "" = none,
    # or a comma-separated subset of control,nfkc,whitespace,lowercase (see
    # data.normalize_text). The doctor says when nfkc/whitespace/control would change
    # much of the text. The model learns the normalised form: prompts should match it.
    config.data.normalize = ""
    # Tokens per training row. Must not exceed the model's positions (1024 for GPT-2).
    config.data.block_size = 512
    # "packed": documents joined with EOS and cut into full blocks (no padding
    # waste). "padded": one document per row, truncated to block_size, padding
    # masked out of attention and loss. "auto": packed for free text, padded for
    # prompt/completion data (an example alone in its row is not distracted by the
    # ones before it: README "Packed or padded, measured").
    config.data.batching = "auto"
    # What a token of a packed row attends to: "document" (only its own document,
    # positions restarting at 0 at each one, as the document will be seen at inference;
    # trainer/model/documents.py) or "row" (everything before it in the row, GPT-2's
    # pretraining recipe: a document's first tokens see the end of another). Padded rows
    # hold one document each and are the same either way. Measured (bench/levers.md, the
    # same test rows): test loss 0.064 nats lower on short README paragraphs, 0.017 on
    # the main job's sample, no change on whole READMEs (one document per row already),
    # at 0.3% of the tokens/s.
    config.data.packed_attention = "document"
    # Processes for batched tokenization (datasets.map num_proc).
    config.data.num_proc = 1
    # Token ids of raw files are cached here, keyed by the tokenizer and the
    # documents' text, so a second run on the same data does not tokenize
    # again: a local or gs:// folder, "" = no cache. "auto": OUTPUT_DIR/token-cache
    # when output_dir is gs:// (every worker and every restart of a cloud job reach
    # it; a VM's disk dies with the VM), else ~/.cache/tunewell (this machine's runs).
    config.data.cache_dir = "auto"
    # A folder (local or gs://) of shards written by `python -m trainer.prepare`
    # with this config: tokenized and packed once, read by tf.data file by file.
    # "" = read train_files and tokenize them at launch, in memory.
    config.data.prepared_dir = ""

    # ---------------------------------------------------------------- model
    config.model = ml_collections.ConfigDict()
    # Hub name or local directory of a GPT-2-family checkpoint (tf_model.h5,
    # model.safetensors single or sharded, or pytorch_model.bin with torch installed).
    config.model.name_or_path = "distilgpt2"
    # Tokenizer to use; "" = the one stored with the model.
    config.model.tokenizer = ""
    # A UTF-8 file of new tokens, one per line (domain words the tokenizer splits
    # into many pieces). They are added to the tokenizer and their embedding rows
    # start at the mean of the existing rows. "" = none. The doctor's domain-fit
    # check names candidates when the text splits badly.
    config.model.add_tokens = ""
    # Build a tiny GPT-2 and a byte-level BPE tokenizer trained on the training
    # files at name_or_path first, if nothing is there yet (for runs with no
    # model hub, like the embedded sample). It is then loaded like any checkpoint.
    config.model.bootstrap_tiny = False
    # Size of that tiny model: layers, width, heads, positions, vocabulary.
    config.model.tiny = ml_collections.ConfigDict()
    config.model.tiny.n_layer = 2
    config.model.tiny.n_embd = 128
    config.model.tiny.n_head = 4
    config.model.tiny.n_positions = 256
    config.model.tiny.vocab_size = 2048
    # Dropout of that tiny model (residual, embedding and attention).
    config.model.tiny.dropout = 0.1

    # ---------------------------------------------------------------- optimisation
    config.optim = ml_collections.ConfigDict()
    # Peak learning rate of AdamW. The rule: 1e-4 at GPT-2's width (768), scaled by
    # 768/n_embd and by sqrt(tokens per step / 8192), kept in [1e-5, 1e-3]; from 6e-4
    # (pre-training rate, up to 3e-3) for a bootstrap_tiny model. "auto" = a short range
    # test on the run's own data and model before training (5% of the planned steps, at
    # least 20 and at most 100), its pick kept within x3 of the rule. None = derived: the
    # range test when a pretrained model is fine-tuned under wsd (measured there: within
    # 0.1-2.0% of a grid's best test perplexity at 52-56% of its tokens, against 100-107%
    # at the rule's rate; README "The recipe's levers, measured"), the rule otherwise.
    config.optim.learning_rate = config_dict.placeholder(object)
    # Shape after warm-up: "linear", "cosine", "inverse_sqrt", "constant", or "wsd"
    # (warm-up, stable, decay): the peak rate while validation improves, then a linear
    # decay over decay_ratio of the steps so far, started when validation has not
    # improved for early_stopping_patience - 1 evaluations; the run ends with the decay,
    # so train.epochs is a cap (derived: 20 epochs, at most 20,000 steps). "auto": wsd
    # when the validation loss selects the best weights, linear when a task metric does
    # (its plateaus on a few dozen prompts are too noisy to start a decay on). Measured:
    # README "The recipe's levers, measured".
    config.optim.schedule = "auto"
    # Linear warm-up length in optimizer steps. None = warmup_ratio of the total.
    config.optim.warmup_steps = config_dict.placeholder(int)
    # Warm-up as a share of the total steps, used when warmup_steps is None.
    config.optim.warmup_ratio = 0.06
    # Learning rate at the last step as a share of the peak (linear, cosine and wsd).
    config.optim.final_lr_ratio = 0.1
    # wsd: the decay's length as a share of the steps before it (0.2: a decay started at
    # step 400 runs to step 480), the usual 10-20% of warmup-stable-decay recipes.
    config.optim.decay_ratio = 0.2
    # Decoupled weight decay; biases and LayerNorm parameters are never decayed.
    config.optim.weight_decay = 0.01
    # Adam moment decay rates and epsilon.
    config.optim.beta_1 = 0.9
    config.optim.beta_2 = 0.999
    config.optim.epsilon = 1e-8
    # "ema": keep an exponential moving average of the weights (momentum 1 - 1/k for an
    # evaluation every k steps, kept in [0.9, 0.999]: the average spans about one interval),
    # score it at every evaluation beside the weights themselves, and keep whichever has the
    # lower validation loss as the best (and exported) weights. Costs one more validation
    # pass per evaluation. Needs train.select_best_by=loss. "none": the weights alone.
    config.optim.weight_averaging = "none"
    # Clip the global gradient norm (over all replicas) to this; 0 disables.
    config.optim.max_grad_norm = 1.0

    # ---------------------------------------------------------------- training
    config.train = ml_collections.ConfigDict()
    # GLOBAL batch: sequences per optimizer step, summed over replicas and
    # accumulation micro-batches. Tokens per step = batch_size x block_size.
    config.train.batch_size = 16
    # Split each step's batch into this many micro-batches and sum their
    # gradients (same result, less memory). batch_size must divide evenly.
    config.train.grad_accum_steps = 1
    # Passes over the training data. None = derived: 3 epochs, raised to reach
    # 300 optimizer steps (at most 10 epochs), lowered to stay near 3,000 steps
    # (at least 1). Early stopping usually ends the run sooner.
    config.train.epochs = config_dict.placeholder(int)
    # Hard cap on optimizer steps; 0 = no cap. The schedule spans the capped total.
    config.train.max_steps = 0
    # Evaluate on validation every N optimizer steps (and at step 0). None =
    # derived: about 20 evaluations per run, at least one per epoch.
    config.train.eval_every_steps = config_dict.placeholder(int)
    # Stop after this many evaluations without improvement; 0 = never stop early. On the
    # wsd schedule nothing stops early: the decay starts one evaluation sooner (2 of 3)
    # and ends the run; 0 there = the decay waits for the cap.
    # None = derived: 3 when the loss selects (a validation loss over thousands of
    # tokens is smooth: 3 evaluations without a new low is a turn); with a task
    # metric, 30% of the planned evaluations and at least 3 (6 of ~20), because a
    # metric on 64 prompts plateaus before it climbs: patience 3 stopped the task
    # sample at token F1 20, a run that reached 55 with 6.
    config.train.early_stopping_patience = config_dict.placeholder(int)
    # Improvement in validation loss (nats per token) that counts as better.
    config.train.early_stopping_min_delta = 0.0
    # What picks the exported (best) weights and drives early stopping: "loss"
    # (validation loss), or a task metric of prompt/completion data: "exact_match",
    # "token_f1", "bleu", "rouge_l" (higher is better; see eval.task_examples).
    # "auto": token_f1 for prompt/completion data with task metrics (the weights that
    # do the task best, not those that fit the completions' wording best; token_f1
    # gives partial credit so it moves before exact_match does, and on one-word
    # answers it is exact_match), the loss otherwise.
    config.train.select_best_by = "auto"
    # Save a checkpoint every N steps. None = at every evaluation.
    config.train.checkpoint_every_steps = config_dict.placeholder(int)
    # Checkpoints kept in OUTPUT/checkpoints (the best weights are kept apart).
    config.train.keep_checkpoints = 3
    # Write training scalars to TensorBoard every N steps.
    config.train.log_every_steps = 10

    # ---------------------------------------------------------------- evaluation
    config.eval = ml_collections.ConfigDict()
    # Sequences per evaluation batch. None = train.batch_size.
    config.eval.batch_size = config_dict.placeholder(int)
    # Prompts generated from at each evaluation (TensorBoard text). Empty = the
    # first words of the first num_prompts validation documents.
    config.eval.prompts = ()
    config.eval.num_prompts = 3
    # Tokens generated per prompt at each evaluation.
    config.eval.max_new_tokens = 40
    # Prompt/completion data: held-out prompts completed greedily at each evaluation
    # and scored against their references (exact match, token F1, BLEU, ROUGE-L).
    # 0 = no task metrics.
    config.eval.task_examples = 64
    # Length bound of those completions in tokens. None = the longest reference
    # completion among them (EOS included), at most 256.
    config.eval.task_max_new_tokens = config_dict.placeholder(int)
    # Held-out prompts in OUTPUT/review.html and review.csv: the base model's and the
    # fine-tuned model's outputs side by side, blinded, for a person to rate. 0 = none.
    config.eval.review_examples = 24

    # ---------------------------------------------------------------- runtime
    config.runtime = ml_collections.ConfigDict()
    # "auto": a TPU when one is found (TPU_NAME or a TPU VM), MultiWorkerMirrored
    # when TF_CONFIG names several tasks, Mirrored with several GPUs (or several
    # logical CPUs), else "default" (one device). Or name one: "default",
    # "one_device", "mirrored", "multi_worker", "tpu". See trainer/training/distribution.py.
    config.runtime.strategy = "auto"
    # Split the CPU into this many logical devices before TensorFlow starts, so a
    # MirroredStrategy has that many replicas without a GPU (for testing the
    # multi-replica path on a laptop; the replicas share the same cores).
    config.runtime.cpu_devices = 1
    # Compute precision. "auto" = what the hardware computes natively:
    # mixed_bfloat16 on TPUs, on GPUs of compute capability >= 8.0 and on CPUs
    # with avx512_bf16/amx_bf16; mixed_float16 on older GPUs; float32 otherwise
    # (bench/results.json has the measured speed and held-out loss of each).
    # Or name one: "float32", "mixed_bfloat16" (16-bit matmuls, float32 weights),
    # "mixed_float16" (the loss is scaled so small gradients survive float16's range).
    config.runtime.precision = "auto"
    # Compile the training step with XLA (tf.function(jit_compile=True)). Off:
    # on a 2-core CPU it made a distilgpt2-shaped bfloat16 step 2.2x slower
    # (README "Speed"); a TPU compiles everything anyway.
    config.runtime.xla = False
    # Optimizer steps per call into the compiled step; the host reads the
    # metrics once per call. None = one step per call until a step is timed,
    # then as many as fit in ~2 s (so a SIGTERM is answered within ~2 s),
    # never past the next log, evaluation or checkpoint step.
    config.runtime.steps_per_execution = config_dict.placeholder(int)
    # TPU name or grpc:// address for a TPU node; "" = this TPU VM's own TPU.
    config.runtime.tpu = ""

    return config
