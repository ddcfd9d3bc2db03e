"""`sing reproduce`: the paper's two headline experiments beside the paper's numbers. A room of
its own: it uses the audit, steer, imports and queries; nothing below it imports it.

    job.py              run_reproduce, the models and translators, the CLI
    report.py           reproduction.md/.html/.json
    paper_numbers.yaml  the paper's numbers, each naming its table or figure
"""
from __future__ import annotations

from pipelines.jobs.reproduce.job import ReproduceOptions, cli_args, cli_run, paper_numbers, run_reproduce

__all__ = ["ReproduceOptions", "cli_args", "cli_run", "paper_numbers", "run_reproduce"]
