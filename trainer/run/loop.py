"""The training loop: restore, then train, log, evaluate, early-stop and checkpoint.

Per call: up to steps_per_execution steps, ending on the next step where the
host acts -> stop if non-finite (before any save) -> log -> on an agreed stop
request save and exit -> evaluate when due (best weights first) -> save the
state (which names the best) when due.
"""

import math
import signal
import time

from trainer import diagnosis
from trainer import evaluation
from trainer import faults
from trainer import filesystem
from trainer import model as model_lib
from trainer import reporting
from trainer import settings
from trainer import vertex
from trainer.data import distributed_train_data
from trainer.errors import UserError
from trainer.evaluation import metrics
from trainer.run.inputs import Prepared
from trainer.run.stages import Built, Devices, Launch, Outputs, Progress
from trainer.training import checkpoints as ckpt_lib
from trainer.training import distribution
from trainer.training import optimization


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


def restore(launch: Launch, prep: Prepared, outputs: Outputs, built: Built, log) -> Progress:
    """The latest checkpoint (weights, optimizer slots, run state) when there is one, and the
    run log opened at that step; at step 0 the log gets the config, the range test's curve
    and the doctor's findings."""
    config, chief = launch.config, launch.chief
    state = ckpt_lib.RunState()
    checkpoints = ckpt_lib.Checkpoints(
        outputs.layout.checkpoints, built.model, built.optimizer, state, config.train.keep_checkpoints,
        write_directory=None if chief else filesystem.join(outputs.worker_dir, "checkpoints"))
    step = checkpoints.restore_latest()
    if step:
        log(f"Resuming from {checkpoints.latest} at step {step} of {built.plan.total_steps}.")
    elif launch.run_dir.stored:
        log(f"{config.output_dir} has this run's config but no checkpoint yet: starting from step 0.")
    run_log = reporting.RunLog(config.output_dir, step, state["last_eval_step"], write=chief,
                               logs_dir=outputs.layout.logs)
    if step == 0:
        run_log.text("train", "config", 0, reporting.config_markdown(built.resolved))
        if built.lr_auto:
            run_log.curve("lr_auto", {"loss": built.lr_auto["losses"], "smoothed_loss": built.lr_auto["smoothed"],
                                      "learning_rate": built.lr_auto["lrs"]})
        if outputs.findings:
            run_log.text("train", "doctor", 0, diagnosis.markdown(outputs.findings))
    return Progress(checkpoints, state, step, run_log)


class Loop:
    """The loop and what it consults at each evaluation: prompts, task metrics, review
    outputs, the copy check's training n-grams and the best-so-far bookkeeping."""

    def __init__(self, launch: Launch, devices: Devices, prep: Prepared, outputs: Outputs, built: Built,
                 progress: Progress, log):
        config = launch.config
        self.launch, self.devices, self.prep, self.outputs, self.built = launch, devices, prep, outputs, built
        self.config, self.plan, self.chief, self.log = config, built.plan, launch.chief, log
        self.checkpoints, self.state, self.run_log = progress.checkpoints, progress.state, progress.run_log
        self.step = progress.step
        documents = prep.documents
        self.pairs = documents.validation_pairs  # prompt/completion data, else None
        pairs = self.pairs
        self.prompts = list(config.eval.prompts) or (
            [p for p, _ in pairs[:config.eval.num_prompts]] if pairs else
            evaluation.default_prompts(documents.validation, config.eval.num_prompts))
        self.task = evaluation.TaskEvaluation.of(config, pairs, prep.tokenizer, prep.model_config.n_positions)
        if self.task.examples and self.step == 0:
            log(f"Task metrics: {len(self.task.examples)} held-out prompts completed greedily at each evaluation "
                f"(up to {self.task.max_new_tokens} tokens each), scored against their completions; the best "
                f"weights are picked by {config.train.select_best_by}.")
        # The review sheet's prompts come from the test split when there is one: validation's
        # prompts chose the exported checkpoint (by loss or task metric), so a person rating
        # completions of those prompts would see the tuned model at its luckiest.
        if documents.test:
            self.review_pairs = documents.test_pairs
            review_texts = documents.test
        else:
            self.review_pairs, review_texts = pairs, documents.validation
        self.review_prompts = [p for p, _ in self.review_pairs[:config.eval.review_examples]] if self.review_pairs \
            else evaluation.default_prompts(review_texts, config.eval.review_examples, words=8)
        self.training_ngrams = diagnosis.TrainingNgrams(documents.train) if self.chief else None
        self.hypertune = vertex.HypertuneReporter(enabled=self.chief)  # a no-op outside a Vertex tuning trial
        if self.state["decay_start_step"] is not None:  # wsd, resumed after validation started the decay
            built.schedule.start_decay(self.state["decay_start_step"])

    # ------------------------------------------------------------------ the loop

    def run(self) -> int:
        """Train to the plan's end or an early stop; returns the last step. Raises Interrupted
        after saving on a stop request, distribution.PeerLost when a worker is gone."""
        import tensorflow as tf

        config, plan, state, launch = self.config, self.plan, self.state, self.launch
        strategy, step = self.devices.strategy, self.step
        launch.timings.started_training()
        bar = reporting.progress_bar(self.end_step(), step, enabled=self.chief)
        with _StopRequest() as stop:
            try:
                stopping = False
                if state["last_eval_step"] < step and self.eval_due(step) and not state["stopped_early"]:
                    # Step 0 (the base model), or a stop request that saved before this evaluation.
                    stopping = self.evaluate_at(step, stop)
                done = stopping or step >= self.end_step() or state["stopped_early"]
                iterator = None if done else iter(distributed_train_data(
                    strategy, self.prep.train_source, config.train.batch_size, plan.steps_per_epoch,
                    plan.total_steps, step, config.seed))
                # runtime.steps_per_execution=None: one step per call until the second call has
                # timed a step (the first one traces), then as many as fit in ~2 s.
                per_call, calls = config.runtime.steps_per_execution or 1, 0
                while not done:
                    steps = min(per_call, self.next_stop(step) - step)
                    faults.point("train_step", step + 1, step + steps)
                    started = time.perf_counter()
                    with launch.timings.part("training"):
                        out, votes = self.built.train_loop(iterator, tf.constant(steps),
                                                           tf.constant(1.0 if stop.signal else 0.0))
                        out = {k: float(v) for k, v in out.items()}  # the call's one read back to the host
                    seconds = time.perf_counter() - started
                    steps = int(out.pop("steps"))  # fewer than asked when a step was not finite
                    step += steps
                    calls += 1
                    if calls == 2 and not config.runtime.steps_per_execution:
                        per_call = distribution.steps_per_call(strategy, seconds / steps, config.train.log_every_steps)
                    if not (math.isfinite(out["loss_sum"]) and math.isfinite(out["grad_norm"])):
                        bar.close()
                        self._not_finite(step, out)
                    self.add_to_window(out, steps, seconds)
                    bar.update(steps)
                    if step % config.train.log_every_steps == 0 or step == self.end_step():
                        self.log_window(step, bar)
                    if float(votes) > 0:  # any worker's stop request, agreed by all
                        stop.signal = stop.signal or signal.SIGTERM
                        raise _Abandoned()
                    end = self.end_step()
                    stopping = self.eval_due(step) and self.evaluate_at(step, stop)
                    if self.end_step() != end:  # wsd: validation started the decay, which ends the run
                        reporting.set_total(bar, self.end_step())
                    if step % plan.checkpoint_every_steps == 0 or stopping or step == self.end_step():
                        self.checkpoints.save(step)
                    done = stopping or step >= self.end_step()
            except _Abandoned:
                bar.close()
                if step:
                    self.checkpoints.save(step)  # the evaluation due here runs first thing on resume
                self.run_log.close()
                distribution.remove_worker_dir(self.outputs.worker_dir, launch.cluster)
                raise Interrupted(stop.signal, step) from None
            except distribution.peer_errors() as e:
                if launch.cluster.workers == 1:
                    raise
                bar.close()
                distribution.remove_worker_dir(self.outputs.worker_dir, launch.cluster)
                raise distribution.PeerLost(launch.cluster, e) from None
        bar.close()
        self.run_log.close()
        distribution.remove_worker_dir(self.outputs.worker_dir, launch.cluster)
        return step

    def _not_finite(self, step: int, out: dict):
        latest = self.checkpoints.latest
        raise UserError(
            f"At step {step} the training loss was {out['loss_sum']:.4g} and the gradient norm "
            f"{out['grad_norm']:.4g}: not finite. Training stopped at once and nothing was saved "
            f"after it; " + (f"the last good checkpoint is {latest}." if latest else
                             "no checkpoint had been saved yet.") +
            f" Lower --config.optim.learning_rate (was {self.plan.learning_rate:.3g}) or "
            f"--config.optim.max_grad_norm, and re-run with a new --config.output_dir.")

    def end_step(self) -> int:
        """The plan's last step, or, once validation started wsd's decay, the decay's last."""
        start = self.state["decay_start_step"]
        if start is None:
            return self.plan.total_steps
        first, length = optimization.decay_window(start, self.plan.total_steps, self.config.optim.decay_ratio)
        return first + length

    def eval_due(self, at_step: int) -> bool:
        return at_step == 0 or at_step % self.plan.eval_every_steps == 0 or at_step == self.end_step()

    def next_stop(self, at_step: int) -> int:
        """The next step at which the host must act: log, evaluate, save or end."""
        every = [self.config.train.log_every_steps, self.plan.eval_every_steps, self.plan.checkpoint_every_steps]
        return min([self.end_step()] + [(at_step // n + 1) * n for n in every])

    # ------------------------------------------------------------------ evaluation

    def review_outputs(self, should_stop=None) -> list[str] | None:
        """What a person rates: greedy completions of task prompts, seeded samples of free text.
        None when should_stop said yes before a batch of completions."""
        model, tokenizer = self.built.model, self.prep.tokenizer
        if self.pairs:
            return model_lib.complete(model, tokenizer, self.review_prompts, self.task.max_new_tokens,
                                      self.task.max_prompt_tokens, should_stop)
        if should_stop is not None and should_stop():
            return None
        return [s["completion"] for s in model_lib.sample_generations(
            model, tokenizer, self.review_prompts, self.config.eval.max_new_tokens, self.config.seed)]

    def evaluate_at(self, at_step: int, stop) -> bool:
        """Validation, samples, monitors and the best weights; True when early stopping says stop.
        Every worker evaluates (the sums are all-reduced); only the chief generates and logs."""
        config, state, chief, run_log, log = self.config, self.state, self.chief, self.run_log, self.log
        timings, strategy, task = self.launch.timings, self.devices.strategy, self.task
        model, tokenizer = self.built.model, self.prep.tokenizer
        select_by = config.train.select_best_by
        with timings.part("evaluation"):
            result = evaluation.evaluate(self.built.eval_step, self.built.val_data, should_stop=lambda: stop.signal)
        if result is None:
            raise _Abandoned()
        averaged = None  # optim.weight_averaging=ema: the moving average's validation loss
        if config.optim.weight_averaging == "ema":
            with timings.part("evaluation"), optimization.averaged_weights(model, self.built.optimizer):
                averaged = evaluation.evaluate(self.built.eval_step, self.built.val_data,
                                               should_stop=lambda: stop.signal)
            if averaged is None:
                raise _Abandoned()
        with timings.part("generation"):
            samples = model_lib.sample_generations(model, tokenizer, self.prompts, config.eval.max_new_tokens,
                                                   config.seed) if chief else []
        if distribution.agree(strategy, bool(stop.signal)):
            raise _Abandoned()
        # Task metrics and the base model's review outputs (the chief's, up to 64 greedy
        # completions each) stop between batches when a stop request arrives, and the request
        # is agreed once more after them: a preemption notice (~30 s) must not wait for them.
        predictions = review = None
        if task.examples and chief:
            with timings.part("task_metrics"):
                predictions = task.complete(model, tokenizer, should_stop=lambda: stop.signal)
        if at_step == 0 and config.eval.review_examples and chief and not stop.signal:
            with timings.part("review"):
                review = self.review_outputs(should_stop=lambda: stop.signal)
        if distribution.agree(strategy, bool(stop.signal)):
            raise _Abandoned()
        scores = {}
        if predictions is not None:
            scores = metrics.score(predictions, task.references)
            run_log.text("validation", "task_completions", at_step,
                         reporting.completions_markdown(task.examples, predictions))
        if review is not None:
            state["review_base"] = review  # the base model's side of the review sheet
        health = diagnosis.generation_health(samples, self.training_ngrams) if chief else {}
        run_log.scalars("validation", at_step, {"loss": result["loss"], "perplexity": result["perplexity"],
                                                "accuracy": result["accuracy"],
                                                **({"ema_loss": averaged["loss"]} if averaged else {}),
                                                **{f"generation/{k}": v for k, v in health.items()},
                                                **{f"task/{k}": scores[k] for k in settings.TASK_METRICS
                                                   if k in scores}})
        run_log.text("validation", "generations", at_step, reporting.generations_markdown(samples))
        state["samples"] = samples
        if at_step == 0:
            state["base_samples"] = samples  # the base model's side of the end-of-run comparison
        for name, message in diagnosis.monitor(run_log.points("train"), run_log.points("validation")).items():
            if name not in state["monitors"]:
                state["monitors"] = state["monitors"] + [name]
                log(f"Monitor at step {at_step}: {message}")
                run_log.text("validation", "monitor", at_step, f"**{name}**: {message}")
        val_loss = result["loss"]
        if at_step == 0:
            state["initial_val_loss"] = val_loss  # the base model's figure, what fine-tuning must beat
        # Lower is better: the loss, or minus the task metric (computed by the chief, agreed by all,
        # so every worker keeps the same best step and stops at the same evaluation).
        if select_by == "loss":
            score, min_delta = val_loss, config.train.early_stopping_min_delta
        else:
            score, min_delta = -distribution.from_chief(strategy, scores.get(select_by, 0.0), chief), 0.0
        # The moving average competes with the weights (the same loss on every worker: all-reduced).
        use_average = averaged is not None and averaged["loss"] < val_loss
        if use_average:
            score = averaged["loss"]
        if score < state["best_score"] - min_delta:
            state["best_score"], state["best_val_loss"] = score, (averaged["loss"] if use_average else val_loss)
            state["best_step"], state["evals_since_best"] = at_step, 0
            state["best_is_average"] = use_average
            if use_average:
                with optimization.averaged_weights(model, self.built.optimizer):
                    self.checkpoints.save_best(at_step)
            else:
                self.checkpoints.save_best(at_step)  # named by the state that the next save() writes
        else:
            state["evals_since_best"] += 1
        state["last_eval_step"] = at_step
        self.hypertune.report(val_loss, at_step)
        task_line = (" " + ", ".join(f"{k} {scores[k]:.1f}" for k in settings.TASK_METRICS) + ";") if scores else ""
        if averaged:
            task_line += f" weight average {averaged['loss']:.4f};"
        best_line = (f"best {state['best_val_loss']:.4f}" + (" (weight average)" if state["best_is_average"] else "")
                     if select_by == "loss" else
                     f"best {select_by} {-state['best_score']:.1f}")
        log(f"Step {at_step}: validation loss {val_loss:.4f} (perplexity {math.exp(min(val_loss, 50)):.1f};"
            f"{task_line} {best_line} at step {state['best_step']}).")
        if self.plan.schedule == "wsd":
            # No early stop: the decay ends the run, and it runs its whole (short) length, since
            # it is what brings the loss down from the peak rate's plateau.
            wait = self.plan.decay_patience
            if wait and state["decay_start_step"] is None and state["evals_since_best"] >= wait \
                    and at_step < self.end_step():
                state["decay_start_step"] = at_step
                self.built.schedule.start_decay(at_step)
                first, length = optimization.decay_window(at_step, self.plan.total_steps, config.optim.decay_ratio)
                log(f"Validation has not improved for {wait} evaluations at the peak rate: the learning rate "
                    f"decays from step {first} over {length} steps ({config.optim.decay_ratio:.0%} of the "
                    f"{first} so far), and the run ends at step {first + length}.")
            return False
        patience = self.plan.early_stopping_patience
        if patience and state["evals_since_best"] >= patience:
            state["stopped_early"] = True
            log(f"Early stop: no improvement in {patience} evaluations.")
            return True
        return False

    # ------------------------------------------------------------------ training scalars

    def add_to_window(self, out: dict, steps: int, seconds: float) -> None:
        # Training scalars are means over the steps since the last log point; the
        # sums live in the run state so a resumed run logs the same figures.
        state = self.state
        window = state["window"]
        for k in ("loss_sum", "count", "tokens", "grad_norm"):
            window[k] = window.get(k, 0.0) + out[k]
        window["steps"] = window.get("steps", 0) + steps
        window["seconds"] = window.get("seconds", 0.0) + seconds
        state["train_tokens"] += out["tokens"]
        state["train_seconds"] += seconds

    def log_window(self, at_step: int, bar) -> None:
        window = self.state["window"]
        loss = window["loss_sum"] / max(window["count"], 1.0)
        lr = optimization.lr_value(at_step - 1, self.plan, self.config.optim, self.state["decay_start_step"])
        self.run_log.scalars("train", at_step, {
            "loss": loss, "perplexity": math.exp(min(loss, 50.0)),
            "learning_rate": lr,
            "grad_norm": window["grad_norm"] / window["steps"],
            "tokens_per_sec": window["tokens"] / max(window["seconds"], 1e-9)})
        bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}")
        self.state["window"] = {}
