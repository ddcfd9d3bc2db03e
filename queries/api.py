"""One Python function per built-in query (notebooks, `sing steer`, the nightly job), and
the reshaping of results that Python callers want: rank_correlation adds the p-value,
checkpoint_diff splits its rows into statistics and top classes."""
from __future__ import annotations

import math
from typing import NamedTuple

import polars as pl

from .runner import run_query
from .statistics import spearman_p_value


def model_summary(results, **params) -> pl.DataFrame:
    return run_query("model_summary", results, params)


def class_leakage(results, **params) -> pl.DataFrame:
    return run_query("class_leakage", results, params)


def image_leakage(results, **params) -> pl.DataFrame:
    return run_query("image_leakage", results, params)


def concept_shift(results, **params) -> pl.DataFrame:
    return run_query("concept_shift", results, params)


def steer_summary(results, **params) -> pl.DataFrame:
    return run_query("steer_summary", results, params)


def leaderboard(results, **params) -> pl.DataFrame:
    """The rows `sing leaderboard` wrote, one per model and board (queries/leaderboard.sql:
    run, model, family, pretrain, status, order_by, ascending, top)."""
    return run_query("leaderboard", results, params)


_CONCEPT_ROWS_SQL = """
SELECT model, run, key, shard, label, concept, angle_before_deg, angle_after_deg, as_deg
FROM concept_rows($images_glob, $concept_angles_glob, $concept_vocab_glob, $concepts_glob, $model, $run)
ORDER BY model, run, shard, key, concept
"""


def concept_rows(results, model: str | None = None, run: str | None = None) -> pl.DataFrame:
    """Every concept angle of done shards, one row per image and concept (model, run, key,
    shard, label, concept, angle_before_deg, angle_after_deg, as_deg), whichever layout wrote
    them: the table that older runs wrote, from the lists the audit writes now."""
    from .runner import sql_frame

    return sql_frame(results, _CONCEPT_ROWS_SQL, {"model": model, "run": run}, "concept rows")


class RankCorrelation(NamedTuple):
    rho: float | None
    p_value: float | None
    n_classes: int


def rank_correlation(results, model_a: str, model_b: str, run_a: str | None = None,
                     run_b: str | None = None, min_n: int = 1) -> RankCorrelation:
    """Spearman's rho of per-class median |AS| between two models, its two-sided p-value
    (t-approximation) and the number of shared classes."""
    df = run_query("model_rank_correlation", results,
                   {"model_a": model_a, "model_b": model_b, "run_a": run_a, "run_b": run_b, "min_n": min_n})
    row = df.row(0, named=True)
    rho, n = row["spearman_rho"], int(row["n_classes"])
    rho = None if rho is None or math.isnan(rho) else float(rho)
    return RankCorrelation(rho, spearman_p_value(rho, n), n)


def checkpoint_diff(results, model: str | None = None, baseline_run: str | None = None,
                    candidate_run: str | None = None, baseline_model: str | None = None,
                    candidate_model: str | None = None, top_classes: int = 10) -> dict:
    """Baseline vs candidate: {'baseline': {'model', 'run'}, 'candidate': {...},
    'stats': {statistic: {'baseline', 'candidate', 'delta', 'rel_delta'}} (model level, in
    checkpoint_diff.sql order), 'deltas': {statistic: delta}, 'top_classes': DataFrame
    (rank, label, class_name, baseline, candidate, delta, rel_delta, n_baseline,
    n_candidate; largest growth of median |AS| first), 'frame': the full query result}."""
    df = run_query("checkpoint_diff", results, {
        "model": model, "baseline_run": baseline_run, "candidate_run": candidate_run,
        "baseline_model": baseline_model, "candidate_model": candidate_model, "top_classes": top_classes})
    first = df.row(0, named=True)
    model_rows = df.filter(pl.col("kind") == "model").sort("rank")
    stats = {r["statistic"]: {k: r[k] for k in ("baseline", "candidate", "delta", "rel_delta")}
             for r in model_rows.iter_rows(named=True)}
    return {
        "baseline": {"model": first["baseline_model"], "run": first["baseline_run"]},
        "candidate": {"model": first["candidate_model"], "run": first["candidate_run"]},
        "stats": stats,
        "deltas": {k: v["delta"] for k, v in stats.items()},
        "top_classes": df.filter(pl.col("kind") == "class").sort("rank").select(
            "rank", "label", "class_name", "baseline", "candidate", "delta", "rel_delta",
            "n_baseline", "n_candidate"),
        "frame": df,
    }


def checkpoint_intervals(results, baseline_model: str, baseline_run: str, candidate_model: str, candidate_run: str,
                         ratio: str = "median_ratio", confidence: float = 0.95, n_resamples: int = 2000,
                         seed: int = 0) -> dict:
    """Paired confidence intervals of candidate against baseline over the images scored on both
    sides (queries.paired): median_abs_as_increase_deg, <ratio>_drop_rel, n_pairs, method."""
    from .paired import paired_images, paired_intervals

    pairs = paired_images(results, baseline_model, baseline_run, candidate_model, candidate_run)
    return paired_intervals(pairs, ratio, confidence, n_resamples, seed)
