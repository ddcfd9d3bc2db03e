"""How sure is a nightly verdict? A checkpoint and its baseline are audited on the same images,
so their difference is measured image by image: the images scored on both sides are paired
by (shard, key) and resampled together (paired bootstrap, scipy.stats.bootstrap with
paired=True, percentile intervals, seeded), which cancels the image-to-image variation the
two sides share. Intervals, for candidate against baseline:

    median_abs_as_increase_deg   median |AS| (candidate) - median |AS| (baseline), degrees
    <ratio>_drop_rel             (R(baseline) - R(candidate)) / |R(baseline)| for the IS/|AS|
                                 ratio R: median_ratio (median of per-image IS/|AS|, images
                                 with |AS| = 0 left out, as model_summary) or ratio_of_means

The error rate is a proportion of one run's samples, not paired: error_rate_interval gives its
exact (Clopper-Pearson) interval, scipy.stats.binomtest.
"""
from __future__ import annotations

import numpy as np

from .runner import sql_frame

# scored_images (ok, aa, i): queries/_macros.sql
_PAIRS_SQL = """
SELECT b.shard, b.key, b.aa AS aa_b, b.i AS is_b, c.aa AS aa_c, c.i AS is_c
FROM scored_images($images_glob, $baseline_model, $baseline_run) b
JOIN scored_images($images_glob, $candidate_model, $candidate_run) c USING (shard, key)
WHERE b.ok AND c.ok
ORDER BY b.shard, b.key
"""
METHOD = "paired bootstrap over images (scipy.stats.bootstrap, paired=True, percentile)"
_CELLS_PER_BATCH = 4_000_000  # resamples x images held in memory at once


def paired_images(results, baseline_model: str, baseline_run: str, candidate_model: str,
                  candidate_run: str) -> dict[str, np.ndarray]:
    """|AS| and IS of every image scored on both sides: aa_b, is_b, aa_c, is_c (float64)."""
    df = sql_frame(results, _PAIRS_SQL, {"baseline_model": baseline_model, "baseline_run": baseline_run,
                                         "candidate_model": candidate_model, "candidate_run": candidate_run},
                   "paired images")
    return {c: df[c].to_numpy().astype(np.float64) for c in ("aa_b", "is_b", "aa_c", "is_c")}


def ratio(is_deg: np.ndarray, abs_as: np.ndarray, kind: str, axis: int = -1) -> np.ndarray:
    """The IS/|AS| ratio along `axis`: median_ratio or ratio_of_means (model_summary's)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        if kind == "median_ratio":
            return np.nanmedian(np.where(abs_as != 0, is_deg / abs_as, np.nan), axis=axis)
        if kind == "ratio_of_means":
            return np.mean(is_deg, axis=axis) / np.mean(abs_as, axis=axis)
    raise ValueError(f"unknown ratio {kind!r}")


def _median_increase(aa_b, aa_c, axis=-1):
    return np.median(aa_c, axis=axis) - np.median(aa_b, axis=axis)


def _ratio_drop(kind):
    def stat(aa_b, is_b, aa_c, is_c, axis=-1):
        rb, rc = ratio(is_b, aa_b, kind, axis), ratio(is_c, aa_c, kind, axis)
        with np.errstate(divide="ignore", invalid="ignore"):
            return (rb - rc) / np.abs(rb)
    return stat


def bootstrap_interval(data: tuple, stat, confidence: float, n_resamples: int, seed: int) -> dict:
    """{estimate, low, high}: stat over `data` (arrays of one length, resampled together) and its
    percentile bootstrap interval (scipy.stats.bootstrap, seeded, vectorized in batches that
    bound memory); a bound is None when it cannot be had (fewer than 2 items, a non-finite
    estimate or bound)."""
    from scipy.stats import bootstrap

    est = float(stat(*data)) if len(data[0]) else float("nan")
    if len(data[0]) < 2 or not np.isfinite(est):
        return {"estimate": est if np.isfinite(est) else None, "low": None, "high": None}
    res = bootstrap(data, stat, paired=True, vectorized=True, n_resamples=n_resamples, confidence_level=confidence,
                    method="percentile", rng=np.random.default_rng(seed),
                    batch=max(1, _CELLS_PER_BATCH // len(data[0])))
    lo, hi = (float(x) for x in (res.confidence_interval.low, res.confidence_interval.high))
    ok = np.isfinite(lo) and np.isfinite(hi)
    return {"estimate": est, "low": lo if ok else None, "high": hi if ok else None}


def paired_intervals(pairs: dict[str, np.ndarray], ratio_kind: str, confidence: float = 0.95,
                     n_resamples: int = 2000, seed: int = 0) -> dict:
    """The intervals of the module docstring over `pairs` (paired_images): {statistic:
    {estimate, low, high}} plus n_pairs, confidence, method, n_resamples, seed. A bound is
    None when it cannot be had (fewer than 2 pairs, a ratio undefined on the baseline)."""
    aa_b, is_b, aa_c, is_c = (pairs[k] for k in ("aa_b", "is_b", "aa_c", "is_c"))
    return {
        "median_abs_as_increase_deg": bootstrap_interval((aa_b, aa_c), _median_increase, confidence, n_resamples,
                                                         seed),
        f"{ratio_kind}_drop_rel": bootstrap_interval((aa_b, is_b, aa_c, is_c), _ratio_drop(ratio_kind), confidence,
                                                     n_resamples, seed),
        "n_pairs": int(len(aa_b)), "confidence": confidence, "method": METHOD, "n_resamples": n_resamples,
        "seed": seed,
    }


def error_rate_interval(errors: int, total: int, confidence: float = 0.95) -> dict:
    """The error rate errors/total with its exact binomial (Clopper-Pearson) interval."""
    from scipy.stats import binomtest

    if total <= 0:
        return {"estimate": None, "low": None, "high": None}
    ci = binomtest(errors, total).proportion_ci(confidence_level=confidence, method="exact")
    return {"estimate": errors / total, "low": float(ci.low), "high": float(ci.high)}
