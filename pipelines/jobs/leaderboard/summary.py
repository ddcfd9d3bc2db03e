"""One leaderboard row per model: from its audit's results (the `model_summary` query and its
scored images), its translator's fit report, and what planning found out about it.

    RESULTS/leaderboard/model=<slug>/run=<board id>/summary.parquet   (queries.layouts SCHEMAS)

Both IS/|AS| ratios come with percentile bootstrap intervals over images (scipy.stats.bootstrap,
seeded): ratio_of_means = mean IS / mean |AS| (images resampled with both numbers), median_ratio
= median of per-image IS / |AS|. The row is the model's marker: a model whose row says "ok" is
done, and a rerun does no work for it.
"""
from __future__ import annotations

import contextlib
import math
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipelines.io.layout import fs_of, join, write_table_atomic

TABLE = "leaderboard"
SEED = 20261203
_TOP_SQL = """
SELECT concept, avg(as_deg::DOUBLE) AS mean_as
FROM concept_rows($images_glob, $concept_angles_glob, $concept_vocab_glob, $concepts_glob, $model, $run)
WHERE NOT isnan(as_deg)
GROUP BY concept
ORDER BY abs(avg(as_deg::DOUBLE)) DESC, concept
LIMIT $k
"""
_SCORED_SQL = """
SELECT aa, i FROM scored_images($images_glob, $model, $run) WHERE ok ORDER BY shard, key
"""


def row_file(results: str, slug: str, board: str) -> str:
    return join(results, TABLE, f"model={slug}", f"run={board}", "summary.parquet")


def schema() -> pa.Schema:
    from queries.layouts import SCHEMAS

    return SCHEMAS[TABLE]


def write_row(results: str, slug: str, board: str, row: dict) -> None:
    """The model's row (missing fields NULL), written whole: it marks the model done when ok."""
    s = schema()
    table = pa.table({f.name: pa.array([row.get(f.name)], f.type) for f in s}, schema=s)
    write_table_atomic(table, row_file(results, slug, board))


def read_status(results: str, slug: str, board: str) -> str | None:
    import pyarrow.parquet as pq

    from pipelines.io.layout import file_exists

    path = row_file(results, slug, board)
    if not file_exists(path):
        return None
    fs, p = fs_of(path)
    with fs.open(p, "rb") as fh:
        return pq.read_table(fh, columns=["status"]).column("status")[0].as_py()


def ratio_intervals(aa: np.ndarray, i: np.ndarray, resamples: int) -> dict:
    """Both ratio definitions' 95% intervals over the scored images (|AS|, IS in degrees), by the
    nightly's bootstrap (queries.paired), seeded."""
    from queries.paired import bootstrap_interval

    with np.errstate(divide="ignore", invalid="ignore"):  # all |AS| zero: no interval, not a warning
        of_means = bootstrap_interval((i, aa), lambda x, y, axis=-1: np.mean(x, axis=axis) / np.mean(y, axis=axis),
                                      0.95, resamples, SEED)
        per_image = (i / aa)[aa > 0]
    med = bootstrap_interval((per_image,), lambda r, axis=-1: np.median(r, axis=axis), 0.95, resamples, SEED)
    return {"ratio_of_means_lo": of_means["low"], "ratio_of_means_hi": of_means["high"],
            "median_ratio_lo": med["low"], "median_ratio_hi": med["high"]}


def _none(v):
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else v


@contextlib.contextmanager
def local_results(results: str, slug: str, run: str):
    """A local results directory holding one model's run: `results` itself, or (a URL) its
    images, concept angles and vocabulary copied to a temporary directory, since the query
    engine reads local files."""
    from pipelines.io.remote import is_url

    if not is_url(results):
        yield results
        return
    with tempfile.TemporaryDirectory(prefix="sing-board-") as tmp:
        for table in ("images", "concept_angles", "concept_vocab"):
            src = join(results, table, f"model={slug}", f"run={run}")
            fs, path = fs_of(src)
            if fs.exists(path):
                fs.get(path + "/", str(Path(tmp) / table / f"model={slug}" / f"run={run}") + "/", recursive=True)
        yield tmp


def audit_numbers(results: str, slug: str, run: str, resamples: int, top_k: int) -> dict:
    """The model's numbers from its audit: the model_summary query, the ratio intervals and the
    concepts that move most (when concepts were scored)."""
    with local_results(results, slug, run) as local:
        return _numbers(local, slug, run, resamples, top_k)


def _numbers(results: str, slug: str, run: str, resamples: int, top_k: int) -> dict:
    from queries import model_summary
    from queries.runner import has_concepts, sql_frame

    s = model_summary(results, model=slug, run=run).row(0, named=True)
    scored = sql_frame(results, _SCORED_SQL, {"model": slug, "run": run}, "leaderboard scores")
    out = {"n_images": s["n_images"], "n_scored": s["n_scored"], "top1": _none(s["top1_acc"]),
           "median_abs_as": _none(s["median_abs_as"]), "median_is": _none(s["median_is"]),
           "ratio_of_means": _none(s["ratio_of_means"]), "median_ratio": _none(s["median_ratio"]),
           "null_dim": s["null_dim"]}
    out.update(ratio_intervals(scored["aa"].to_numpy(), scored["i"].to_numpy(), resamples))
    if top_k and has_concepts(results):
        top = sql_frame(results, _TOP_SQL, {"model": slug, "run": run, "k": top_k}, "leaderboard concepts")
        out["top_concepts"] = [{"concept": c, "mean_as": float(v)} for c, v in top.iter_rows()]
    return out


def planned_fields(cand) -> dict:
    """What planning knows of a model (queries.layouts: the leaderboard's columns)."""
    d = cand.described
    row = {"model_string": cand.model_string, "model_id": d.model_id if d else cand.model_string}
    if d is not None:
        row.update(family=d.family, pretrain=d.pretrain, params=d.params, num_features=d.num_features,
                   num_classes=d.num_classes, null_dim=d.null_dim_bound,
                   eval_transform=d.preprocess.view_key if d.preprocess is not None else None)
    return row
