"""One decode pass feeding several classifier actors gives exactly what separate runs give."""
from __future__ import annotations

import json

import polars as pl
import pytest
import torch

from pipelines.cli import main as sing
from pipelines.models.translator_file import save_translator
from tests.pipeline_data import photo_folder

pytestmark = pytest.mark.slow
MODELS = ["timm:test_resnet@random?num_classes=10", "timm:test_vit@random?num_classes=10"]  # two decode views


def random_translator(model: str, path, clip="openclip:tiny@random"):
    """A translator with the right dims and metadata; its values do not matter here."""
    from sing_ops import Translator

    from pipelines.models.clip import load_clip
    from pipelines.models.classifiers import load_classifier

    clf, d = load_classifier(model), load_clip(clip).embed_dim
    g = torch.Generator().manual_seed(len(model))
    return save_translator(Translator(torch.randn(d, clf.num_features, generator=g), torch.randn(d, generator=g),
                                      {"source_model": clf.model_id, "clip_model": clip}), path)


def test_multi_model_audit_equals_separate_runs(tmp_path, ray_session):
    from pipelines.jobs.make_shards import make_shards

    make_shards(str(photo_folder(tmp_path / "photos", per_class=4)), str(tmp_path / "shards"), per_shard=5)
    trs = [str(random_translator(m, tmp_path / f"t{i}.safetensors")) for i, m in enumerate(MODELS)]
    shards = str(tmp_path / "shards" / "*.tar")
    assert sing(["-q", "audit", "--model", MODELS[0], "--model", MODELS[1], "--translator", trs[0],
                 "--translator", trs[1], "--shards", shards, "--out", str(tmp_path / "joint"), "--run-id", "j"]) == 0
    for m, t in zip(MODELS, trs):
        assert sing(["-q", "audit", "--model", m, "--translator", t, "--shards", shards,
                     "--out", str(tmp_path / "alone"), "--run-id", "a"]) == 0
    cols = ["model", "key", "shard", "label", "pred", "as_deg", "is_deg", "pred_as_deg", "logit_drift",
            "null_norm_frac", "null_dim"]
    read = lambda d: pl.read_parquet(str(tmp_path / d / "images" / "**" / "*.parquet"),  # noqa: E731
                                     hive_partitioning=True).select(cols).sort("model", "shard", "key")
    joint, alone = read("joint"), read("alone")
    assert joint.height == alone.height == 2 * 12
    assert joint["model"].n_unique() == 2
    assert joint.select("model", "key", "shard", "pred", "null_dim").equals(
        alone.select("model", "key", "shard", "pred", "null_dim"))
    for c in ("as_deg", "is_deg", "pred_as_deg", "null_norm_frac"):  # to the bit: batches fixed by position
        assert joint[c].to_list() == alone[c].to_list(), c
    # throughput counts each decoded sample once, however many models scored it
    man = json.loads((tmp_path / "joint" / "runs" / "j.json").read_text())
    assert man["images_per_second"] * man["wall_seconds"] == pytest.approx(12, rel=1e-2)

    # device-decode mode with every JPEG decoded by the read tasks: each model gets the view of
    # its own eval transform (one u8 column per view), so scores equal the host run's
    assert sing(["-q", "audit", "--model", MODELS[0], "--model", MODELS[1], "--translator", trs[0],
                 "--translator", trs[1], "--shards", shards, "--out", str(tmp_path / "dev"), "--run-id", "d",
                 "--decode", "device", "--host-decode-share", "1"]) == 0
    dev = read("dev")
    assert dev.select("model", "key", "shard", "pred").equals(joint.select("model", "key", "shard", "pred"))
    for c in ("as_deg", "is_deg", "null_norm_frac"):
        assert (dev[c] - joint[c]).abs().max() < 1e-4, c


def test_device_decode_is_shared_by_models_of_one_view(tmp_path, ray_session):
    """--decode device, two checkpoints of one architecture: the first model's actor decodes
    each JPEG and hands the views on, and each model still gets exactly what it gets alone,
    including rows the first model cannot score (label outside its head) and a JPEG that
    only fails when decoded (the error is reported for both models)."""
    from pipelines.jobs.audit import decode_modes
    from pipelines.jobs.make_shards import make_shards

    assert decode_modes(["a", "a", "b", "a"], "device") == [("device", True), ("shared", False), ("device", False),
                                                            ("shared", False)]
    assert decode_modes(["a", "a"], "host") == [("host", False)] * 2
    photos = photo_folder(tmp_path / "photos", per_class=3)
    good = (photos / "n01440764" / "n01440764_0.jpg").read_bytes()
    broken = bytearray(good)
    broken[len(good) // 3: len(good) // 3 + 400] = b"\xff" * 400  # header and end marker intact
    (photos / "n01440764" / "n01440764_broken.jpg").write_bytes(bytes(broken))
    make_shards(str(photos), str(tmp_path / "shards"), per_shard=4)
    models = ["timm:test_resnet@random?num_classes=2", "timm:test_resnet@random?num_classes=10"]  # one view
    trs = [str(random_translator(m, tmp_path / f"t{i}.safetensors")) for i, m in enumerate(models)]
    shards = str(tmp_path / "shards" / "*.tar")
    common = ["--shards", shards, "--decode", "device", "--batch-size", "4"]
    assert sing(["-q", "audit", "--model", models[0], "--model", models[1], "--translator", trs[0],
                 "--translator", trs[1], "--out", str(tmp_path / "joint"), "--run-id", "j", *common]) == 0
    for m, t in zip(models, trs):
        assert sing(["-q", "audit", "--model", m, "--translator", t, "--out", str(tmp_path / "alone"),
                     "--run-id", "a", *common]) == 0

    def read(d, table):
        return pl.read_parquet(str(tmp_path / d / table / "**" / "*.parquet"), hive_partitioning=True)

    cols = ["model", "shard", "key", "pred", "as_deg", "is_deg", "null_norm_frac"]
    joint, alone = (read(d, "images").select(cols).sort("model", "shard", "key") for d in ("joint", "alone"))
    assert joint.height == alone.height == 9 + 6  # 10 classes: all 9 photos; 2 classes: labels 0 and 1
    assert joint.select("model", "shard", "key", "pred").equals(alone.select("model", "shard", "key", "pred"))
    for c in ("as_deg", "is_deg", "null_norm_frac"):
        assert (joint[c] - alone[c]).abs().max() < 1e-4, c
    errs = {d: sorted(read(d, "errors").select("model", "key", "stage").iter_rows()) for d in ("joint", "alone")}
    assert errs["joint"] == errs["alone"]
    broken_rows = [e for e in errs["joint"] if e[1].endswith("broken")]
    assert len(broken_rows) == 2 and {e[2] for e in broken_rows} == {"decode"}  # one per model
    man = json.loads((tmp_path / "joint" / "runs" / "j.json").read_text())
    assert [m["decode"] for m in man["models"]] == ["device", "shared"]  # decoded once, for both
    assert man["stage_seconds"]["device_decode"] > 0
