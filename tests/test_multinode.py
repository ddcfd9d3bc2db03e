"""A multi-node Ray cluster on one machine: every key exactly once, even after a node dies."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from tests.pipeline_data import CLASSIFIER, photo_folder
from tests.test_multimodel import random_translator

pytestmark = pytest.mark.slow


def test_two_node_cluster_and_node_loss(tmp_path):
    from pipelines.jobs.make_shards import make_shards

    make_shards(str(photo_folder(tmp_path / "photos", per_class=8)), str(tmp_path / "shards"), per_shard=4)
    tr = random_translator(CLASSIFIER, tmp_path / "t.safetensors")
    out = tmp_path / "out"
    script = Path(__file__).parent / "scripts" / "multinode_audit.py"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "shards" / "*.tar"), str(tr), CLASSIFIER,
                           str(out)], capture_output=True, text=True, timeout=600, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    rep = json.loads(lines[-1][len("RESULT "):])
    print(rep)
    assert rep["nodes"] == 2
    assert rep["clean_rc"] == 0 and rep["clean_images"] == 24, rep
    assert rep["node_was_killed"], rep
    # the first attempt ended by itself (finished, failed, or --stall-timeout), never hung
    assert not rep["first_attempt"].startswith("stalled, killed"), rep
    assert rep["rerun_rc"] == 0 and rep["rerun_images"] == 24, rep
    assert rep["rerun_skipped"] == rep["written_before_rerun"], rep  # finished shards are not redone
    for run in ("two-nodes", "node-killed"):
        df = pl.read_parquet(str(out / "images" / "*" / f"run={run}" / "*.parquet"))
        assert df.height == df.select("shard", "key").n_unique() == 24, run
