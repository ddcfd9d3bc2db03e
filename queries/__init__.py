"""Ready-made DuckDB SQL analyses of SING results (one question per `*.sql` file), the
runner behind `sing query`, and the figure/HTML report behind `sing report`.

    import queries
    queries.list_queries()
    queries.model_summary("results/")                       # Polars DataFrame
    queries.concept_rows("results/", model="resnet50")      # every concept angle, one row each
    queries.run_query("class_leakage", "results/", {"model": "resnet50", "top": 10})
    queries.rank_correlation("results/", "resnet50", "vit_large_patch16_224")
    queries.checkpoint_diff("results/", model="resnet50", baseline_run="a", candidate_run="b")
    queries.checkpoint_intervals("results/", "resnet50", "a", "resnet50", "b")   # paired bootstrap CIs
    queries.leaderboard("board/", family="vit", order_by="median_abs_as")   # `sing leaderboard`'s rows

Callers outside this package import from here (docs/ARCHITECTURE.md lists the modules).
"""
from .api import (
    RankCorrelation,
    checkpoint_diff,
    checkpoint_intervals,
    class_leakage,
    concept_rows,
    concept_shift,
    image_leakage,
    leaderboard,
    model_summary,
    rank_correlation,
    steer_summary,
)
from .cli import cli_query
from .errors import QueryError
from .formatting import format_frame
from .runner import run_query
from .sqlfile import list_queries, load_query
from .statistics import spearman_p_value


def build_report(*args, **kwargs):
    """See queries.report.build_report (imported lazily: matplotlib is slow to import)."""
    from .report import build_report as _build

    return _build(*args, **kwargs)


def cli_report(args=None) -> int:
    from .report import cli_report as _cli

    return _cli(args)


__all__ = [
    "QueryError", "RankCorrelation", "build_report", "checkpoint_diff", "checkpoint_intervals", "class_leakage", "cli_query",
    "cli_report", "concept_rows", "concept_shift", "format_frame", "image_leakage", "leaderboard", "list_queries",
    "load_query", "model_summary", "rank_correlation", "run_query", "spearman_p_value", "steer_summary",
]
