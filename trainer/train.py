"""train_and_evaluate: the whole run, read top to bottom.

Sections: settings and output directory -> data, tokens and plan -> pre-flight
doctor -> output directory -> strategy, model, optimizer -> checkpoints and
resume -> loop (train, log, evaluate, early-stop, checkpoint) -> best weights,
export, report. Nothing is written to the output directory until every input
has been checked; report.json is written last and marks a finished run.
"""

import dataclasses
import math
import signal
import time

from trainer import checkpoints as ckpt_lib
from trainer import data as data_lib
from trainer import diagnosis
from trainer import distribution
from trainer import doctor
from trainer import evaluation
from trainer import faults
from trainer import filesystem
from trainer import lr_range
from trainer import model as model_lib
from trainer import optimization
from trainer import reporting
from trainer import review as review_lib
from trainer import settings
from trainer import steps as steps_lib
from trainer import task_metrics
from trainer import vertex
from trainer.errors import UserError


class _StopRequest:
    """SIGINT (Ctrl-C) or SIGTERM (preemption) ends the run cleanly: the step under way
    finishes, an evaluation under way is abandoned, the state is saved, and the run exits.
    A preemption notice gives about 30 s, so nothing else runs before the save."""

    def __init__(self):
        self.signal = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signal = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class Interrupted(Exception):
    """Raised after the checkpoint is saved; exit code 128 + signal number."""

    def __init__(self, signum, step):
        saved = "checkpoint saved" if step else "nothing trained yet"
        super().__init__(f"Interrupted at step {step}; {saved}. Re-run the same command to resume.")
        self.exit_code = 128 + signum


class _Abandoned(Exception):
    """A stop request arrived: save (the evaluation due here runs on resume) and exit."""


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
    data_stats: dict      # {"train": Blocks.stats(), "validation": ...}


def prepare(config, log=reporting.say) -> Prepared:
    """Settings, data, tokenizer and plan, checked; nothing is written to output_dir.

    From raw files (tokenized here, in memory) or from prepared shards
    (`python -m trainer.prepare`: read from the manifest, not tokenized again)."""
    # ------------------------------------------------------------------ settings
    config = settings.resolve(config)
    if config.data.prepared_dir:
        return _prepare_from_shards(config, log)

    # ------------------------------------------------------------------ data
    documents = data_lib.load_documents(config.data, config.seed)
    log(f"Documents: {len(documents.train):,} training, {len(documents.validation):,} validation "
        f"({'held out from the training files' if documents.validation_source == 'split' else 'from files'}).")

    # ------------------------------------------------------------------ model files and tokenizer
    tokenizer, model_config = _tokenizer_and_model_config(config, documents.train, log)

    # ------------------------------------------------------------------ tokens and plan
    pairs = data_lib.is_prompt_completion(config.data)
    train_blocks = data_lib.make_blocks(documents.train_pairs if pairs else documents.train, tokenizer,
                                        config.data, "Tokenizing training")
    val_blocks = data_lib.make_blocks(documents.validation_pairs if pairs else documents.validation, tokenizer,
                                      config.data, "Tokenizing validation", keep_tail=True)
    fingerprint = ckpt_lib.data_fingerprint(train_blocks, val_blocks)
    stats = {"train": train_blocks.stats(), "validation": val_blocks.stats()}
    return _plan(config, documents, tokenizer, model_config, train_blocks, val_blocks, train_blocks,
                 fingerprint, stats, log)


def _tokenizer_and_model_config(config, train_documents, log):
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
    from trainer import prepare as prepare_lib

    manifest = prepare_lib.read_manifest(config.data.prepared_dir)
    if config.model.bootstrap_tiny and not filesystem.isdir(config.model.name_or_path):
        # Its tokenizer was trained on the documents at prepare time; one trained here
        # would not be the one the shards were made with.
        raise UserError(
            f"--config.model.name_or_path={config.model.name_or_path}: no model there, and with prepared data "
            "a tiny model cannot be built (its tokenizer is trained on the documents, which trainer.prepare "
            "read). Copy the model folder made by trainer.prepare to this path, or put it on gs:// and "
            "point --config.model.name_or_path at it.")
    tokenizer, model_config = _tokenizer_and_model_config(config, [], log)
    prepare_lib.check_manifest(manifest, config, tokenizer)
    val_blocks = prepare_lib.read_blocks(config.data.prepared_dir, manifest, "validation")
    train = manifest["splits"]["train"]
    shards = data_lib.Shards(prepare_lib.shard_paths(config.data.prepared_dir, manifest, "train"),
                             int(train["rows"]), config.data.block_size)
    # The generations' prompts and the copy check read text: decoded from the validation
    # rows and from the first 2,000 training rows (a sample: 2,000 x 512 tokens x 12 bytes
    # = 12 MB, whatever the corpus size).
    train_sample = prepare_lib.read_blocks(config.data.prepared_dir, manifest, "train", max_rows=2000)
    if data_lib.is_prompt_completion(config.data):  # the pairs, from where the labels start
        train_pairs = data_lib.decode_pairs(train_sample, tokenizer)
        val_pairs = data_lib.decode_pairs(val_blocks, tokenizer)
        documents = data_lib.Documents([p + c for p, c in train_pairs], [p + c for p, c in val_pairs], "prepared",
                                       train_pairs, val_pairs)
    else:
        documents = data_lib.Documents(data_lib.decode_documents(train_sample, tokenizer),
                                       data_lib.decode_documents(val_blocks, tokenizer), "prepared")
    stats = {"train": train["stats"], "validation": manifest["splits"]["validation"]["stats"]}
    log(f"Prepared data {config.data.prepared_dir}: {shards.rows:,} training rows in {len(shards.paths)} "
        f"shard(s), {val_blocks.rows:,} validation rows; not tokenized again.")
    return _plan(config, documents, tokenizer, model_config, None, val_blocks, shards,
                 manifest["data_fingerprint"], stats, log)


def _plan(config, documents, tokenizer, model_config, train_blocks, val_blocks, train_source, fingerprint,
          stats, log) -> Prepared:
    if val_blocks.supervised_tokens == 0:
        raise UserError("The validation documents hold no token to score. Add validation data or raise "
                        "--config.data.validation_fraction.")
    for split, s in (("training", stats["train"]), ("validation", stats["validation"])):
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
    # e.g. 16 rows x 128 tokens = 2,048 tokens/step; 300 rows // 16 = 18 steps/epoch.
    log(f"Plan: {plan.total_steps} steps ({plan.epochs} epoch(s) x {plan.steps_per_epoch} steps"
        f"{', capped by train.max_steps' if plan.total_steps < plan.epochs * plan.steps_per_epoch else ''})"
        f" of {plan.tokens_per_step:,} tokens; peak lr {plan.learning_rate:.3g}, warm-up "
        f"{plan.warmup_steps} steps, evaluation every {plan.eval_every_steps} steps.")
    resolved = config.to_dict()
    resolved["optim"]["learning_rate"] = plan.learning_rate
    resolved["optim"]["warmup_steps"] = plan.warmup_steps
    resolved["train"]["epochs"] = plan.epochs
    resolved["train"]["eval_every_steps"] = plan.eval_every_steps
    resolved["train"]["checkpoint_every_steps"] = plan.checkpoint_every_steps
    return Prepared(config, documents, tokenizer, model_config, train_blocks, val_blocks, plan, resolved,
                    train_source, fingerprint, stats)


def train_and_evaluate(config, log=reporting.say) -> dict:
    # ------------------------------------------------------------------ settings and output directory
    # Read only: a finished run is reported, not redone; a different run or a
    # folder that is not a run is refused before any data is read. A gs:// bucket
    # is checked first: TensorFlow retries forever on a missing one.
    config = settings.resolve(config)
    timings = reporting.Timings()
    output_dir = config.output_dir
    cluster = distribution.cluster()
    chief = cluster.is_chief  # the only process that writes to output_dir
    filesystem.check_output_location(output_dir, write=chief)
    run_dir = ckpt_lib.OutputDir(output_dir)
    if run_dir.stored:
        run_dir.check_config(config)
        if run_dir.complete:
            log(f"{output_dir} holds this run, already complete: nothing to do. Report: {run_dir.report_path}. "
                "Use a new --config.output_dir to train again.")
            return filesystem.read_json(run_dir.report_path)

    # ------------------------------------------------------------------ devices and strategy
    # Before any other TensorFlow op: logical CPUs, multi-worker collectives and the
    # TPU system are set up at program start.
    import tensorflow as tf

    strategy = distribution.get_strategy(config.runtime, log)
    precision = distribution.set_precision(config.runtime, strategy, log)

    # ------------------------------------------------------------------ settings, data, tokens, plan
    if not chief and config.model.bootstrap_tiny:
        distribution.barrier(strategy)  # the chief builds the tiny model first (a shared disk sees it)
    prep = prepare(config, log)
    if chief and config.model.bootstrap_tiny:
        distribution.barrier(strategy)
    documents, tokenizer, plan, resolved = prep.documents, prep.tokenizer, prep.plan, prep.resolved
    val_blocks, fingerprint, data_stats = prep.val_blocks, prep.fingerprint, prep.data_stats
    name_or_path = config.model.name_or_path
    if run_dir.stored:
        run_dir.check_data(fingerprint)
        plan = run_dir.stored_plan(plan, config)  # the first launch's schedule, step for step

    # ------------------------------------------------------------------ pre-flight doctor
    findings, audit_stats = [], {}
    if config.preflight != "off" and chief:
        findings, audit_stats = doctor.run_checks(config, prep, doctor.estimate_parameters(prep.model_config),
                                                  strategy.num_replicas_in_sync)
        log(doctor.terminal_summary(findings))
    errors = [f for f in findings if f.severity == "error"]
    if distribution.agree(strategy, bool(errors) and config.preflight == "strict"):
        raise UserError(f"The doctor found {len(errors)} error(s) (listed above); nothing was trained. Fix "
                        "them, or pass --config.preflight=warn to train anyway.")

    # ------------------------------------------------------------------ output directory
    # From here on the chief writes; config.json of the first launch is the run's identity.
    # The other workers write only their checkpoints, to a local folder removed at the end.
    layout = ckpt_lib.Layout.of(output_dir)
    if chief:
        filesystem.makedirs(output_dir)
        filesystem.remove_stale(output_dir)
        if not run_dir.stored:
            run_dir.write_config(config.to_dict(), resolved, plan, fingerprint, data_stats, layout)
        if findings:
            doctor.write_outputs(findings, audit_stats, output_dir)
    worker_dir = distribution.worker_dir(output_dir, cluster)

    # ------------------------------------------------------------------ model, optimizer, steps, input
    distribution.check_batch(strategy, config.train.batch_size, config.train.grad_accum_steps)
    log(distribution.describe_batch(strategy, config.train.batch_size, config.data.block_size))
    with strategy.scope():
        tf.keras.utils.set_random_seed(config.seed)
        model, loaded_from = model_lib.load_model(name_or_path, log)
        model_lib.match_vocabulary(model, tokenizer, log)
    # optim.learning_rate=auto: a short range test picks the peak rate, once per run (its pick is
    # in config.json from then on; a launch killed during the test runs it again).
    lr_auto = (run_dir.stored or {}).get("lr_auto")
    if config.optim.learning_rate == "auto":
        if lr_auto is None:
            with timings.part("lr_auto"):
                lr_auto = lr_range.auto_learning_rate(model, strategy, prep.train_source, plan, config, log)
            if chief:
                run_dir.write_config(config.to_dict(), {**resolved, "optim": {
                    **resolved["optim"], "learning_rate": lr_auto["learning_rate"]}}, dataclasses.replace(
                        plan, learning_rate=lr_auto["learning_rate"]), fingerprint, data_stats, layout, lr_auto)
        plan = dataclasses.replace(plan, learning_rate=lr_auto["learning_rate"])
        resolved["optim"]["learning_rate"] = plan.learning_rate
    with strategy.scope():
        optimizer = optimization.make_optimizer(plan, config.optim,
                                                loss_scaling=distribution.uses_loss_scaling(precision))
        # Slots exist before a restore, so it fills them at once (no deferred restore,
        # no "value in checkpoint could not be found" warnings when nothing trains).
        optimizer.build(model.trainable_variables)
    state = ckpt_lib.RunState()
    train_loop = steps_lib.make_train_loop(model, optimizer, strategy, config.train.grad_accum_steps,
                                           config.optim.max_grad_norm, config.runtime.xla)
    eval_step = steps_lib.make_eval_step(model, strategy)
    eval_batch = config.eval.batch_size or config.train.batch_size
    # Read once and kept: the validation rows are capped (data.validation_max_examples),
    # and a new tf.data iterator at each of ~20 evaluations cost ~40 ms of a ~240 ms
    # pass on the sample's model.
    val_data = list(data_lib.distributed_eval_data(strategy, val_blocks, eval_batch, tokenizer.pad_token_id))

    # ------------------------------------------------------------------ checkpoints and resume
    checkpoints = ckpt_lib.Checkpoints(layout.checkpoints, model, optimizer, state, config.train.keep_checkpoints,
                                       write_directory=None if chief else filesystem.join(worker_dir, "checkpoints"))
    step = checkpoints.restore_latest()
    if step:
        log(f"Resuming from {checkpoints.latest} at step {step} of {plan.total_steps}.")
    elif run_dir.stored:
        log(f"{output_dir} has this run's config but no checkpoint yet: starting from step 0.")
    run_log = reporting.RunLog(output_dir, step, state["last_eval_step"], write=chief, logs_dir=layout.logs)
    if step == 0:
        run_log.text("train", "config", 0, reporting.config_markdown(resolved))
        if lr_auto:
            run_log.curve("lr_auto", {"loss": lr_auto["losses"], "smoothed_loss": lr_auto["smoothed"],
                                      "learning_rate": lr_auto["lrs"]})
        if findings:
            run_log.text("train", "doctor", 0, doctor.markdown(findings))
    pairs = documents.validation_pairs  # prompt/completion data, else None
    prompts = list(config.eval.prompts) or (
        [p for p, _ in pairs[:config.eval.num_prompts]] if pairs else
        evaluation.default_prompts(documents.validation, config.eval.num_prompts))
    task = evaluation.TaskEvaluation.of(config, pairs, tokenizer, prep.model_config.n_positions)
    if task.examples and step == 0:
        log(f"Task metrics: {len(task.examples)} held-out prompts completed greedily at each evaluation "
            f"(up to {task.max_new_tokens} tokens each), scored against their completions; the best weights "
            f"are picked by {config.train.select_best_by}.")
    review_prompts = [p for p, _ in pairs[:config.eval.review_examples]] if pairs else \
        evaluation.default_prompts(documents.validation, config.eval.review_examples, words=8)

    def review_outputs() -> list[str]:
        """What a person rates: greedy completions of task prompts, seeded samples of free text."""
        if pairs:
            return evaluation.complete(model, tokenizer, review_prompts, task.max_new_tokens, task.max_prompt_tokens)
        return [s["completion"] for s in evaluation.sample_generations(
            model, tokenizer, review_prompts, config.eval.max_new_tokens, config.seed)]
    training_ngrams = diagnosis.TrainingNgrams(documents.train) if chief else None
    patience = config.train.early_stopping_patience
    select_by = config.train.select_best_by
    hypertune = vertex.HypertuneReporter(enabled=chief)  # a no-op outside a Vertex tuning trial

    def eval_due(at_step: int) -> bool:
        return at_step == 0 or at_step % plan.eval_every_steps == 0 or at_step == plan.total_steps

    def next_stop(at_step: int) -> int:
        """The next step at which the host must act: log, evaluate, save or end."""
        every = [config.train.log_every_steps, plan.eval_every_steps, plan.checkpoint_every_steps]
        return min([plan.total_steps] + [(at_step // n + 1) * n for n in every])

    def evaluate_at(at_step: int, stop) -> bool:
        """Validation, samples, monitors and the best weights; True when early stopping says stop.
        Every worker evaluates (the sums are all-reduced); only the chief generates and logs."""
        with timings.part("evaluation"):
            metrics = evaluation.evaluate(eval_step, val_data, should_stop=lambda: stop.signal)
        if metrics is None:
            raise _Abandoned()
        with timings.part("generation"):
            samples = evaluation.sample_generations(model, tokenizer, prompts, config.eval.max_new_tokens,
                                                    config.seed) if chief else []
        if distribution.agree(strategy, bool(stop.signal)):
            raise _Abandoned()
        scores = {}
        if task.examples and chief:
            with timings.part("task_metrics"):
                predictions = task.complete(model, tokenizer)
            scores = task_metrics.score(predictions, task.references)
            run_log.text("validation", "task_completions", at_step,
                         reporting.completions_markdown(task.examples, predictions))
        if at_step == 0 and config.eval.review_examples and chief:
            with timings.part("review"):
                state["review_base"] = review_outputs()  # the base model's side of the review sheet
        health = diagnosis.generation_health(samples, training_ngrams) if chief else {}
        run_log.scalars("validation", at_step, {"loss": metrics["loss"], "perplexity": metrics["perplexity"],
                                                "accuracy": metrics["accuracy"],
                                                **{f"generation/{k}": v for k, v in health.items()},
                                                **{f"task/{k}": scores[k] for k in task_metrics.METRICS
                                                   if k in scores}})
        run_log.text("validation", "generations", at_step, reporting.generations_markdown(samples))
        state["samples"] = samples
        for name, message in diagnosis.monitor(run_log.points("train"), run_log.points("validation")).items():
            if name not in state["monitors"]:
                state["monitors"] = state["monitors"] + [name]
                log(f"Monitor at step {at_step}: {message}")
                run_log.text("validation", "monitor", at_step, f"**{name}**: {message}")
        val_loss = metrics["loss"]
        if at_step == 0:
            state["initial_val_loss"] = val_loss  # the base model's figure, what fine-tuning must beat
        # Lower is better: the loss, or minus the task metric (computed by the chief, agreed by all,
        # so every worker keeps the same best step and stops at the same evaluation).
        if select_by == "loss":
            score, min_delta = val_loss, config.train.early_stopping_min_delta
        else:
            score, min_delta = -distribution.from_chief(strategy, scores.get(select_by, 0.0), chief), 0.0
        if score < state["best_score"] - min_delta:
            state["best_score"], state["best_val_loss"] = score, val_loss
            state["best_step"], state["evals_since_best"] = at_step, 0
            checkpoints.save_best(at_step)  # named by the state that the next save() writes
        else:
            state["evals_since_best"] += 1
        state["last_eval_step"] = at_step
        hypertune.report(val_loss, at_step)
        task_line = (" " + ", ".join(f"{k} {scores[k]:.1f}" for k in task_metrics.METRICS) + ";") if scores else ""
        best_line = (f"best {state['best_val_loss']:.4f}" if select_by == "loss" else
                     f"best {select_by} {-state['best_score']:.1f}")
        log(f"Step {at_step}: validation loss {val_loss:.4f} (perplexity {math.exp(min(val_loss, 50)):.1f};"
            f"{task_line} {best_line} at step {state['best_step']}).")
        if patience and state["evals_since_best"] >= patience:
            state["stopped_early"] = True
            log(f"Early stop: no improvement in {patience} evaluations.")
            return True
        return False

    def add_to_window(out: dict, steps: int, seconds: float) -> None:
        # Training scalars are means over the steps since the last log point; the
        # sums live in the run state so a resumed run logs the same figures.
        window = state["window"]
        for k in ("loss_sum", "count", "tokens", "grad_norm"):
            window[k] = window.get(k, 0.0) + out[k]
        window["steps"] = window.get("steps", 0) + steps
        window["seconds"] = window.get("seconds", 0.0) + seconds
        state["train_tokens"] += out["tokens"]
        state["train_seconds"] += seconds

    def log_window(at_step: int, bar) -> None:
        window = state["window"]
        loss = window["loss_sum"] / max(window["count"], 1.0)
        lr = optimization.lr_value(at_step - 1, plan, config.optim)
        run_log.scalars("train", at_step, {
            "loss": loss, "perplexity": math.exp(min(loss, 50.0)),
            "learning_rate": lr,
            "grad_norm": window["grad_norm"] / window["steps"],
            "tokens_per_sec": window["tokens"] / max(window["seconds"], 1e-9)})
        bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}")
        state["window"] = {}

    # ------------------------------------------------------------------ training loop
    # Per call: up to steps_per_execution steps, ending on the next step where the
    # host acts -> stop if non-finite (before any save) -> log -> on an agreed stop
    # request save and exit -> evaluate when due (best weights first) -> save the
    # state (which names the best) when due.
    timings.started_training()
    bar = reporting.progress_bar(plan.total_steps, step, enabled=chief)
    with _StopRequest() as stop:
        try:
            stopping = False
            if state["last_eval_step"] < step and eval_due(step) and not state["stopped_early"]:
                # Step 0 (the base model), or a stop request that saved before this evaluation.
                stopping = evaluate_at(step, stop)
            done = stopping or step >= plan.total_steps or state["stopped_early"]
            iterator = None if done else iter(data_lib.distributed_train_data(
                strategy, prep.train_source, config.train.batch_size, plan.steps_per_epoch, plan.total_steps,
                step, config.seed))
            # runtime.steps_per_execution=None: one step per call until the second call has
            # timed a step (the first one traces), then as many as fit in ~2 s.
            per_call, calls = config.runtime.steps_per_execution or 1, 0
            while not done:
                steps = min(per_call, next_stop(step) - step)
                faults.point("train_step", step + 1, step + steps)
                started = time.perf_counter()
                with timings.part("training"):
                    out, votes = train_loop(iterator, tf.constant(steps), tf.constant(1.0 if stop.signal else 0.0))
                    out = {k: float(v) for k, v in out.items()}  # the call's one read back to the host
                seconds = time.perf_counter() - started
                steps = int(out.pop("steps"))  # fewer than asked when a step was not finite
                step += steps
                calls += 1
                if calls == 2 and not config.runtime.steps_per_execution:
                    per_call = distribution.steps_per_call(strategy, seconds / steps, config.train.log_every_steps)
                if not (math.isfinite(out["loss_sum"]) and math.isfinite(out["grad_norm"])):
                    bar.close()
                    latest = checkpoints.latest
                    raise UserError(
                        f"At step {step} the training loss was {out['loss_sum']:.4g} and the gradient norm "
                        f"{out['grad_norm']:.4g}: not finite. Training stopped at once and nothing was saved "
                        f"after it; " + (f"the last good checkpoint is {latest}." if latest else
                                         "no checkpoint had been saved yet.") +
                        f" Lower --config.optim.learning_rate (was {plan.learning_rate:.3g}) or "
                        f"--config.optim.max_grad_norm, and re-run with a new --config.output_dir.")
                add_to_window(out, steps, seconds)
                bar.update(steps)
                if step % config.train.log_every_steps == 0 or step == plan.total_steps:
                    log_window(step, bar)
                if float(votes) > 0:  # any worker's stop request, agreed by all
                    stop.signal = stop.signal or signal.SIGTERM
                    raise _Abandoned()
                stopping = eval_due(step) and evaluate_at(step, stop)
                if step % plan.checkpoint_every_steps == 0 or stopping or step == plan.total_steps:
                    checkpoints.save(step)
                done = stopping or step >= plan.total_steps
        except _Abandoned:
            bar.close()
            if step:
                checkpoints.save(step)  # the evaluation due here runs first thing on resume
            run_log.close()
            distribution.remove_worker_dir(worker_dir, cluster)
            raise Interrupted(stop.signal, step) from None
        except distribution.peer_errors() as e:
            if cluster.workers == 1:
                raise
            bar.close()
            distribution.remove_worker_dir(worker_dir, cluster)
            raise distribution.PeerLost(cluster, e) from None
    bar.close()
    run_log.close()
    distribution.remove_worker_dir(worker_dir, cluster)
    if not chief:
        log(f"{cluster.name}: trained {step} steps; the chief ({output_dir}) exports and reports.")
        return {"steps": step, "worker": cluster.name, "best_val_loss": state["best_val_loss"]}

    # ------------------------------------------------------------------ best weights, export, report
    best_step = checkpoints.restore_best()
    with timings.part("export"):
        model_lib.export_tf(model, tokenizer, layout.export)
        model_lib.export_pytorch(model, tokenizer, layout.export_pytorch)
    review_paths = {}
    if config.eval.review_examples and review_prompts:
        with timings.part("review"):  # the exported (best) model against the base model, blinded
            base = state["review_base"] or ["(not recorded: the run started before review sheets existed)"] * \
                len(review_prompts)
            references = [c for _, c in pairs[:len(review_prompts)]] if pairs else [None] * len(review_prompts)
            review_paths = review_lib.write_sheet(output_dir, [
                {"prompt": p, "base": b, "tuned": t, "reference": r}
                for p, b, t, r in zip(review_prompts, base, review_outputs(), references)], config.seed)
    validation_points = run_log.points("validation")
    last_val_loss = validation_points[-1]["loss"] if validation_points else float("nan")
    initial, best = state["initial_val_loss"], state["best_val_loss"]
    report = {
        "initial_val_loss": initial,
        "initial_val_perplexity": math.exp(min(initial, 50)),
        "best_val_loss": best,
        "best_step": best_step,
        "final_val_perplexity": math.exp(min(best, 50)),  # of the exported (best) model
        "last_val_loss": last_val_loss,
        "improvement_pct": 100.0 * (1.0 - math.exp(min(best, 50)) / math.exp(min(initial, 50))),
        "steps": step,
        "planned_steps": plan.total_steps,
        "epochs_completed": step / plan.steps_per_epoch,
        "train_tokens": int(state["train_tokens"]),
        "train_seconds": state["train_seconds"],
        "tokens_per_sec": state["train_tokens"] / max(state["train_seconds"], 1e-9),
        "stopped_early": bool(state["stopped_early"]),
        "learning_rate": plan.learning_rate,
        "learning_rate_auto": {k: v for k, v in lr_auto.items() if k not in ("lrs", "losses", "smoothed")}
        if lr_auto else None,
        "model": {"name_or_path": name_or_path, "loaded_from": str(loaded_from),
                  "parameters": model_lib.count_parameters(model)},
        "data": data_stats,
        "distribution": {"strategy": distribution.class_name(strategy), "replicas": strategy.num_replicas_in_sync,
                         "workers": cluster.workers, "precision": precision},
        "export_dir": layout.export,
        "export_pytorch_dir": layout.export_pytorch,
        "logs_dir": layout.logs,
        "report_path": run_dir.report_path,
        "history": {"train": run_log.points("train"), "validation": validation_points},
    }
    report["diagnosis"] = diagnosis.diagnose(
        report, plan.learning_rate, optimization.derived_learning_rate(
            prep.model_config.n_embd, plan.tokens_per_step, config.model.bootstrap_tiny),
        plan.steps_per_epoch, plan.epochs, findings)
    if task.examples:
        report["task_metrics"] = task.summary(validation_points, best_step, select_by)
        report["diagnosis"] += diagnosis.task_metric_disagreement(validation_points, select_by)
    report["review"] = review_paths
    report["monitors"] = sorted(state["monitors"])
    report["samples"] = state["samples"]
    with timings.part("report"):
        reporting.write_report_card(output_dir, report, resolved, findings)
    hypertune.report(best, step)  # the trial's result: the exported (best) model's loss
    report["timing"] = timings.as_dict()  # this launch only; a resumed run's earlier launches are not in it
    filesystem.write_json(report["report_path"], report)  # last: its presence means "complete"
    for line in reporting.summary_lines(report):
        log(line)
    for item in report["diagnosis"]:
        log(f"Diagnosis [{item['label']}]: {item['summary']}"
            + (f" Next: {' '.join(item['next'])}" if item["next"] else ""))
    return report
