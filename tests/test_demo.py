"""`sing demo --offline`, the README's "run the main job" command, end to end as a newcomer runs
it: a fresh process (its own Ray), real photos into shards, a translator fitted, an audit with
concepts, the summary table; a console with only the project's lines (no Ray progress stream,
no core_worker error, no Arrow pickling fallback), and the next commands, which work: `sing
explain` of the image the demo names, then `sing report`, whose gallery links to that sheet.
The classifier is the real EfficientNet-Lite0, so its predictions on the photos can be checked."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import polars as pl

import queries
import pytest

from pipelines.cli import main as sing

pytestmark = pytest.mark.slow

# the project's log lines (pipelines/cli.py's logging format) and its printed lines
PROJECT_LOG = re.compile(r"^\d\d:\d\d:\d\d sing\.[a-z_]+ (INFO|WARNING) ")
# Ray's warnings about the machine itself (a disk over 95 % full) are news to the user, not noise
MACHINE_WARNING = re.compile(r"\(raylet\).*file_system_monitor")


def _demo(out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    return subprocess.run([sys.executable, "-m", "pipelines.cli", "demo", "--out", str(out), "--offline",
                           "--images-per-photo", "4"], capture_output=True, text=True, timeout=900, env=env)


def test_demo_runs_end_to_end_offline(tmp_path, ray_session, capsys):
    out = tmp_path / "demo"
    proc = _demo(out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    printed = proc.stdout
    assert "OFFLINE" in printed and "MEANINGLESS" in printed  # says the CLIP is random
    # a quiet console: stderr holds the project's log lines and nothing else, one per shard
    noise = [ln for ln in proc.stderr.splitlines()
             if ln.strip() and not PROJECT_LOG.match(ln) and not MACHINE_WARNING.search(ln)]
    assert noise == [], "\n".join(noise[:20])
    for needle in ("logging_progress", "core_worker", "ArrowConversionError", "pickled", "Deprecat"):
        assert needle not in proc.stdout + proc.stderr
    (man_path,) = (out / "results" / "runs").glob("*.json")
    man = json.loads(man_path.read_text())
    assert man["status"] == "complete" and man["models"][0]["null_dim"] == 280  # 1280 -> 1000 head
    from pipelines.models.clip import load_clip

    clip = load_clip("openclip:tiny@random").identity  # the offline demo's CLIP, activation recorded
    assert man["models"][0]["translator"]["clip_identity"] == clip and clip["activation"] == "gelu"
    assert man["models"][0]["class_text"]["clip_identity"] == clip
    assert len(re.findall(r"sing\.collect INFO shard \S+ written", proc.stderr)) == man["shards"]["total"]
    assert sorted(man["shard_paths"]) == sorted(p.stem for p in (out / "shards").glob("*.tar"))
    images = pl.read_parquet(str(out / "results" / "images" / "**" / "*.parquet"), hive_partitioning=True)
    n = images.height
    assert n == man["counts"][man["models"][0]["slug"]]["images"] and n >= 6 * 4
    assert images["key"].n_unique() == n and images["as_deg"].is_not_null().all()
    assert images["logit_drift"].max() < 1e-2  # null removal leaves the logits alone
    # the real weights at work: augmented copies of the cat and the coffee are recognised
    top1 = dict(images.group_by("class_name").agg((pl.col("pred") == pl.col("label")).mean()).iter_rows())
    assert top1["Egyptian cat"] >= 0.75 and top1["espresso"] >= 0.75, top1
    concepts = queries.concept_rows(out / "results")
    assert concepts["key"].n_unique() == n and concepts["concept"].n_unique() > 10
    assert f"{n} images" in printed and "median_|AS|" in printed
    _next_steps(out, printed, images)
    # a second run reuses the photos, shards and translator, and resumes the finished audit
    assert sing(["demo", "--out", str(out), "--offline", "--images-per-photo", "4"]) == 0
    again = json.loads(man_path.read_text())
    assert again["shards"]["skipped_done"] == again["shards"]["total"]


def _next_steps(out: Path, printed: str, images: pl.DataFrame) -> None:
    """The demo's last lines name the next commands on its real paths; run them."""
    tail = printed.strip().splitlines()[-4:]
    assert tail[0] == "next, try:"
    cmds = [shlex.split(line.split("    #")[0]) for line in tail[1:]]
    assert [c[:2] for c in cmds] == [["sing", "query"], ["sing", "explain"], ["sing", "report"]]
    top = images.sort(["abs_as_deg", "key"], descending=[True, False]).row(0, named=True)
    assert cmds[1][2] == f"{out / 'shards' / top['shard']}.tar#{top['key']}"  # the image that hides the most
    for c in cmds:
        assert sing(c[1:]) == 0, c
    (gallery,) = (out / "report").glob("gallery_*.html")
    page = gallery.read_text()
    assert page.count("data:image/jpeg;base64,") >= 12 and "../explain/" in page
