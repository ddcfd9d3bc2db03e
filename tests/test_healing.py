"""Runs that heal themselves, on a multi-node Ray cluster on this machine: the worker node
running a job's model actors is killed mid-run and the same process restarts the stream over
the shards not yet written, exits 0, and every key is written exactly once (audit, steer,
index; the fit's sums count every image once). With every worker gone, the run ends with
exit 1 once --resource-wait has passed without a node to place its actors on."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from tests.pipeline_data import CLASSIFIER, CLIP, photo_folder
from tests.test_multimodel import random_translator

pytestmark = pytest.mark.slow
N_IMAGES = 48  # 3 classes x 16, 4 per shard: 12 shards


@pytest.fixture(scope="module")
def healed(tmp_path_factory):
    from pipelines.jobs.make_shards import make_shards

    root = tmp_path_factory.mktemp("healing")
    make_shards(str(photo_folder(root / "photos", per_class=16)), str(root / "shards"), per_shard=4)
    tr = random_translator(CLASSIFIER, root / "t.safetensors")
    script = Path(__file__).parent / "scripts" / "healing_cluster.py"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.run([sys.executable, str(script), str(root), str(root / "shards" / "*.tar"), str(tr),
                           CLASSIFIER, CLIP], capture_output=True, text=True, timeout=1200, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root / "out", json.loads(lines[-1][len("RESULT "):])


def _healed(attempts: list[dict]) -> None:
    """At least one attempt ended by the lost node and was restarted; the last completed."""
    assert attempts[-1]["status"] == "complete", attempts
    lost = [a for a in attempts if a["status"] == "restarted"]
    assert lost, attempts
    assert all(a["trigger"] for a in lost), attempts


def test_audit_heals_and_writes_every_key_once(healed):
    out, rep = healed
    assert rep["audit"]["rc"] == 0 and rep["audit"]["killed_while_running"], rep["audit"]["log"]
    df = pl.read_parquet(str(out / "images" / "*" / "run=heal" / "*.parquet"))
    assert df.height == df.select("shard", "key").n_unique() == N_IMAGES
    man = json.loads((out / "runs" / "heal.json").read_text())
    assert man["status"] == "complete"
    _healed(man["attempts"])
    assert sum(a["shards_written"] for a in man["attempts"]) == 12  # no shard written twice


def test_steer_heals(healed):
    out, rep = healed
    assert rep["steer"]["rc"] == 0, rep["steer"]["log"]
    df = pl.read_parquet(str(out / "steer" / "*" / "run=heal-steer" / "*.parquet"))
    assert df.height == df["key"].n_unique() == N_IMAGES // 3 and (df["label"] == 0).all()
    _healed(json.loads((out / "runs" / "heal-steer.json").read_text())["attempts"])


def test_index_heals(healed):
    out, rep = healed
    assert rep["index"]["rc"] == 0, rep["index"]["log"]
    keys = [k for p in (out / "index" / "parts").glob("*.parquet") for k in pq.read_table(p).column("key").to_pylist()]
    assert len(keys) == len(set(keys)) == N_IMAGES
    _healed(json.loads((out / "index" / "index.json").read_text())["attempts"])


def test_fit_heals_and_counts_every_image_once(healed):
    out, rep = healed
    assert rep["fit"]["rc"] == 0, rep["fit"]["log"]
    fit = json.loads((out / "fit.safetensors.report.json").read_text())
    assert fit["n_train"] + fit["n_heldout"] == N_IMAGES  # a restarted pass drops its partial sums
    _healed(fit["attempts"])


def test_losing_every_worker_fails_with_a_clear_message(healed):
    _, rep = healed
    assert rep["all_lost"]["rc"] == 1, rep["all_lost"]["log"]
    assert "the cluster cannot place the model actors: needs 0.5 CPU for the model actors and 1 for a read task, " \
           "the cluster has 0" in rep["all_lost"]["log"], rep["all_lost"]["log"]
    assert "rerun the same command to resume" in rep["all_lost"]["log"]
