"""queries.paired and the nightly checks that use it: paired confidence intervals with known
answers (a planted shift is covered, no shift covers 0, pairing narrows the interval, the
coverage is near its level), the error rate's exact interval, and `alarm_on: interval`
keeping a small audit's noisy point estimate from alarming."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest

from pipelines.jobs.nightly import evaluate
from pipelines.jobs.nightly.config import Thresholds
from queries import checkpoint_diff, checkpoint_intervals
from queries.paired import error_rate_interval, paired_intervals, ratio
from tests.results_factory import write_results


def _pairs(n: int, shift: float, seed: int, is_scale: float = 1.0, noise: float = 0.05) -> dict:
    """Baseline |AS| and IS per image; the candidate's are the same images' values moved by
    `shift` degrees (|AS|) and scaled by `is_scale` (IS), plus a little per-image noise."""
    g = np.random.default_rng(seed)
    aa_b = np.abs(g.normal(1.0, 0.5, n))
    is_b = g.uniform(10, 30, n)
    return {"aa_b": aa_b, "is_b": is_b, "aa_c": aa_b + shift + g.normal(0, noise, n),
            "is_c": is_b * is_scale * (1 + g.normal(0, noise / 10, n))}


def test_a_planted_shift_is_covered_and_estimated_exactly():
    p = _pairs(400, 0.3, seed=1)
    iv = paired_intervals(p, "median_ratio", confidence=0.95, n_resamples=2000)
    m = iv["median_abs_as_increase_deg"]
    assert m["estimate"] == pytest.approx(np.median(p["aa_c"]) - np.median(p["aa_b"]), abs=1e-12)
    assert m["low"] < 0.3 < m["high"] and m["high"] - m["low"] < 0.2
    assert iv["n_pairs"] == 400 and iv["confidence"] == 0.95 and "paired" in iv["method"]
    # the same seed gives the same interval; another seed nearly the same
    again = paired_intervals(p, "median_ratio", n_resamples=2000)["median_abs_as_increase_deg"]
    other = paired_intervals(p, "median_ratio", n_resamples=2000, seed=7)["median_abs_as_increase_deg"]
    assert again == m and abs(other["low"] - m["low"]) < 0.02


def test_the_interval_matches_an_independent_paired_bootstrap():
    """A hand-written paired percentile bootstrap (numpy, other random stream, more resamples)."""
    p = _pairs(150, 0.1, seed=2, noise=0.3)
    m = paired_intervals(p, "median_ratio", confidence=0.9, n_resamples=4000)["median_abs_as_increase_deg"]
    g = np.random.default_rng(123)
    idx = g.integers(0, 150, (20000, 150))
    boot = np.median(p["aa_c"][idx], axis=1) - np.median(p["aa_b"][idx], axis=1)
    lo, hi = np.percentile(boot, [5, 95])
    assert m["low"] == pytest.approx(lo, abs=0.015) and m["high"] == pytest.approx(hi, abs=0.015)


def test_no_shift_covers_zero_and_pairing_narrows_the_interval():
    p = _pairs(300, 0.0, seed=3)
    m = paired_intervals(p, "median_ratio", n_resamples=2000)["median_abs_as_increase_deg"]
    assert m["low"] < 0 < m["high"]
    # resampling the two sides independently ignores that they are the same images: much wider
    from scipy.stats import bootstrap

    unpaired = bootstrap((p["aa_b"], p["aa_c"]), lambda b, c, axis: np.median(c, axis) - np.median(b, axis),
                         vectorized=True, n_resamples=2000, method="percentile", rng=np.random.default_rng(0))
    ci = unpaired.confidence_interval
    assert (m["high"] - m["low"]) * 2 < ci.high - ci.low


def test_coverage_is_near_the_confidence_level():
    """Small audits (60 images) with a known shift: the 90% interval holds it ~90% of the time."""
    # the true change of the median: the population median of |AS| + 0.2 + noise, minus that of |AS|
    ref = np.abs(np.random.default_rng(5).normal(1.0, 0.5, 400_000))
    true = np.median(ref + 0.2 + np.random.default_rng(6).normal(0, 0.2, ref.size)) - np.median(ref)
    hits = 0
    for seed in range(120):
        g = np.random.default_rng(1000 + seed)
        aa_b = np.abs(g.normal(1.0, 0.5, 60))
        p = {"aa_b": aa_b, "is_b": np.ones(60), "aa_c": aa_b + 0.2 + g.normal(0, 0.2, 60), "is_c": np.ones(60)}
        m = paired_intervals(p, "median_ratio", confidence=0.9, n_resamples=400, seed=seed)
        m = m["median_abs_as_increase_deg"]
        hits += m["low"] <= true <= m["high"]
    assert 0.8 <= hits / 120 <= 0.98


def test_ratio_drop_interval():
    p = _pairs(300, 0.0, seed=4, is_scale=0.8, noise=0.0)  # IS falls by 20% on every image
    iv = paired_intervals(p, "median_ratio", n_resamples=1000)["median_ratio_drop_rel"]
    assert iv["estimate"] == pytest.approx(0.2, abs=1e-12)
    assert iv["low"] == pytest.approx(0.2, abs=1e-9) and iv["high"] == pytest.approx(0.2, abs=1e-9)
    p = _pairs(300, 0.0, seed=5, is_scale=0.9, noise=0.5)
    iv = paired_intervals(p, "ratio_of_means", n_resamples=1000)["ratio_of_means_drop_rel"]
    expect = 1 - ratio(p["is_c"], p["aa_c"], "ratio_of_means") / ratio(p["is_b"], p["aa_b"], "ratio_of_means")
    assert iv["estimate"] == pytest.approx(expect, abs=1e-12) and iv["low"] < iv["estimate"] < iv["high"]
    # |AS| = 0 images are left out of the median ratio, as model_summary does
    assert ratio(np.array([1.0, 2.0, 9.0]), np.array([1.0, 1.0, 0.0]), "median_ratio") == 1.5


def test_error_rate_interval_is_clopper_pearson():
    from scipy.stats import beta

    r = error_rate_interval(3, 200, 0.95)
    assert r["estimate"] == 0.015
    assert r["low"] == pytest.approx(beta.ppf(0.025, 3, 198)) and r["high"] == pytest.approx(beta.ppf(0.975, 4, 197))
    assert error_rate_interval(0, 0)["estimate"] is None


def _cfg(**th) -> SimpleNamespace:
    return SimpleNamespace(thresholds=Thresholds(**th))


def test_alarm_on_interval_spares_a_small_noisy_audit():
    """A small audit whose point estimate crosses the limit while its interval straddles it:
    `point` alarms, `interval` does not; a clear regression alarms under both."""
    g = np.random.default_rng(8)
    aa_b = np.abs(g.normal(1.0, 0.6, 40))
    noisy = {"aa_b": aa_b, "is_b": np.full(40, 20.0), "aa_c": aa_b + 0.25 + g.normal(0, 0.6, 40),
             "is_c": np.full(40, 20.0)}
    iv = paired_intervals(noisy, "median_ratio", n_resamples=2000)
    m = iv["median_abs_as_increase_deg"]
    limit = (m["estimate"] + m["low"]) / 2  # below the estimate, above the interval's low end
    diff = {"stats": {"median_abs_as": {"baseline": float(np.median(aa_b)), "candidate": 0.0,
                                        "delta": m["estimate"]}}}
    counts = {"images": 40, "errors": 0}
    (point,) = evaluate(_cfg(max_median_abs_as_increase_deg=limit), diff, counts, iv)
    (inter,) = evaluate(_cfg(max_median_abs_as_increase_deg=limit, alarm_on="interval"), diff, counts, iv)
    assert point["passed"] is False and point["alarm_on"] == "point"
    assert inter["passed"] is True and inter["alarm_on"] == "interval" and inter["interval_vs_limit"] == "uncertain"
    assert inter["interval"] == [m["low"], m["high"]] and inter["confidence"] == 0.95
    clear = paired_intervals(_pairs(400, 1.0, seed=9), "median_ratio", n_resamples=1000)
    d = {"stats": {"median_abs_as": {"delta": clear["median_abs_as_increase_deg"]["estimate"]}}}
    (c,) = evaluate(_cfg(max_median_abs_as_increase_deg=0.5, alarm_on="interval"), d, counts, clear)
    assert c["passed"] is False and c["interval_vs_limit"] == "fail"
    # no paired images: the point estimate decides, and says so
    (nop,) = evaluate(_cfg(max_median_abs_as_increase_deg=limit, alarm_on="interval"), diff, counts, None)
    assert nop["passed"] is False and nop["alarm_on"] == "point (no interval)" and nop["interval"] is None
    # the error rate under `interval`: 1 error in 50 with a 1% limit is not proof of > 1%
    (e,) = evaluate(_cfg(max_error_rate=0.01, alarm_on="interval"), None, {"images": 49, "errors": 1}, None)
    assert e["value"] == 0.02 and e["passed"] is True and e["interval"][0] < 0.01 < e["interval"][1]


def test_checkpoint_intervals_pair_images_by_shard_and_key(tmp_path):
    """Over a results tree: the pairs are the images scored in both runs, the estimate equals
    the change of medians computed with Polars, and the SQL statistics agree."""
    w = write_results(tmp_path, models={"m": {"runs": {"b": {"as_scale": 2.0}}}}, runs=("a", "b"), n_per_class=15,
                      n_classes=4, with_concepts=False)
    iv = checkpoint_intervals(tmp_path, "m", "a", "m", "b", n_resamples=500)
    a = w.images.filter(pl.col("run") == "a").select("shard", "key", pl.col("abs_as_deg").alias("aa_a"))
    b = w.images.filter(pl.col("run") == "b").select("shard", "key", pl.col("abs_as_deg").alias("aa_b"))
    j = a.join(b, on=["shard", "key"])
    assert iv["n_pairs"] == j.height == 60
    m = iv["median_abs_as_increase_deg"]
    expect = float(np.median(j["aa_b"].to_numpy().astype(np.float64)) - np.median(j["aa_a"].to_numpy().astype(np.float64)))
    assert m["estimate"] == pytest.approx(expect, abs=1e-9) and m["low"] <= m["estimate"] <= m["high"]
    stats = checkpoint_diff(tmp_path, model="m", baseline_run="a", candidate_run="b")["stats"]
    assert stats["median_abs_as"]["delta"] == pytest.approx(m["estimate"], abs=1e-6)
