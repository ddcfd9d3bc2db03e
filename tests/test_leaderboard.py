"""`sing leaderboard` end to end, offline: tiny random timm ImageNet architectures and the real
Lite0, a model whose weights cannot be had, one whose head is not one linear layer on a feature
vector, one with no null space; CLIP computed once for every model; each row equal to what a
separate fit-translator plus audit gives; a killed board resumes without redoing a model."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

import queries
from pipelines.cli import main as sing
from tests.pipeline_data import CLIP, photo_folder

pytestmark = pytest.mark.slow

SAME_VIEW = ["timm:mobilenetv3_small_050@random", "timm:lcnet_050@random", "timm:mobilenetv3_small_075@random"]
SKIPPED = {"timm:resnet50.a1_in1k": "weights not available",  # not in the offline hub cache
           "torchvision:squeezenet1_0@random": "no single linear head",  # a 1x1 conv before pooling
           "timm:test_efficientnet@random": "no null space"}  # 256 features, 1000 classes
MODELS = SAME_VIEW + ["lite0"] + list(SKIPPED)


@pytest.fixture(scope="module")
def shards(tmp_path_factory, ray_session):
    from pipelines.jobs.make_shards import make_shards

    root = tmp_path_factory.mktemp("board")
    make_shards(str(photo_folder(root / "fit_photos", per_class=8)), str(root / "fit"), per_shard=6)
    make_shards(str(photo_folder(root / "eval_photos", per_class=4, seed=1)), str(root / "eval"), per_shard=6)
    (root / "models.txt").write_text("# the board's models\n" + "\n".join(MODELS) + "\n")
    return root


def _args(root: Path, out: Path, models: str, *extra: str) -> list[str]:
    return ["-q", "leaderboard", "--models", models, "--clip", CLIP, "--fit-shards", str(root / "fit" / "*.tar"),
            "--eval-shards", str(root / "eval" / "*.tar"), "--out", str(out), "--models-per-pass", "3",
            "--batch-size", "8", "--bootstrap-resamples", "200", *extra]


@pytest.fixture(scope="module")
def board(shards):
    out = shards / "out"
    assert sing(_args(shards, out, str(shards / "models.txt"))) == 0
    return out, json.loads((out / "leaderboard.json").read_text())


def _rows(out: Path) -> pl.DataFrame:
    return pl.read_parquet(str(out / "results" / "leaderboard" / "**" / "*.parquet"), hive_partitioning=True)


def test_every_model_has_one_row_and_the_skipped_say_why(board):
    out, man = board
    rows = _rows(out)
    assert rows.height == len(MODELS) == rows["model_string"].n_unique()
    by = {r["model_string"]: r for r in rows.iter_rows(named=True)}
    for spec, why in SKIPPED.items():
        assert by[spec]["status"] == "skipped" and by[spec]["reason"].startswith(why), by[spec]
        assert by[spec]["median_abs_as"] is None
    for spec in SAME_VIEW + ["lite0"]:
        r = by[spec]
        assert r["status"] == "ok" and r["reason"] == "", r
        assert r["n_images"] == 12 and r["null_dim"] == (24 if "mobilenet" in spec else 280)
        assert r["ratio_of_means_lo"] <= r["ratio_of_means"] <= r["ratio_of_means_hi"]
        assert r["median_ratio_lo"] <= r["median_ratio"] <= r["median_ratio_hi"]
        assert len(r["top_concepts"]) == 5 and r["translator_id"] and -1 <= r["heldout_cosine"] <= 1
    assert man["counts"] == {"ok": 4, "skipped": 3, "failed": 0}


def test_clip_ran_once_per_fit_image_whatever_the_number_of_models(board, shards):
    from pipelines.io.shards import iter_shard

    out, man = board
    fit_images = sum(1 for p in (shards / "fit").glob("*.tar") for _ in iter_shard(str(p)))
    assert man["clip_forwards"] == man["fit_images"] == fit_images == 24
    for rep in (out / "translators").glob("*.report.json"):
        r = json.loads(rep.read_text())
        assert r["targets"] == {"source": "cache", "dir": str(out / "clip"), "clip_forwards": 0}
    assert len(json.loads(next((out / "translators").glob("*.report.json")).read_text())["models_in_pass"]) == 3


def test_a_row_equals_a_separate_fit_and_audit(board, shards, tmp_path):
    """The leaderboard's model (fitted with two others in one decode pass, audited with them)
    against `sing fit-translator` and `sing audit` of that model alone: the same translator id
    and the same image rows, to the bit."""
    out, _ = board
    spec = SAME_VIEW[1]
    tr = tmp_path / "t.safetensors"
    assert sing(["-q", "fit-translator", "--model", spec, "--clip-embeddings", str(out / "clip"), "--shards",
                 str(shards / "fit" / "*.tar"), "--out", str(tr), "--class-text",
                 str(out / "text" / "classes_single.parquet")]) == 0
    alone = json.loads(Path(f"{tr}.report.json").read_text())
    res = tmp_path / "res"
    assert sing(["-q", "audit", "--model", spec, "--translator", str(tr), "--shards", str(shards / "eval" / "*.tar"),
                 "--out", str(res), "--class-text", str(out / "text" / "classes_single.parquet"),
                 "--concepts", str(out / "text" / "concepts.parquet")]) == 0
    cols = ["key", "shard", "pred", "as_deg", "is_deg", "pred_as_deg", "logit_drift", "null_norm_frac"]
    slug = pl.read_parquet(str(res / "images" / "**" / "*.parquet"), hive_partitioning=True)["model"][0]
    mine = pl.read_parquet(str(res / "images" / "**" / "*.parquet"), hive_partitioning=True).select(cols)
    theirs = pl.read_parquet(str(out / "results" / "images" / f"model={slug}" / "**" / "*.parquet")).select(cols)
    assert mine.sort("shard", "key").equals(theirs.sort("shard", "key"))
    rows = pl.read_parquet(str(out / "results" / "leaderboard" / f"model={slug}" / "**" / "*.parquet"))
    assert rows["translator_id"][0] == alone["translator_id"]
    summary = queries.model_summary(res).row(0, named=True)
    assert rows["median_abs_as"][0] == summary["median_abs_as"] and rows["median_is"][0] == summary["median_is"]


def test_a_killed_board_on_an_object_store_resumes_without_redoing_a_model(shards, tmp_path):
    """OUT as an object-store URL (objstore://: whole objects, no rename; tests/objstore.py), as on
    a cluster whose actors write from every node; the driver SIGKILLed once the first model's
    row is written: the rerun computes only the other, every model has one row and every image
    one row per model, and CLIP embedded nothing again."""
    store = tmp_path / "store"
    models = tmp_path / "two.txt"
    models.write_text("\n".join(["lite0", SAME_VIEW[0]]) + "\n")
    args = _args(shards, Path("-"), str(models), "--models-per-pass", "1")
    args[args.index("--out") + 1] = f"objstore://{store}/board"
    repo = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join([str(repo / "tests" / "objstore_site"), str(repo)])
    kill = [sys.executable, str(Path(__file__).parent / "scripts" / "kill_after_row.py"), "1"]
    killed = subprocess.run(kill + args, env=env, capture_output=True, text=True, timeout=900)
    assert killed.returncode == -9, killed.stderr[-2000:]
    out = store / "board"
    first = {p.parent.parent.name for p in (out / "results" / "leaderboard").glob("*/*/summary.parquet")}
    assert len(first) == 1
    again = subprocess.run([sys.executable, "-m", "pipelines.cli", *args], env=env, capture_output=True, text=True,
                           timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    man = json.loads((out / "leaderboard.json").read_text())
    assert {f"model={s}" for s in man["done_before"]} == first and len(man["computed"]) == 1
    rows = _rows(out)
    assert rows.height == 2 and (rows["status"] == "ok").all()
    images = pl.read_parquet(str(out / "results" / "images" / "**" / "*.parquet"), hive_partitioning=True)
    assert images.height == images.select("model", "shard", "key").n_unique() == 2 * 12
    assert man["clip_forwards"] == 24  # the rerun embedded nothing again
    assert not [p for p in store.rglob(".upload-*")] and not [p for p in store.rglob("*.tmp")]
