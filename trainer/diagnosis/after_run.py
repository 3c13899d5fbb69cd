"""After the run: say what happened.

- diagnose: the run's class from its curves and figures, with the evidence and
  the next configuration to try as overrides.
"""

import math


# Run classes, most specific first in `diagnose`.
HEALTHY, OVERFIT, UNDERFIT, LR_TOO_HIGH, LR_TOO_LOW, NOT_LEARNING, DATA, TRUNCATION = (
    "healthy", "overfit", "underfit", "learning_rate_too_high", "learning_rate_too_low", "not_learning",
    "data_too_small_or_repetitive", "truncation_or_masking")


# Early stopping ends a run a few evaluations (the patience) after validation turns:
# that is the recipe working, not overfitting, as long as the loss rose only a little
# in those evaluations. A rise of more than 5% of the best loss in so few steps (e.g.
# 3.00 -> 3.15+) is a fast turn: the run overfits, and the next config says so.
EARLY_STOP_RISE = 0.05
# "Still falling" means falling at a rate that more training would turn into a real gain:
# the last two evaluation intervals (~10% of a run of 20 evaluations) lowered the loss
# by at least 0.01 nats, 1% of perplexity. A curve that has flattened out is converged,
# not underfit: the main job at the rule's learning rate fell 5.2014 -> 5.1979 (0.0035
# nats) over its last two intervals, and a run with twice the epochs and 2.3x the rate
# (what "underfit" would advise) ended 0.3% lower in perplexity. The task sample, still
# falling 0.5991 -> 0.5778 (0.021 nats, 2% of perplexity), is underfit.
STILL_FALLING_NATS = 0.01
# A run that reached its planned end with its best evaluation among the last few is not
# overfit for a small rise after it (under EARLY_STOP_RISE): one evaluation up by 0.023
# nats (1.139 -> 1.162, the task sample's last two) is noise around a minimum, and
# "overfit: fewer epochs" would cut a run whose task metric was still climbing. It takes
# this many evaluations after the best, all of them the run's, to call the rise a trend.
OVERFIT_EVALUATIONS = 3


def _finding(label, summary, evidence, next_overrides, severity="warning"):
    return {"label": label, "severity": severity, "summary": summary, "evidence": evidence,
            "next": next_overrides}


def diagnose(report: dict, learning_rate: float, derived_learning_rate: float, steps_per_epoch: int,
             epochs_planned: int, audit_findings: list = (), select_by: str = "loss") -> list[dict]:
    """Classify the run from its curves; returns a list, most important first.

    The class speaks of the validation loss only: its lowest point, wherever the
    export is. With select_by a task metric the export may sit elsewhere (at step 0
    when the metric never rose), and report["best_val_loss"] is the export's loss; the
    loss story must not read "not learning" off it while the loss fell 22%. What the
    metric did is task_metric_disagreement's to say."""
    val = report["history"]["validation"]
    train = report["history"]["train"]
    initial, best, last = report["initial_val_loss"], report["best_val_loss"], report["last_val_loss"]
    best_step, steps = report["best_step"], report["steps"]
    export_step = best_step
    if select_by != "loss":
        finite = [p for p in val if math.isfinite(p["loss"])]
        if finite:
            lowest = min(finite, key=lambda p: (p["loss"], p["step"]))
            best, best_step = lowest["loss"], lowest["step"]
    exported = (f"step {export_step}'s weights" if select_by == "loss" else
                f"step {export_step}'s weights, chosen by {select_by}")
    out = []
    train_first = train[0]["loss"] if train else float("nan")
    train_last = train[-1]["loss"] if train else float("nan")
    gain = (initial - best) / initial if initial and math.isfinite(initial) else 0.0
    evidence = {"initial_val_loss": initial, "best_val_loss": best, "last_val_loss": last,
                "best_step": best_step, "steps": steps, "learning_rate": learning_rate,
                "first_train_loss": train_first, "last_train_loss": train_last}
    # The model got WORSE than the base model at some evaluation (20% and 0.3 nats
    # above it), even if the decay later brought the loss back down: the peak rate
    # broke it. A healthy fine-tune never evaluates far above where it started.
    peak = max(val, key=lambda p: p["loss"]) if val else {"loss": initial, "step": 0}
    broke = peak["loss"] > 1.2 * initial and peak["loss"] > initial + 0.3
    # wsd: validation stopped improving at the peak rate and the decay that followed ended the
    # run, as early stopping ends a fixed plan: the end of the run was validation's choice.
    decayed = report.get("decay_started_at") is not None
    ended_by_validation = report["stopped_early"] or decayed
    if decayed:
        evidence["decay_started_at"] = report["decay_started_at"]
    evidence["peak_val_loss"], evidence["peak_val_step"] = peak["loss"], peak["step"]
    diverged = (not math.isfinite(train_last) or not math.isfinite(last) or broke
                or (train and train_last > train_first * 1.05) or (val and last > initial * 1.05))
    if diverged or (gain < 0.01 and learning_rate > 3 * derived_learning_rate):
        out.append(_finding(
            LR_TOO_HIGH, f"The learning rate {learning_rate:.2g} is too high: the loss went up (training "
            f"{train_first:.3f} -> {train_last:.3f}, validation {initial:.3f} -> {last:.3f}"
            + (f", with a peak of {peak['loss']:.3f} at step {peak['step']}" if broke else "") + ").", evidence,
            [f"--config.optim.learning_rate={learning_rate / 10:.2g}"], "error"))
    elif gain < 0.01:
        if learning_rate < derived_learning_rate / 10:
            out.append(_finding(
                LR_TOO_LOW, f"The learning rate {learning_rate:.2g} is too low: validation loss moved "
                f"{100 * gain:.2f}% in {steps} steps.", evidence,
                [f"--config.optim.learning_rate={derived_learning_rate:.2g}"], "error"))
        else:
            out.append(_finding(
                NOT_LEARNING, f"Not learning: validation loss improved only {100 * gain:.2f}% over the base "
                "model. Check the data (doctor) and the labels; try a higher learning rate.", evidence,
                [f"--config.optim.learning_rate={min(learning_rate * 3, 1e-3):.2g}"], "error"))
    elif best_step < steps and last > best + 0.01 and train_last < train_first and not (
            (ended_by_validation or _evaluations_after(val, best_step) < OVERFIT_EVALUATIONS)
            and last <= best * (1 + EARLY_STOP_RISE)):
        best_epoch = best_step / steps_per_epoch
        out.append(_finding(
            OVERFIT, f"Overfit: validation loss bottomed at step {best_step} (epoch {best_epoch:.1f}) at "
            f"{best:.3f} and rose to {last:.3f} while training loss kept falling to {train_last:.3f}. The "
            f"export holds {exported}.", evidence,
            [f"--config.train.epochs={max(1, math.ceil(best_epoch))}",
             "more (and more varied) training data"], "info"))
    elif best_step == steps and not ended_by_validation and _still_improving(val):
        out.append(_finding(
            UNDERFIT, f"Underfit / stopped too early: validation loss was still falling at the last step "
            f"({best:.3f}); more training would likely help.", evidence,
            [f"--config.train.epochs={epochs_planned * 2}",
             f"--config.optim.learning_rate={learning_rate * 2:.2g}"], "info"))
    elif decayed:
        out.append(_finding(
            HEALTHY, f"Healthy: validation loss {initial:.3f} -> {best:.3f} ({100 * gain:.1f}% lower). It stopped "
            f"improving at the peak rate, so the learning rate decayed from step {report['decay_started_at']} "
            f"(epoch {report['decay_started_at'] / steps_per_epoch:.1f}) to the run's end at step {steps}; the "
            f"best was at step {best_step} and the export holds {exported}.", evidence, [], "info"))
    elif report["stopped_early"]:
        out.append(_finding(
            HEALTHY, f"Healthy: validation loss {initial:.3f} -> {best:.3f} ({100 * gain:.1f}% lower). It turned "
            f"after step {best_step} (epoch {best_step / steps_per_epoch:.1f}); early stopping ended the run at "
            f"step {steps} and the export holds {exported}.", evidence, [], "info"))
    else:
        flat = (f"; it had flattened out (the last two evaluations {val[-3]['loss']:.4f} -> {val[-1]['loss']:.4f})"
                if best_step == steps and len(val) >= 3 else "")
        out.append(_finding(
            HEALTHY, f"Healthy: validation loss {initial:.3f} -> {best:.3f} ({100 * gain:.1f}% lower), best at "
            f"step {best_step} of {steps}{flat}"
            + (f"; the export holds {exported}" if export_step != best_step else "") + ".", evidence, [], "info"))
    for f in audit_findings:
        if f.severity != "error":
            continue
        label = TRUNCATION if f.check in ("length", "labels") else DATA if f.check in (
            "duplicates", "templates", "diversity", "size", "leakage") else None
        if label:
            out.append(_finding(label, f"{f.check}: {f.figure}", {"check": f.check, **f.data}, [f.fix],
                                "warning"))
    return out


def _evaluations_after(val_points, step: int) -> int:
    return sum(1 for p in val_points if p["step"] > step)


def _still_improving(val_points) -> bool:
    losses = [p["loss"] for p in val_points]
    return len(losses) >= 3 and losses[-1] < losses[-2] < losses[-3] and losses[-3] - losses[-1] >= STILL_FALLING_NATS


# ----------------------------------------------------------------------------- loss against the task

TASK_DISAGREEMENT = "loss_and_task_metric_disagree"
# A task metric (0-100) must move at least this much to count: with the default 64
# examples, one more exact match is 100/64 = 1.6 points, so 2 points is more than one
# example flipping.
TASK_METRIC_CHANGE = 2.0
# The loss counts as improved when it fell at least 2% below the base model's.
TASK_LOSS_GAIN = 0.02


def task_metric_disagreement(val_points: list[dict], select_by: str) -> list[dict]:
    """The loss and the task metric telling different stories, in plain words.

    (1) the loss improved while the metric stayed put: the model fits the text of the
    completions better without doing the task better; (2) the metric peaked at another
    evaluation than the loss: the weights picked by one are not the best by the other."""
    metric = select_by if select_by != "loss" else "token_f1"
    key = f"task/{metric}"
    scored = [p for p in val_points if key in p and math.isfinite(p["loss"])]
    if len(scored) < 3:  # the base model and at least two trained evaluations
        return []
    first = scored[0]
    best_loss = min(scored, key=lambda p: p["loss"])
    best_metric = max(scored, key=lambda p: p[key])
    loss_gain = (first["loss"] - best_loss["loss"]) / first["loss"] if first["loss"] > 0 else 0.0
    evidence = {"metric": metric, "base": {"loss": first["loss"], metric: first[key]},
                "best_loss": {"step": best_loss["step"], "loss": best_loss["loss"], metric: best_loss[key]},
                "best_metric": {"step": best_metric["step"], "loss": best_metric["loss"], metric: best_metric[key]}}
    if loss_gain >= TASK_LOSS_GAIN and best_metric[key] - first[key] < TASK_METRIC_CHANGE:
        return [_finding(
            TASK_DISAGREEMENT,
            f"The validation loss improved {100 * loss_gain:.0f}% ({first['loss']:.3f} -> {best_loss['loss']:.3f}) "
            f"but {metric} did not ({first[key]:.1f} at the start, at most {best_metric[key]:.1f}): the model "
            "fits the wording of the completions better without doing the task better. Read the completions "
            "(TensorBoard text task_completions, review.html): if they are close but not exact, score with "
            "token_f1 or rouge_l; if they are wrong, the task needs more (or more varied) examples, or a "
            "clearer prompt separator (see the doctor)."
            + (f" Selected by {metric}, the export holds step {best_metric['step']}'s weights"
               + (" (the base model's: no evaluation beat it)" if best_metric["step"] == scored[0]["step"] else "")
               + "." if select_by != "loss" else ""), evidence,
            ["more examples of the task"] + (["--config.train.select_best_by=token_f1"]
                                             if select_by != "token_f1" else []))]
    if best_metric["step"] != best_loss["step"] and best_metric[key] - best_loss[key] >= TASK_METRIC_CHANGE:
        picked = best_loss if select_by == "loss" else best_metric
        other = best_metric if select_by == "loss" else best_loss
        summary = (f"The loss and {metric} disagree on the best weights: the loss is lowest at step "
                   f"{best_loss['step']} ({best_loss['loss']:.3f}, {metric} {best_loss[key]:.1f}) while {metric} "
                   f"peaks at step {best_metric['step']} ({best_metric[key]:.1f}, loss {best_metric['loss']:.3f}).")
        if select_by == "loss":
            summary += (f" The export holds step {picked['step']}'s weights, chosen by the loss; to export the "
                        f"ones that do the task best, select by {metric}.")
            return [_finding(TASK_DISAGREEMENT, summary, evidence, [f"--config.train.select_best_by={metric}"])]
        summary += f" The export holds step {picked['step']}'s weights, chosen by {metric}"
        if best_metric["step"] > best_loss["step"]:
            summary += (": the loss rose while the task kept improving, the model growing confident on what it "
                        f"gets right (step {other['step']} has the lower loss).")
        else:
            summary += (": later steps fit the wording better but did the task worse, or the metric is noisy on "
                        "few examples (one example moves it by 100/N points: raise --config.eval.task_examples).")
        return [_finding(TASK_DISAGREEMENT, summary, evidence, [], "info")]
    return []
