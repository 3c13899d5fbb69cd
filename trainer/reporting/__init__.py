"""Reporting: what a person reads, during the run and after it.

    run_log.py      TensorBoard (OUTPUT/logs), metrics.jsonl, Timings
    console.py      say, the progress bar
    report_card.py  report.md, curves.png, the summary lines (report.json itself is the run's)

It imports only the foundation: any layer above may report, and reporting
knows nothing of how a figure was made.
"""

from trainer.reporting.console import progress_bar, say, set_total
from trainer.reporting.report_card import plot_curves, summary_lines, write_report_card
from trainer.reporting.run_log import RunLog, Timings, completions_markdown, config_markdown, generations_markdown
