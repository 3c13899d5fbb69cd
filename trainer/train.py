"""train_and_evaluate: the whole run, read top to bottom.

Sections: settings -> data -> model files and tokenizer -> tokens and plan ->
output directory -> strategy, model, optimizer -> checkpoints and resume ->
loop (train, log, evaluate, early-stop, checkpoint) -> best weights, export, report.
Nothing is written to the output directory until every input has been checked.
"""

import dataclasses
import math
import os
import signal
import time

from trainer import checkpoints as ckpt_lib
from trainer import data as data_lib
from trainer import diagnosis
from trainer import distribution
from trainer import doctor
from trainer import evaluation
from trainer import model as model_lib
from trainer import optimization
from trainer import reporting
from trainer import steps as steps_lib
from trainer.errors import UserError


def check_settings(config) -> None:
    """Values that are wrong whatever the data: fail before reading anything."""
    o, t, d = config.optim, config.train, config.data
    if o.learning_rate is not None and not o.learning_rate > 0:
        raise UserError(f"--config.optim.learning_rate={o.learning_rate} must be positive (e.g. 1e-4), "
                        "or left unset to derive it from the model and batch size.")
    if o.schedule not in optimization.SCHEDULES:
        raise UserError(f"--config.optim.schedule={o.schedule!r}: use one of "
                        f"{', '.join(optimization.SCHEDULES)}.")
    if config.preflight not in ("strict", "warn", "off"):
        raise UserError(f"--config.preflight={config.preflight!r}: use strict, warn or off.")
    if d.batching not in ("packed", "padded"):
        raise UserError(f"--config.data.batching={d.batching!r}: use 'packed' or 'padded'.")
    if d.block_size < 2:
        raise UserError(f"--config.data.block_size={d.block_size} must be at least 2 tokens.")
    for name in ("batch_size", "grad_accum_steps"):
        if getattr(t, name) < 1:
            raise UserError(f"--config.train.{name}={getattr(t, name)} must be at least 1.")
    if t.batch_size % t.grad_accum_steps:
        raise UserError(f"--config.train.batch_size={t.batch_size} must be a multiple of "
                        f"--config.train.grad_accum_steps={t.grad_accum_steps}.")
    for name in ("epochs", "eval_every_steps", "checkpoint_every_steps"):
        value = getattr(t, name)
        if value is not None and value < 1:
            raise UserError(f"--config.train.{name}={value} must be at least 1 (or unset to derive it).")
    if o.warmup_steps is not None and o.warmup_steps < 0:
        raise UserError(f"--config.optim.warmup_steps={o.warmup_steps} must be 0 or more.")


class _StopRequest:
    """SIGINT (Ctrl-C) or SIGTERM (preemption) ends the run cleanly at the next step."""

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
        super().__init__(f"Interrupted at step {step}; checkpoint saved. Re-run the same command to resume.")
        self.exit_code = 128 + signum


@dataclasses.dataclass
class Prepared:
    """Everything known before the first write: the doctor and the trainer share it."""
    documents: data_lib.Documents
    tokenizer: object
    model_config: object
    train_blocks: data_lib.Blocks
    val_blocks: data_lib.Blocks
    plan: optimization.TrainingPlan
    resolved: dict  # the config with derived values filled in


def prepare(config, log=reporting.say) -> Prepared:
    """Settings, data, tokenizer and plan, checked; nothing is written to output_dir."""
    # ------------------------------------------------------------------ settings
    check_settings(config)

    # ------------------------------------------------------------------ data
    documents = data_lib.load_documents(config.data, config.seed)
    log(f"Documents: {len(documents.train):,} training, {len(documents.validation):,} validation "
        f"({'held out from the training files' if documents.validation_source == 'split' else 'from files'}).")

    # ------------------------------------------------------------------ model files and tokenizer
    name_or_path = config.model.name_or_path
    if config.model.bootstrap_tiny and not os.path.isdir(name_or_path):
        model_lib.build_tiny(name_or_path, documents.train, config.model.tiny, config.seed, log)
    tokenizer = model_lib.load_tokenizer(config.model.tokenizer or name_or_path)
    model_config = model_lib.load_config(name_or_path)
    if config.data.block_size > model_config.n_positions:
        raise UserError(
            f"--config.data.block_size={config.data.block_size} is longer than the model's "
            f"{model_config.n_positions} positions ({name_or_path}). Use "
            f"--config.data.block_size={model_config.n_positions} or less.")

    # ------------------------------------------------------------------ tokens and plan
    train_blocks = data_lib.make_blocks(documents.train, tokenizer, config.data, "Tokenizing training")
    val_blocks = data_lib.make_blocks(documents.validation, tokenizer, config.data, "Tokenizing validation",
                                      keep_tail=True)
    if val_blocks.supervised_tokens == 0:
        raise UserError("The validation documents hold no token to score. Add validation data or raise "
                        "--config.data.validation_fraction.")
    for split, blocks in (("training", train_blocks), ("validation", val_blocks)):
        s = blocks.stats()
        log(f"{split.capitalize()}: {s['tokens']:,} tokens -> {s['rows']:,} rows of {config.data.block_size} "
            f"({config.data.batching}); dropped {s['dropped_tokens']:,} tail tokens, truncated "
            f"{s['truncated_documents']:,} documents ({s['truncated_tokens']:,} tokens).")
    plan = optimization.plan_training(config, train_blocks.rows, model_config.n_embd)
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

    return Prepared(documents, tokenizer, model_config, train_blocks, val_blocks, plan, resolved)


def train_and_evaluate(config, log=reporting.say) -> dict:
    import tensorflow as tf

    # ------------------------------------------------------------------ settings, data, tokens, plan
    prep = prepare(config, log)
    documents, tokenizer, plan, resolved = prep.documents, prep.tokenizer, prep.plan, prep.resolved
    train_blocks, val_blocks = prep.train_blocks, prep.val_blocks
    name_or_path = config.model.name_or_path
    output_dir = config.output_dir

    # ------------------------------------------------------------------ pre-flight doctor
    findings, audit_stats = [], {}
    if config.preflight != "off":
        findings, audit_stats = doctor.run_checks(config, prep, doctor.estimate_parameters(prep.model_config))
        log(doctor.terminal_summary(findings))
        errors = [f for f in findings if f.severity == "error"]
        if errors and config.preflight == "strict":
            raise UserError(f"The doctor found {len(errors)} error(s) (listed above); nothing was trained. Fix "
                            "them, or pass --config.preflight=warn to train anyway.")

    # ------------------------------------------------------------------ output directory
    # From here on we write. A different earlier run in output_dir is an error, not overwritten.
    resuming = ckpt_lib.check_resume_compatible(output_dir, resolved)
    os.makedirs(output_dir, exist_ok=True)
    reporting.write_json(os.path.join(output_dir, "config.json"), {
        "config": resolved, "derived": plan.derived,
        "plan": {k: v for k, v in vars(plan).items() if k != "derived"},
        "data": {"train": train_blocks.stats(), "validation": val_blocks.stats()}})
    if findings:
        doctor.write_outputs(findings, audit_stats, output_dir)

    # ------------------------------------------------------------------ strategy, model, optimizer
    strategy = distribution.get_strategy(config.runtime, log)
    distribution.check_batch(strategy, config.train.batch_size, config.train.grad_accum_steps)
    with strategy.scope():
        tf.keras.utils.set_random_seed(config.seed)
        model, loaded_from = model_lib.load_model(name_or_path, log)
        model_lib.match_vocabulary(model, tokenizer, log)
        optimizer = optimization.make_optimizer(plan, config.optim)
        state = ckpt_lib.RunState()
    train_step = steps_lib.make_train_step(model, optimizer, strategy,
                                           config.train.grad_accum_steps, config.optim.max_grad_norm)
    eval_step = steps_lib.make_eval_step(model, strategy)
    eval_batch = config.eval.batch_size or config.train.batch_size
    val_data = strategy.experimental_distribute_dataset(
        data_lib.eval_dataset(val_blocks, eval_batch, tokenizer.pad_token_id))

    # ------------------------------------------------------------------ checkpoints and resume
    checkpoints = ckpt_lib.Checkpoints(output_dir, model, optimizer, state, config.train.keep_checkpoints)
    if checkpoints.restore_latest():
        log(f"Resuming from {checkpoints.manager.latest_checkpoint} at step {int(optimizer.iterations)}.")
    elif resuming:
        log(f"{output_dir} has this run's config but no checkpoint yet: starting from step 0.")
    step = int(optimizer.iterations.numpy())
    run_log = reporting.RunLog(output_dir, step)
    if step == 0:
        run_log.text("train", "config", 0, reporting.config_markdown(resolved))
        if findings:
            run_log.text("train", "doctor", 0, doctor.markdown(findings))
    prompts = list(config.eval.prompts) or evaluation.default_prompts(documents.validation,
                                                                      config.eval.num_prompts)
    training_ngrams = diagnosis.TrainingNgrams(documents.train)
    warned = set()  # monitor conditions already reported
    last_samples = []

    def run_evaluation(at_step: int) -> float:
        metrics = evaluation.evaluate(eval_step, val_data)
        samples = evaluation.sample_generations(model, tokenizer, prompts, config.eval.max_new_tokens,
                                                config.seed)
        health = diagnosis.generation_health(samples, training_ngrams)
        run_log.scalars("validation", at_step, {"loss": metrics["loss"], "perplexity": metrics["perplexity"],
                                                "accuracy": metrics["accuracy"],
                                                **{f"generation/{k}": v for k, v in health.items()}})
        run_log.text("validation", "generations", at_step, reporting.generations_markdown(samples))
        last_samples[:] = samples
        for name, message in diagnosis.monitor(run_log.points("train"), run_log.points("validation")).items():
            if name not in warned:
                warned.add(name)
                log(f"Monitor at step {at_step}: {message}")
                run_log.text("validation", "monitor", at_step, f"**{name}**: {message}")
        return metrics["loss"]

    def consider_best(at_step: int, val_loss: float) -> None:
        if val_loss < state["best_val_loss"] - config.train.early_stopping_min_delta:
            state["best_val_loss"], state["best_step"], state["evals_since_best"] = val_loss, at_step, 0
            checkpoints.save_best(at_step)
        else:
            state["evals_since_best"] = state["evals_since_best"] + 1

    if step == 0:
        initial = run_evaluation(0)  # the base model's figure, what fine-tuning must beat
        state["initial_val_loss"] = initial
        consider_best(0, initial)
        log(f"Step 0: validation loss {initial:.4f} (perplexity {math.exp(min(initial, 50)):.1f}).")

    # ------------------------------------------------------------------ training loop
    patience = config.train.early_stopping_patience
    done = step >= plan.total_steps or (patience and state["stopped_early"])
    train_data = None if done else strategy.experimental_distribute_dataset(data_lib.train_dataset(
        train_blocks, config.train.batch_size, plan.steps_per_epoch, plan.total_steps, step, config.seed))
    window = {"loss_sum": 0.0, "count": 0.0, "correct": 0.0, "tokens": 0.0, "grad_norm": 0.0, "steps": 0,
              "seconds": 0.0}
    bar = reporting.progress_bar(plan.total_steps, step)
    with _StopRequest() as stop:
        for batch in train_data or []:
            started = time.perf_counter()
            out = train_step(batch)
            out = {k: float(v) for k, v in out.items()}
            seconds = time.perf_counter() - started
            step += 1
            for k in ("loss_sum", "count", "correct", "tokens"):
                window[k] += out[k]
            window["grad_norm"] += out["grad_norm"]
            window["steps"] += 1
            window["seconds"] += seconds
            state["train_tokens"] = state["train_tokens"] + out["tokens"]
            state["train_seconds"] = state["train_seconds"] + seconds
            if not math.isfinite(out["loss_sum"]):
                bar.close()
                raise UserError(
                    f"The training loss became {out['loss_sum']} at step {step}: training stopped at once "
                    f"and nothing was saved after it. The last good checkpoint is in {checkpoints.directory}."
                    f" Lower --config.optim.learning_rate (was {plan.learning_rate:.3g}) and re-run with a "
                    "new --config.output_dir.")
            bar.update(1)
            if step % config.train.log_every_steps == 0 or step == plan.total_steps:
                loss = window["loss_sum"] / max(window["count"], 1.0)
                run_log.scalars("train", step, {
                    "loss": loss, "perplexity": math.exp(min(loss, 50.0)),
                    "accuracy": window["correct"] / max(window["count"], 1.0),
                    "learning_rate": optimization.lr_value(step - 1, plan, config.optim),
                    "grad_norm": window["grad_norm"] / window["steps"],
                    "tokens_per_sec": window["tokens"] / max(window["seconds"], 1e-9)})
                bar.set_postfix(loss=f"{loss:.3f}", lr=f"{optimization.lr_value(step - 1, plan, config.optim):.2e}")
                window = dict.fromkeys(window, 0.0)
            stopping = False
            if step % plan.eval_every_steps == 0 or step == plan.total_steps:
                val_loss = run_evaluation(step)
                consider_best(step, val_loss)
                log(f"Step {step}: validation loss {val_loss:.4f} (best {state['best_val_loss']:.4f} "
                    f"at step {int(state['best_step'])}).")
                if patience and state["evals_since_best"] >= patience:
                    state["stopped_early"] = 1
                    stopping = True
                    log(f"Early stop: no improvement in {patience} evaluations.")
            if (step % plan.checkpoint_every_steps == 0 or stopping or step == plan.total_steps
                    or stop.signal):
                checkpoints.save(step)
            if stop.signal:
                bar.close()
                run_log.close()
                raise Interrupted(stop.signal, step)
            if stopping:
                break
    bar.close()

    # ------------------------------------------------------------------ best weights, export, report
    checkpoints.restore_best()
    export_dir = os.path.join(output_dir, "export")
    export_pytorch_dir = os.path.join(output_dir, "export_pytorch")
    model_lib.export_tf(model, tokenizer, export_dir)
    model_lib.export_pytorch(model, tokenizer, export_pytorch_dir)
    run_log.close()
    validation_points = run_log.points("validation")
    last_val_loss = validation_points[-1]["loss"] if validation_points else float("nan")
    initial, best = state["initial_val_loss"], state["best_val_loss"]
    report = {
        "initial_val_loss": initial,
        "initial_val_perplexity": math.exp(min(initial, 50)),
        "best_val_loss": best,
        "best_step": int(state["best_step"]),
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
        "model": {"name_or_path": name_or_path, "loaded_from": str(loaded_from),
                  "parameters": model_lib.count_parameters(model)},
        "data": {"train": train_blocks.stats(), "validation": val_blocks.stats()},
        "export_dir": export_dir,
        "export_pytorch_dir": export_pytorch_dir,
        "logs_dir": os.path.join(output_dir, "logs"),
        "report_path": os.path.join(output_dir, "report.json"),
        "history": {"train": run_log.points("train"), "validation": validation_points},
    }
    report["diagnosis"] = diagnosis.diagnose(
        report, plan.learning_rate, optimization.derived_learning_rate(
            prep.model_config.n_embd, plan.tokens_per_step, config.model.bootstrap_tiny),
        plan.steps_per_epoch, plan.epochs, findings)
    report["monitors"] = sorted(warned)
    report["samples"] = last_samples
    reporting.write_json(report["report_path"], report)
    reporting.write_report_card(output_dir, report, resolved, findings)
    for line in reporting.summary_lines(report):
        log(line)
    for item in report["diagnosis"]:
        log(f"Diagnosis [{item['label']}]: {item['summary']}"
            + (f" Next: {' '.join(item['next'])}" if item["next"] else ""))
    return report
