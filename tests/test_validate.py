"""`sing validate`: null removal leaves the logits alone, random and principal perturbations of
the same norm do not (paper supp. Figs. 9, 13). In process, no Ray."""
from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
from PIL import Image

from pipelines.cli import main as sing
from tests.pipeline_data import CLASSIFIER, photo_folder


def test_drifts_on_the_synthetic_world():
    from sing_ops.synthetic import make_world

    from pipelines.jobs.validate import perturbation_drifts

    world = make_world(leak=1.0)
    f = world.features[::20]
    d = perturbation_drifts(f, world.weight, world.decomposition, world.bias, seed=1)
    assert d["null"].max() < 1e-12 * d["logit_scale"].max()
    assert d["random"].min() > 1e6 * d["null"].max()
    assert d["principal"].min() > 1e6 * d["null"].max()
    # every perturbation has the norm of the image's own null part
    assert np.allclose(d["norm"], np.linalg.norm(world.decomposition.null_part(f).numpy(), axis=1))
    # principal directions are what the head reads: they move logits more than random ones on average
    assert np.median(d["principal"]) > np.median(d["random"])


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from pipelines.jobs.make_shards import make_shards

    root = tmp_path_factory.mktemp("validate")
    make_shards(str(photo_folder(root / "photos", per_class=4)), str(root / "shards"), per_shard=5)
    return root / "shards"


def test_validate_cli_table_histogram_and_summary(shards, tmp_path, capsys):
    out = tmp_path / "val"
    assert sing(["-q", "validate", "--model", CLASSIFIER, "--shards", str(shards / "*.tar"), "--n", "10",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "median ratio random/null" in printed and "every random/principal drift > every null drift: True" in printed
    stem = out / "validate-timm-test_resnet-random-num_classes-10"
    with Image.open(f"{stem}.png") as im:
        im.verify()
    t = pl.read_parquet(f"{stem}.parquet")
    assert pl.read_csv(f"{stem}.csv").height == t.height == 30
    assert t.group_by("kind").len().sort("kind").to_dicts() == [
        {"kind": k, "len": 10} for k in ("null", "principal", "random")]
    assert t.filter(pl.col("kind") == "null")["key"].n_unique() == 10
    assert t["shard"].n_unique() == 3  # the sample is spread over the shards
    med = {k: t.filter(pl.col("kind") == k)["logit_drift"].median() for k in ("null", "random", "principal")}
    assert med["null"] < 1e-10
    assert med["random"] > 1e6 * med["null"] and med["principal"] > 1e6 * med["null"]
    assert t.filter(pl.col("kind") == "null")["logit_drift"].max() < t.filter(
        pl.col("kind") != "null")["logit_drift"].min()
    rep = json.loads((out / f"{stem.name}.json").read_text())
    assert rep["null_dim"] == 86 and rep["n_images"] == 10 and rep["summary"]["separated"] is True


@pytest.mark.parametrize("model,n,message", [
    ("timm:test_resnet@random", "4", "has no null space"),  # 1000 classes > 96 features
    (CLASSIFIER, "0", "--n must be >= 1"),
])
def test_bad_input_exits_2(shards, model, n, message, tmp_path, capsys):
    assert sing(["validate", "--model", model, "--shards", str(shards / "*.tar"), "--n", n,
                 "--out", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_missing_shards_exit_2(tmp_path, capsys):
    assert sing(["validate", "--model", CLASSIFIER, "--shards", str(tmp_path / "none-*.tar"),
                 "--out", str(tmp_path / "o")]) == 2
    assert "no shard matched" in capsys.readouterr().err
