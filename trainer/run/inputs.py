"""Inputs: the one place that turns a config plus data into what a run needs.

settings checked -> documents read and split -> tokenizer and model config ->
rows (tokenized in memory, or read from prepared shards) -> the plan (steps,
epochs, warm-up, learning rate, evaluation interval). Nothing is written: the
trainer, the doctor, trainer.prepare and trainer.lr_find all start here, so
each sees the same rows in the same order.
"""

import dataclasses

from trainer import data as data_lib
from trainer import filesystem
from trainer import model as model_lib
from trainer import reporting
from trainer import settings
from trainer.data import shards as shards_lib
from trainer.errors import UserError
from trainer.training import optimization


@dataclasses.dataclass
class Prepared:
    """Everything known before the first write: the doctor and the trainer share it."""
    config: object  # checked, paths expanded
    documents: data_lib.Documents
    tokenizer: object
    model_config: object
    train_blocks: data_lib.Blocks
    val_blocks: data_lib.Blocks
    plan: optimization.TrainingPlan
    resolved: dict  # the config with derived values filled in
    train_source: object  # train_blocks, or data.Shards of prepared data (train_blocks is then None)
    fingerprint: dict     # rows, tokens and a hash of the token ids (checkpoints.data_fingerprint)
    data_stats: dict      # {"train": Blocks.stats(), "validation": ..., "test": ... when there is one}
    test_blocks: data_lib.Blocks | None = None  # scored once, on the exported model (finish)


def prepare(config, log=reporting.say) -> Prepared:
    """Settings, data, tokenizer and plan, checked; nothing is written to output_dir.

    From raw files (tokenized here, in memory) or from prepared shards
    (`python -m trainer.prepare`: read from the manifest, not tokenized again)."""
    # ------------------------------------------------------------------ settings
    asked_select_by = config.train.select_best_by
    config = settings.resolve(config)
    if asked_select_by == "auto" and config.train.select_best_by != "loss":  # the loss goes without saying
        log(f"Derived train.select_best_by = {config.train.select_best_by}: prompt/completion data scored by task "
            "metrics, so the exported weights are those that do the task best, not those that fit the "
            "completions' wording best.")
    if config.data.prepared_dir:
        return _prepare_from_shards(config, log)

    # ------------------------------------------------------------------ data
    documents = data_lib.load_documents(config.data, config.seed, log)
    log(f"Documents: {len(documents.train):,} training, {len(documents.validation):,} validation "
        f"({'held out from the training files' if documents.validation_source == 'split' else 'from files'}), "
        + _test_words(documents, config.data) + ".")

    # ------------------------------------------------------------------ model files and tokenizer
    tokenizer, model_config = tokenizer_and_model_config(config, documents.train, log)

    # ------------------------------------------------------------------ tokens and plan
    pairs = settings.is_prompt_completion(config.data)
    train_blocks = data_lib.make_blocks(documents.train_pairs if pairs else documents.train, tokenizer,
                                        config.data, "Tokenizing training", seed=config.seed)
    val_blocks = data_lib.make_blocks(documents.validation_pairs if pairs else documents.validation, tokenizer,
                                      config.data, "Tokenizing validation", keep_tail=True,
                                      seed=config.seed)
    test_blocks = data_lib.make_blocks(documents.test_pairs if pairs else documents.test, tokenizer,
                                       config.data, "Tokenizing test", keep_tail=True,
                                       seed=config.seed) if documents.test else None
    fingerprint = data_lib.data_fingerprint(train_blocks, val_blocks)
    stats = {"train": train_blocks.stats(), "validation": val_blocks.stats()}
    if test_blocks is not None:
        stats["test"] = test_blocks.stats()
    return _plan(config, documents, tokenizer, model_config, train_blocks, val_blocks, train_blocks,
                 fingerprint, stats, log, test_blocks)


def _test_words(documents, data_config) -> str:
    if documents.test_source == "files":
        return f"{len(documents.test):,} test (from files)"
    if documents.test_source == "split":
        return f"{len(documents.test):,} test (held out from the training files)"
    if data_config.test_fraction > 0:  # the fraction took no document: a small corpus
        return (f"no test split ({data_config.test_fraction:.0%} of so few documents took none; pass "
                "--config.data.test_files for a final score nothing was selected on)")
    return "no test split (--config.data.test_fraction=0)"


def tokenizer_and_model_config(config, train_documents, log):
    name_or_path = config.model.name_or_path
    if config.model.bootstrap_tiny and not filesystem.isdir(name_or_path):
        model_lib.build_tiny(name_or_path, train_documents, config.model.tiny, config.seed, log)
    tokenizer = model_lib.load_tokenizer(config.model.tokenizer or name_or_path, config.model.add_tokens, log)
    model_config = model_lib.load_config(name_or_path)
    if config.data.block_size > model_config.n_positions:
        raise UserError(
            f"--config.data.block_size={config.data.block_size} is longer than the model's "
            f"{model_config.n_positions} positions ({name_or_path}). Use "
            f"--config.data.block_size={model_config.n_positions} or less.")
    return tokenizer, model_config


def _prepare_from_shards(config, log) -> Prepared:
    """Prepared data: the manifest gives sizes and fingerprint, validation rows are read
    whole (they are capped by validation_max_examples), training rows stay in files."""
    manifest = shards_lib.read_manifest(config.data.prepared_dir)
    if config.model.bootstrap_tiny and not filesystem.isdir(config.model.name_or_path):
        # Its tokenizer was trained on the documents at prepare time; one trained here
        # would not be the one the shards were made with.
        raise UserError(
            f"--config.model.name_or_path={config.model.name_or_path}: no model there, and with prepared data "
            "a tiny model cannot be built (its tokenizer is trained on the documents, which trainer.prepare "
            "read). Copy the model folder made by trainer.prepare to this path, or put it on gs:// and "
            "point --config.model.name_or_path at it.")
    tokenizer, model_config = tokenizer_and_model_config(config, [], log)
    shards_lib.check_manifest(manifest, config, tokenizer)
    val_blocks = shards_lib.read_blocks(config.data.prepared_dir, manifest, "validation")
    train = manifest["splits"]["train"]
    shards = data_lib.Shards(shards_lib.shard_paths(config.data.prepared_dir, manifest, "train"),
                             int(train["rows"]), config.data.block_size)
    # The generations' prompts and the copy check read text: decoded from the validation
    # rows and from the first 2,000 training rows (a sample: 2,000 x 512 tokens x 12 bytes
    # = 12 MB, whatever the corpus size).
    train_sample = shards_lib.read_blocks(config.data.prepared_dir, manifest, "train", max_rows=2000)
    if settings.is_prompt_completion(config.data):  # the pairs, from where the labels start
        train_pairs = data_lib.decode_pairs(train_sample, tokenizer)
        val_pairs = data_lib.decode_pairs(val_blocks, tokenizer)
        documents = data_lib.Documents([p + c for p, c in train_pairs], [p + c for p, c in val_pairs], "prepared",
                                       train_pairs, val_pairs)
    else:
        documents = data_lib.Documents(data_lib.decode_documents(train_sample, tokenizer),
                                       data_lib.decode_documents(val_blocks, tokenizer), "prepared")
    stats = {"train": train["stats"], "validation": manifest["splits"]["validation"]["stats"]}
    test_blocks = None
    if "test" in manifest["splits"]:  # written by trainer.prepare from data.test_files or test_fraction
        test_blocks = shards_lib.read_blocks(config.data.prepared_dir, manifest, "test")
        stats["test"] = manifest["splits"]["test"]["stats"]
        if settings.is_prompt_completion(config.data):
            documents.test_pairs = data_lib.decode_pairs(test_blocks, tokenizer)
            documents.test = [p + c for p, c in documents.test_pairs]
        else:
            documents.test = data_lib.decode_documents(test_blocks, tokenizer)
        documents.test_source = "prepared"
    log(f"Prepared data {config.data.prepared_dir}: {shards.rows:,} training rows in {len(shards.paths)} "
        f"shard(s), {val_blocks.rows:,} validation rows, "
        + (f"{test_blocks.rows:,} test rows" if test_blocks is not None else "no test split") + "; not tokenized again.")
    return _plan(config, documents, tokenizer, model_config, None, val_blocks, shards,
                 manifest["data_fingerprint"], stats, log, test_blocks)


def _plan(config, documents, tokenizer, model_config, train_blocks, val_blocks, train_source, fingerprint,
          stats, log, test_blocks=None) -> Prepared:
    if val_blocks.supervised_tokens == 0:
        raise UserError("The validation documents hold no token to score. Add validation data or raise "
                        "--config.data.validation_fraction.")
    for split, s in (("training", stats["train"]), ("validation", stats["validation"]),
                     ("test", stats.get("test"))):
        if s is None:
            continue
        if "truncated_completions" in s:  # prompt/completion: prompts are cut from the left
            cut = s["truncated_documents"] - s["truncated_completions"]
            log(f"{split.capitalize()}: {s['documents']:,} examples, {s['tokens']:,} tokens -> {s['rows']:,} rows "
                f"of {config.data.block_size} ({config.data.batching}); {s['supervised_tokens']:,} completion "
                f"tokens scored; {cut:,} prompts cut from the left and {s['truncated_completions']:,} "
                f"completions cut at the end ({s['truncated_tokens']:,} tokens).")
            continue
        log(f"{split.capitalize()}: {s['tokens']:,} tokens -> {s['rows']:,} rows of {config.data.block_size} "
            f"({config.data.batching}); dropped {s['dropped_tokens']:,} tail tokens, truncated "
            f"{s['truncated_documents']:,} documents ({s['truncated_tokens']:,} tokens).")
    plan = optimization.plan_training(config, train_source.rows, model_config.n_embd,
                                      val_tokens=val_blocks.rows * config.data.block_size)
    for field, why in plan.derived.items():
        log(f"Derived {field} = {why}.")
    # e.g. 16 rows x 128 tokens = 2,048 tokens/step; 300 rows // 16 = 18 steps/epoch, 300 - 288 = 12 rows dropped.
    log(f"Plan: {plan.total_steps} steps ({plan.epochs} epoch(s) x {plan.steps_per_epoch} steps"
        f"{', capped by train.max_steps' if plan.total_steps < plan.epochs * plan.steps_per_epoch else ''}; "
        f"each epoch drops {train_source.rows - plan.steps_per_epoch * config.train.batch_size:,} of the "
        f"{train_source.rows:,} rows, fewer than one batch, different ones each time)"
        f" of {plan.tokens_per_step:,} tokens; peak lr "
        f"{f'from a range test (the rule: {plan.learning_rate:.3g})' if plan.range_test else f'{plan.learning_rate:.3g}'}"
        f", warm-up "
        f"{plan.warmup_steps} steps, {plan.schedule} schedule, evaluation every {plan.eval_every_steps} steps"
        + (" (a cap: the decay that validation starts ends the run)." if plan.schedule == "wsd" else "."))
    resolved = config.to_dict()
    resolved["optim"]["learning_rate"] = plan.learning_rate
    resolved["optim"]["warmup_steps"] = plan.warmup_steps
    resolved["train"]["epochs"] = plan.epochs
    resolved["train"]["eval_every_steps"] = plan.eval_every_steps
    resolved["train"]["checkpoint_every_steps"] = plan.checkpoint_every_steps
    resolved["train"]["early_stopping_patience"] = plan.early_stopping_patience
    resolved["optim"]["schedule"] = plan.schedule
    return Prepared(config, documents, tokenizer, model_config, train_blocks, val_blocks, plan, resolved,
                    train_source, fingerprint, stats, test_blocks)
