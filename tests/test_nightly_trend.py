"""The nightly trend page: checkpoints in training order, values recomputed from the results,
alarm levels and intervals in the units of each panel, a figure that decodes."""
from __future__ import annotations

import base64
import io
import re
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest
from PIL import Image

from pipelines.jobs.nightly.config import Thresholds
from pipelines.jobs.nightly.trend import _limit_and_ci, trend_rows, write_trend
from tests.results_factory import write_results


def _rec(name: str, run: str, t: float, verdict: str, checks: list | None = None) -> dict:
    return {"name": name, "slug": "m", "run_id": run, "verdict": verdict, "sha256": name,
            "order_key": {"mtime": [t, name], "name": [name]}, **({"checks": checks} if checks is not None else {})}


def test_trend_page(tmp_path):
    w = write_results(tmp_path, models={"m": {"runs": {"r3": {"as_scale": 3.0}}}}, runs=("r1", "r2", "r3"),
                      n_per_class=10, n_classes=4, with_concepts=False)
    th = Thresholds(max_median_abs_as_increase_deg=0.2, max_is_as_ratio_drop_rel=0.1, max_error_rate=0.01)
    cfg = SimpleNamespace(out=str(tmp_path), name="series", checkpoints=SimpleNamespace(order="mtime"), thresholds=th)
    med = {r: float(np.median(w.images.filter(pl.col("run") == r)["abs_as_deg"].to_numpy().astype(np.float64)))
           for r in ("r1", "r2", "r3")}
    fail = {"check": "median_abs_as_increase_deg", "limit": 0.2, "baseline": med["r2"], "passed": False,
            "interval": [0.5, 0.9]}
    # judged out of order on purpose: the page sorts by the series' order (mtime here)
    judged = {"c": _rec("epoch_3", "r3", 30.0, "alarm", [fail]), "a": _rec("epoch_1", "r1", 10.0, "no-baseline"),
              "b": _rec("epoch_2", "r2", 20.0, "ok", [])}
    rows = trend_rows(cfg, judged)
    assert [r["name"] for r in rows] == ["epoch_1", "epoch_2", "epoch_3"]
    for r in rows:  # values straight from the Parquet files and the manifests (2 error rows per run)
        assert r["median_abs_as"] == pytest.approx(med[r["run_id"]], abs=1e-6)
        assert r["error_rate"] == pytest.approx(2 / 42)
    last = rows[-1]
    assert last["median_abs_as_failed"] and last["median_abs_as_limit"] == pytest.approx(med["r2"] + 0.2)
    assert last["median_abs_as_ci"] == pytest.approx((med["r2"] + 0.5, med["r2"] + 0.9))
    path = write_trend(cfg, judged)
    assert path == tmp_path / "nightly" / "series" / "trend.html"
    page = path.read_text()
    png = base64.b64decode(re.search(r'src="data:image/png;base64,([^"]+)"', page).group(1))
    with Image.open(io.BytesIO(png)) as im:
        assert im.format == "PNG" and im.size[0] >= 700
    assert page.count("<tr class=alarm>") == 1 and "epoch_3" in page and "<script" not in page


def test_limits_and_intervals_in_panel_units():
    # the ratio may fall by 10% of the baseline's 20: alarm level 18; a drop interval [5%, 15%] -> [17, 19]
    lim, ci = _limit_and_ci("ratio", {"baseline": 20.0, "limit": 0.1, "interval": [0.05, 0.15]})
    assert lim == pytest.approx(18.0) and ci == pytest.approx((17.0, 19.0))
    assert _limit_and_ci("error_rate", {"baseline": None, "limit": 0.01, "interval": [0.0, 0.03]}) == (0.01, (0.0, 0.03))
    assert np.isnan(_limit_and_ci("median_abs_as", None)[0])
