"""A cluster that shrinks or is too small, on a real multi-node Ray cluster whose head has a
CPU (tests/scripts/shrinking_cluster.py, one cluster per scenario): no run waits forever.
A pool larger than the cluster shrinks and the run finishes; losing the only worker ends
the run after --resource-wait with exit 1, saying what is missing, and the same command
then resumes; a worker that comes back within the wait lets the run finish, every shard
written once; a GPU plan on a CPU-only cluster stays an input error (exit 2)."""
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
N_IMAGES, N_SHARDS = 48, 12


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from pipelines.jobs.make_shards import make_shards

    root = tmp_path_factory.mktemp("shrinking")
    make_shards(str(photo_folder(root / "photos", per_class=N_IMAGES // 3)), str(root / "shards"),
                per_shard=N_IMAGES // N_SHARDS)
    return root, str(root / "shards" / "*.tar"), str(random_translator(CLASSIFIER, root / "t.safetensors"))


def _scenario(data, name: str, tmp_path: Path) -> tuple[Path, dict]:
    root, shards, tr = data
    script = Path(__file__).parent / "scripts" / "shrinking_cluster.py"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.run([sys.executable, str(script), name, str(tmp_path), shards, tr, CLASSIFIER],
                          capture_output=True, text=True, timeout=300, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    return tmp_path / "out", json.loads(lines[-1][len("RESULT "):])


def _keys(out: Path, run: str) -> pl.DataFrame:
    return pl.read_parquet(str(out / "images" / "*" / f"run={run}" / "*.parquet")).select("shard", "key")


def _manifest(out: Path, run: str) -> dict:
    return json.loads((out / "runs" / f"{run}.json").read_text())


def test_a_pool_larger_than_the_cluster_shrinks(data, tmp_path):
    out, rep = _scenario(data, "larger", tmp_path)
    assert rep["rc"] == 0, rep["log"]
    assert "room for 1 of the 2 model actors per model" in rep["log"], rep["log"]
    keys = _keys(out, "shrink-larger")
    assert keys.height == keys.n_unique() == N_IMAGES
    (attempt,) = _manifest(out, "shrink-larger")["attempts"]
    assert attempt["status"] == "complete" and attempt["resources"] == {"actors_planned": 2, "actors_placed": 1}


def test_losing_the_only_worker_ends_the_run_saying_what_is_missing(data, tmp_path):
    out, rep = _scenario(data, "lost", tmp_path)
    log = rep["log"]
    assert rep["killed_while_running"] and rep["rc"] == 1, log
    assert "needs 0.5 CPU for the model actors and 1 for a read task, the cluster has 1" in log, log
    assert "--resource-wait" in log and "rerun the same command to resume" in log, log
    man = rep["manifest"]  # as the failed run left it
    assert man["status"] != "complete" and man["attempts"][-1]["status"] == "failed"
    assert man["attempts"][-1]["trigger"].startswith("Unplaceable"), man["attempts"]
    written = sum(a["shards_written"] for a in man["attempts"])
    assert 1 <= written < N_SHARDS
    # the same command on a cluster with a worker again: the rest, nothing twice
    assert rep["rerun"]["rc"] == 0, rep["rerun"]["log"]
    keys = _keys(out, "shrink-lost")
    assert keys.height == keys.n_unique() == N_IMAGES
    assert _manifest(out, "shrink-lost")["shards"]["skipped_done"] == written


def test_a_worker_back_within_the_wait_lets_the_run_finish(data, tmp_path):
    out, rep = _scenario(data, "back", tmp_path)
    assert rep["killed_while_running"] and rep["rc"] == 0, rep["log"]
    assert "waiting up to" in rep["log"], rep["log"]
    keys = _keys(out, "shrink-back")
    assert keys.height == keys.n_unique() == N_IMAGES
    attempts = _manifest(out, "shrink-back")["attempts"]
    assert [a["status"] for a in attempts][-1] == "complete" and attempts[0]["status"] == "restarted"
    assert attempts[-1]["resources"]["waited_s"] >= 1, attempts
    assert sum(a["shards_written"] for a in attempts) == N_SHARDS  # no shard written twice


def test_a_gpu_plan_on_a_cpu_cluster_is_an_input_error(data, tmp_path):
    out, rep = _scenario(data, "cuda", tmp_path)
    assert rep["rc"] == 2 and "--device cuda but the Ray cluster has no GPUs" in rep["log"], rep["log"]
