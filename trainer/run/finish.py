"""The end of a run, on the chief: best weights back, exports, the review sheet, the report.

report.json is written last: its presence means "complete", and a relaunch of a
complete run reports it instead of training again.
"""

import math

from trainer import diagnosis
from trainer import filesystem
from trainer import model as model_lib
from trainer import reporting
from trainer.evaluation import heldout, review_sheet
from trainer.run.inputs import Prepared
from trainer.run.loop import Loop
from trainer.run.stages import Built, Devices, Launch, Outputs
from trainer.training import distribution
from trainer.training import optimization


def finish(launch: Launch, devices: Devices, prep: Prepared, outputs: Outputs, built: Built, loop: Loop,
           step: int, log) -> dict:
    """Restore the best weights, export them, write the review sheet and the report; returns the report."""
    config, timings, model, tokenizer = launch.config, launch.timings, built.model, prep.tokenizer
    best_step = loop.checkpoints.restore_best()
    with timings.part("export"):
        model_lib.export_tf(model, tokenizer, outputs.layout.export)
        model_lib.export_pytorch(model, tokenizer, outputs.layout.export_pytorch)
        if config.export_serving:  # from the export just written: float32, as trainer.generate loads it
            model_lib.export_serving(outputs.layout.export, outputs.layout.serving, log)
    review_paths = _review_sheet(config, loop) if config.eval.review_examples and loop.review_prompts else {}
    report = _report(launch, devices, prep, outputs, built, loop, step, best_step)
    report["test"] = _test(config, prep, built, timings)
    report["review"] = review_paths
    report["comparison"] = _comparison(config, loop, report)
    report["monitors"] = sorted(loop.state["monitors"])
    report["samples"] = loop.state["samples"]
    with timings.part("report"):
        reporting.write_report_card(config.output_dir, report, built.resolved, outputs.findings)
    loop.hypertune.report(loop.state["best_val_loss"], step)  # the trial's result: the exported (best) model's loss
    report["timing"] = timings.as_dict()  # this launch only; a resumed run's earlier launches are not in it
    filesystem.write_json(report["report_path"], report)  # last: its presence means "complete"
    for line in reporting.summary_lines(report):
        log(line)
    for item in report["diagnosis"]:
        log(f"Diagnosis [{item['label']}]: {item['summary']}"
            + (f" Next: {' '.join(item['next'])}" if item["next"] else ""))
    return report


def _comparison(config, loop: Loop, report: dict) -> dict:
    """The base model against the exported one: validation perplexity, and each model's
    continuation of the evaluation prompts (same seed, same sampler) side by side."""
    base = {s["prompt"]: s["completion"] for s in loop.state["base_samples"]}
    with loop.launch.timings.part("generation"):
        tuned = model_lib.sample_generations(loop.built.model, loop.prep.tokenizer, loop.prompts,
                                             config.eval.max_new_tokens, config.seed)
    return {"base_perplexity": report["initial_val_perplexity"], "tuned_perplexity": report["final_val_perplexity"],
            "samples": [{"prompt": s["prompt"], "base": base.get(s["prompt"]), "tuned": s["completion"]}
                        for s in tuned]}


def _test(config, prep: Prepared, built: Built, timings) -> dict | None:
    """The test split scored once, on the exported weights (None without a test split)."""
    if prep.test_blocks is None:
        return None
    with timings.part("test"):
        return heldout.score(built.model, prep.tokenizer, prep.test_blocks, prep.documents.test_pairs, config,
                             prep.model_config.n_positions, config.eval.batch_size or config.train.batch_size,
                             prep.documents.test_source)


def _review_sheet(config, loop: Loop) -> dict:
    """The exported (best) model against the base model, blinded (review.csv, review.html)."""
    prompts = loop.review_prompts
    with loop.launch.timings.part("review"):
        base = loop.state["review_base"] or ["(not recorded: the run started before review sheets existed)"] * \
            len(prompts)
        references = [c for _, c in loop.review_pairs[:len(prompts)]] if loop.review_pairs else \
            [None] * len(prompts)
        return review_sheet.write_sheet(config.output_dir, [
            {"prompt": p, "base": b, "tuned": t, "reference": r}
            for p, b, t, r in zip(prompts, base, loop.review_outputs(), references)], config.seed)


def _report(launch: Launch, devices: Devices, prep: Prepared, outputs: Outputs, built: Built, loop: Loop,
            step: int, best_step: int) -> dict:
    """report.json's figures, history and diagnosis (its keys are a contract: README "Outputs")."""
    config, plan, state, strategy = launch.config, built.plan, loop.state, devices.strategy
    validation_points = loop.run_log.points("validation")
    last_val_loss = validation_points[-1]["loss"] if validation_points else float("nan")
    initial, best = state["initial_val_loss"], state["best_val_loss"]
    lr_auto = built.lr_auto
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
        # wsd: the step validation started the decay at (the run ended with it), else None.
        "decay_started_at": state["decay_start_step"],
        # optim.weight_averaging=ema: the exported weights are the moving average's.
        "best_is_weight_average": bool(state["best_is_average"]),
        "learning_rate": plan.learning_rate,
        "schedule": plan.schedule,
        "learning_rate_auto": {k: v for k, v in lr_auto.items() if k not in ("lrs", "losses", "smoothed")}
        if lr_auto else None,
        "model": {"name_or_path": config.model.name_or_path, "loaded_from": str(built.loaded_from),
                  "parameters": model_lib.count_parameters(built.model)},
        "data": prep.data_stats,
        "distribution": {"strategy": distribution.class_name(strategy), "replicas": strategy.num_replicas_in_sync,
                         "workers": launch.cluster.workers, "precision": devices.precision},
        "export_dir": outputs.layout.export,
        "export_pytorch_dir": outputs.layout.export_pytorch,
        "serving_dir": outputs.layout.serving if config.export_serving else None,
        "logs_dir": outputs.layout.logs,
        "report_path": launch.run_dir.report_path,
        "history": {"train": loop.run_log.points("train"), "validation": validation_points},
    }
    report["diagnosis"] = diagnosis.diagnose(
        report, plan.learning_rate, optimization.derived_learning_rate(
            prep.model_config.n_embd, plan.tokens_per_step, config.model.bootstrap_tiny),
        plan.steps_per_epoch, plan.epochs, outputs.findings, config.train.select_best_by)
    if loop.task.examples:
        report["task_metrics"] = loop.task.summary(validation_points, best_step, config.train.select_best_by)
        report["diagnosis"] += diagnosis.task_metric_disagreement(validation_points, config.train.select_best_by)
    return report
