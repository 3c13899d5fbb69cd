"""The report card: OUTPUT/report.md with the curves (curves.png), and the run's summary lines."""

from trainer import filesystem, settings
from trainer.reporting.run_log import config_markdown


def summary_lines(report: dict) -> list[str]:
    initial, best = report["initial_val_loss"], report["best_val_loss"]
    lines = [
        f"Trained {report['steps']} steps ({report['train_tokens']:,} tokens, "
        f"{report['tokens_per_sec']:,.0f} tokens/s) in {report['train_seconds']:.0f} s"
        + (" - stopped early." if report["stopped_early"] else "."),
        f"Validation loss {initial:.3f} at step 0 -> best {best:.3f} at step {report['best_step']} "
        f"(perplexity {report['initial_val_perplexity']:.1f} -> {report['final_val_perplexity']:.1f}, "
        f"{report['improvement_pct']:.0f}% lower).",
        *([test_line(report["test"])] if report.get("test") else []),
        f"Best model exported to {report['export_dir']} (PyTorch copy: {report['export_pytorch_dir']}"
        + (f"; serving SavedModel: {report['serving_dir']}" if report.get("serving_dir") else "") + ").",
        f"Report: {report['report_path']}; curves: make tensorboard (logs in {report['logs_dir']}).",
    ]
    return lines + comparison_lines(report.get("comparison"))


def test_line(test: dict) -> str:
    """One line for the terminal and the report card."""
    def span(interval, fmt):
        return f" (95% interval {fmt.format(interval[0])}-{fmt.format(interval[1])})" if interval else ""

    line = (f"Test ({test['documents']:,} documents nothing was selected on): perplexity "
            f"{test['perplexity']:,.1f}{span(test['perplexity_interval'], '{:,.1f}')}, loss {test['loss']:.4f}")
    task = test.get("task_metrics")
    if task:
        line += "; " + ", ".join(f"{name} {task[name]['value']:.1f}{span(task[name]['interval'], '{:.1f}')}"
                                 for name in ("exact_match", "token_f1") if name in task)
        line += f" on {task['examples']} examples"
    return line + "."


def comparison_lines(comparison: dict | None, width: int = 100) -> list[str]:
    """The base model and the fine-tuned one side by side, for the terminal: each prompt
    with both continuations (same seed and sampler), cut to one line each."""
    if not comparison or not comparison.get("samples"):
        return []
    lines = [f"Base model -> fine-tuned: validation perplexity {comparison['base_perplexity']:,.1f} -> "
             f"{comparison['tuned_perplexity']:,.1f}. Same prompts, same seed:"]
    for sample in comparison["samples"]:
        lines.append(f"  {sample['prompt']!r}")
        for name, text in (("base", sample["base"]), ("fine-tuned", sample["tuned"])):
            text = " ".join((text or "(not recorded: the run began before this was kept)").split())
            text = text if len(text) <= width else text[:width - 3].rstrip() + "..."
            lines.append(f"    {name + ':':<12}{sample['prompt']} {text}")
    return lines


def plot_curves(report: dict, path: str) -> None:
    """Training and validation loss against steps, the best step marked, lr on a second axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, val = report["history"]["train"], report["history"]["validation"]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot([p["step"] for p in train], [p["loss"] for p in train], label="training loss", alpha=0.7)
    ax.plot([p["step"] for p in val], [p["loss"] for p in val], "o-", label="validation loss")
    ax.axvline(report["best_step"], color="green", linestyle="--", label=f"best (step {report['best_step']})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats per token)")
    if train and "learning_rate" in train[0]:
        lr_axis = ax.twinx()
        lr_axis.plot([p["step"] for p in train], [p["learning_rate"] for p in train], color="grey", alpha=0.4)
        lr_axis.set_ylabel("learning rate", color="grey")
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, format="png")  # path may be a temporary name without .png
    plt.close(fig)


def _cell(text: str) -> str:
    """Text that stays in one Markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|")


def write_report_card(output_dir: str, report: dict, config: dict, findings) -> str:
    """OUTPUT/report.md: one page with config, data audit, curves, diagnosis and samples."""
    filesystem.write_file(filesystem.join(output_dir, "curves.png"), lambda tmp: plot_curves(report, tmp))
    lines = ["# Fine-tuning report", "",
             f"Model `{report['model']['name_or_path']}` ({report['model']['parameters']:,} parameters), "
             f"{report['steps']} steps, {report['train_tokens']:,} training tokens, "
             f"{report['tokens_per_sec']:,.0f} tokens/s.", "",
             "## Diagnosis", ""]
    for item in report.get("diagnosis", []):
        lines.append(f"- **{item['label']}** ({item['severity']}): {item['summary']}"
                     + (f" Next: `{' '.join(item['next'])}`" if item["next"] else ""))
    lines += ["", "## Curves", "", "![curves](curves.png)", "",
              f"Validation loss {report['initial_val_loss']:.3f} at step 0 -> best {report['best_val_loss']:.3f} "
              f"at step {report['best_step']} (perplexity {report['initial_val_perplexity']:.1f} -> "
              f"{report['final_val_perplexity']:.1f}); last {report['last_val_loss']:.3f}."
              + (" Stopped early." if report["stopped_early"] else ""), ""]
    test = report.get("test")
    lines += ["## Test", ""]
    if test:
        lines += [test_line(test) + f" Intervals: {test['interval']}. The exported weights were chosen on "
                  "validation; these documents chose nothing, so these are the figures to quote.", ""]
        task = test.get("task_metrics")
        if task:
            lines += ["| metric | test | 95% interval |", "|---|---|---|"]
            lines += [f"| {name} | {task[name]['value']:.1f} | "
                      + (f"{task[name]['interval'][0]:.1f}-{task[name]['interval'][1]:.1f}" if task[name]["interval"]
                         else "-") + " |" for name in settings.TASK_METRICS if name in task]
            lines.append("")
    else:
        lines += ["No test split: pass `--config.data.test_files` (or keep `data.test_fraction` above 0 on a corpus "
                  "of more than ~40 documents) for figures nothing was selected on.", ""]
    auto = report.get("learning_rate_auto")
    if auto:
        lines += [f"Learning rate (auto): {auto['learning_rate']:.3g}, {auto['reason']}; the range test cost "
                  f"{auto['sweep_steps']} steps ({auto['share_of_run']:.1%} of the run), curve in TensorBoard "
                  "under lr_auto.", ""]
    task = report.get("task_metrics")
    if task:
        lines += ["## Task metrics", "",
                  f"{task['examples']} held-out prompts completed greedily; best weights picked by "
                  f"{task['select_best_by']}.", "", "| metric | base model | exported | best (step) |",
                  "|---|---|---|---|"]
        lines += [f"| {k} | {task['initial'].get(k, float('nan')):.1f} | {task['exported'].get(k, float('nan')):.1f} | "
                  f"{task['best'][k]['value']:.1f} ({task['best'][k]['step']}) |" for k in settings.TASK_METRICS if k in task["best"]]
        lines += [""]
    if report.get("review"):
        lines += ["## Review sheet", "", f"Rate the blinded outputs in `{report['review']['html']}` (fill "
                  f"`{report['review']['sheet']}`'s preferred column), then `python -m trainer.review "
                  f"--run={output_dir} --ratings=review.csv`.", ""]
    comparison = report.get("comparison")
    if comparison and comparison.get("samples"):
        lines += ["## Base model and fine-tuned model", "",
                  f"Validation perplexity {comparison['base_perplexity']:,.1f} (base) -> "
                  f"{comparison['tuned_perplexity']:,.1f} (exported). Continuations of the same prompts, same "
                  "seed and sampler (top-p 0.9, temperature 0.8):", "",
                  "| prompt | base model | fine-tuned |", "|---|---|---|"]
        lines += [f"| {_cell(s['prompt'])} | {_cell(s['base'] or '(not recorded)')} | {_cell(s['tuned'])} |"
                  for s in comparison["samples"]]
        lines += [""]
    lines += ["## Data audit", ""]
    lines += [f"- {f.severity}: [{f.check}] {f.figure}" + (f" - fix: {f.fix}" if f.severity != "info" else "")
              for f in findings] or ["- (pre-flight off)"]
    lines += ["", "## Samples (last evaluation)", ""]
    lines += [f"- **{s['prompt']}** {s['completion']}" for s in report.get("samples", [])]
    lines += ["", "## Config", "", config_markdown(config), ""]
    path = filesystem.join(output_dir, "report.md")
    filesystem.write_text(path, "\n".join(lines))
    return path
