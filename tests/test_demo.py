"""`sing demo --offline`, the README's "run the main job" command, end to end: real photos
into shards, a translator fitted, an audit with concepts, the summary table. The classifier
is the real EfficientNet-Lite0, so its predictions on the photos can be checked."""
from __future__ import annotations

import json

import polars as pl
import pytest

from pipelines.cli import main as sing

pytestmark = pytest.mark.slow


def test_demo_runs_end_to_end_offline(tmp_path, ray_session, capsys):
    out = tmp_path / "demo"
    assert sing(["demo", "--out", str(out), "--offline", "--images-per-photo", "4"]) == 0
    printed = capsys.readouterr().out
    assert "OFFLINE" in printed and "MEANINGLESS" in printed  # says the CLIP is random
    (man_path,) = (out / "results" / "runs").glob("*.json")
    man = json.loads(man_path.read_text())
    assert man["status"] == "complete" and man["models"][0]["null_dim"] == 280  # 1280 -> 1000 head
    images = pl.read_parquet(str(out / "results" / "images" / "**" / "*.parquet"), hive_partitioning=True)
    n = images.height
    assert n == man["counts"][man["models"][0]["slug"]]["images"] and n >= 6 * 4
    assert images["key"].n_unique() == n and images["as_deg"].is_not_null().all()
    assert images["logit_drift"].max() < 1e-2  # null removal leaves the logits alone
    # the real weights at work: augmented copies of the cat and the coffee are recognised
    top1 = dict(images.group_by("class_name").agg((pl.col("pred") == pl.col("label")).mean()).iter_rows())
    assert top1["Egyptian cat"] >= 0.75 and top1["espresso"] >= 0.75, top1
    concepts = pl.read_parquet(str(out / "results" / "concepts" / "**" / "*.parquet"))
    assert concepts["key"].n_unique() == n and concepts["concept"].n_unique() > 10
    assert f"{n} images" in printed and "median_|AS|" in printed
    # a second run reuses the photos, shards and translator, and resumes the finished audit
    assert sing(["demo", "--out", str(out), "--offline", "--images-per-photo", "4"]) == 0
    again = json.loads(man_path.read_text())
    assert again["shards"]["skipped_done"] == again["shards"]["total"]
