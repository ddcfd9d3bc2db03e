"""`sing nightly`: audit a training run's new checkpoints in one decode pass, compare each with its
baseline, alarm (exit 3). A room of its own: it uses the audit, the fit and the queries; nothing
below it imports it.

    job.py          run_nightly, the checks and their verdicts, the CLI
    config.py       the YAML config (keys documented in cluster/nightly.example.yaml)
    checkpoints.py  listing, hashing and loading checkpoints; the state of what was judged
    trend.py        trend.html over the judged checkpoints
"""
from __future__ import annotations

from pipelines.jobs.nightly.job import cli_args, cli_run, evaluate, format_summary, run_nightly

__all__ = ["cli_args", "cli_run", "evaluate", "format_summary", "run_nightly"]
