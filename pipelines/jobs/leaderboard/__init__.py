"""`sing leaderboard`: null-space leakage across a model zoo, one row per model, CLIP computed once.

    selection.py  SELECTION strings -> MODEL strings (files, timm:PATTERN, paper, zoo names)
    plan.py       every model described before any work; who takes part, who shares a pass
    run.py        CLIP cache, per-pass fits and audits on the jobs' spine, the manifest
    summary.py    each model's row (queries.layouts SCHEMAS["leaderboard"])
    options.py    LeaderboardOptions

Results: OUT/results (the audits, and OUT/results/leaderboard/ the rows: `sing query leaderboard
--results OUT/results`, `sing report`), OUT/clip, OUT/translators, OUT/text, OUT/leaderboard.json.
"""
from __future__ import annotations


def cli_args(p) -> None:
    from pipelines.jobs.leaderboard.options import LeaderboardOptions
    from pipelines.options import add_arguments

    add_arguments(p, LeaderboardOptions)


def cli_run(a) -> int:
    from pipelines.jobs.leaderboard.options import LeaderboardOptions
    from pipelines.jobs.leaderboard.run import run_leaderboard
    from pipelines.options import from_namespace

    man = run_leaderboard(from_namespace(LeaderboardOptions, a, progress=not a.quiet))
    c = man["counts"]
    print(f"leaderboard {man['board_id']}: {man['models']} models: {c['ok']} ranked ({len(man['computed'])} this run), "
          f"{c['skipped']} skipped, {c['failed']} failed; CLIP ran on {man['clip_forwards']} fit images in all")
    print(f"rows: sing query leaderboard --results {man['results']}")
    return 1 if c["failed"] else 0
