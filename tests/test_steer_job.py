"""Null-space steering: the known answer on the planted-leakage world (sing_ops level), and
`sing steer` end to end on tiny models (one Ray run), resume, the summary query, bad input."""
from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch

from pipelines.cli import main as sing
from pipelines.models.translator_file import load_translator
from tests.pipeline_data import CLASSIFIER, CLIP, photo_folder
from tests.test_multimodel import random_translator

PROMPT = "an image of a jellyfish"


# ----------------------------------------------------------------------------- sing_ops level


@pytest.mark.parametrize("target_is", [10.0, 40.0])
def test_leaky_head_hides_more_of_another_class_at_the_same_image_score(target_is):
    """Table 1 on the synthetic world: steering class-0 images toward another class's text
    through the null space moves T(f) much further toward it when the null space carries
    class codes (leak=2) than when it holds only nuisance (leak=0), at the same IS."""
    from sing_ops import logit_drift, steer
    from sing_ops.synthetic import make_world

    mean_abs = {}
    for leak in (0.0, 2.0):
        world = make_world(leak=leak)
        tr, dec = world.translator(), world.decomposition
        f = world.features[world.labels == 0]
        for target in (1, 3):
            res = steer(f, dec, tr, world.class_text[target], is_deg=target_is)
            assert res.reachable.all()
            assert (res.is_deg - target_is).abs().max() < 1e-6  # same IS for both heads
            assert logit_drift(world.weight, f, res.f_steered).max() < 1e-9
            assert (res.as_deg > 0).all()  # moved toward the target
            mean_abs[leak, target] = res.as_deg.abs().mean().item()
    for target in (1, 3):
        assert mean_abs[2.0, target] > 3 * mean_abs[0.0, target], mean_abs


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def setup(tmp_path_factory, ray_session):
    from pipelines.jobs.make_shards import make_shards

    root = tmp_path_factory.mktemp("steer")
    make_shards(str(photo_folder(root / "photos", per_class=4)), str(root / "shards"), per_shard=5)
    tr = random_translator(CLASSIFIER, root / "tr.safetensors")
    return root, tr


@pytest.fixture(scope="module")
def steered(setup):
    root, tr = setup
    out = root / "out"
    rc = sing(["-q", "steer", "--model", CLASSIFIER, "--translator", str(tr),
               "--shards", str(root / "shards" / "*.tar"),
               "--class", "1", "--prompt", PROMPT, "--is-deg", "40", "--out", str(out), "--run-id", "s1"])
    assert rc == 0
    return out


def _steer_rows(out):
    return pl.read_parquet(str(out / "steer" / "**" / "*.parquet"), hive_partitioning=True)


def test_one_row_per_image_of_the_class_with_calibrated_is_and_no_logit_drift(setup, steered):
    from pipelines.jobs.steer import STEER_SCHEMA

    rows = _steer_rows(steered)
    # photo_folder: 4 images per class, class 1 = the goldfish synset
    assert rows.height == 4 and rows["key"].n_unique() == 4
    assert rows["label"].unique().to_list() == [1]
    assert rows["target"].unique().to_list() == [PROMPT]
    assert rows["model"].unique().to_list() == ["timm-test_resnet-random-num_classes-10"]
    assert rows.columns[:len(STEER_SCHEMA)] == STEER_SCHEMA.names
    reach = rows.filter(pl.col("reachable"))
    assert reach.height >= 1
    assert (reach["is_deg"] - 40.0).abs().max() < 1e-3
    assert (reach["abs_as_deg"] - reach["as_deg"].abs()).abs().max() < 1e-6
    assert (reach["eps"] > 0).all()
    assert rows["logit_drift"].max() < 1e-6  # logits unchanged
    unreached = rows.filter(~pl.col("reachable"))
    assert unreached["is_deg"].null_count() == unreached.height  # unreachable: NULL, never a fake number
    man = json.loads((steered / "runs" / "s1.json").read_text())
    assert man["kind"] == "steer" and man["status"] == "complete"
    assert man["counts"]["images"] == 4 and man["counts"]["errors"] == 0
    assert man["target"] == {"prompt": PROMPT, "class_index": 1, "class_name": "class_1", "is_deg": 40.0,
                             "eps": None, "templates": "raw prompt (no template)"}
    assert man["models"][0]["null_dim"] == 86 and man["translator"]["clip_model"] == CLIP
    from pipelines.models.clip import load_clip

    clip = load_clip(CLIP).identity  # the translator's CLIP and the one that embedded the prompt
    # this translator names its CLIP only (written as before identities): derived from the name
    recorded = dict(man["translator"]["clip_identity"])
    assert recorded.pop("derived_from_name") is True
    assert recorded == man["target_text"]["clip_identity"] == clip
    assert clip["activation"] == "gelu"


def test_rows_match_an_in_process_float64_recomputation(setup, steered):
    from sing_ops import HeadDecomposition, steer

    from pipelines.models.clip import load_clip
    from pipelines.io.images import decode_image, normalise, to_uint8_view
    from pipelines.models.classifiers import load_classifier
    from pipelines.io.shards import iter_shard
    from pipelines.models.text import embed_texts

    root, tr_path = setup
    clf, tr = load_classifier(CLASSIFIER), load_translator(tr_path).to(dtype=torch.float64)
    text = torch.from_numpy(embed_texts(load_clip(CLIP), [PROMPT], ["{}"])[0]).double()
    keys, u8 = [], []
    for shard in sorted((root / "shards").glob("*.tar")):
        for s in iter_shard(str(shard)):
            if s.label == 1:
                keys.append(s.key)
                u8.append(to_uint8_view(decode_image(s.image), clf.preprocess))
    with torch.inference_mode():
        f = clf.features_and_logits(normalise(torch.from_numpy(np.stack(u8)), clf.preprocess))[0].double()
    res = steer(f, HeadDecomposition.from_weight(clf.head_weight), tr, text, is_deg=40.0)
    rows = _steer_rows(steered)
    for i, key in enumerate(keys):
        r = rows.filter(pl.col("key") == key).row(0, named=True)
        assert r["reachable"] == bool(res.reachable[i])
        if r["reachable"]:
            assert r["as_deg"] == pytest.approx(res.as_deg[i].item(), abs=1e-3)
            assert r["eps"] == pytest.approx(res.eps[i].item(), rel=1e-4)


def test_rerun_resumes_without_work_and_summary_query_reads_the_table(setup, steered, capsys):
    from queries import steer_summary

    root, tr = setup
    rc = sing(["-q", "steer", "--model", CLASSIFIER, "--translator", str(tr),
               "--shards", str(root / "shards" / "*.tar"),
               "--class", "class_1", "--prompt", PROMPT, "--is-deg", "40", "--out", str(steered), "--run-id", "s1"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "4 images" in printed and "mean_abs_as" in printed
    man = json.loads((steered / "runs" / "s1.json").read_text())
    assert man["shards"]["todo"] == 0 and man["shards"]["skipped_done"] == 3
    assert _steer_rows(steered).height == 4  # nothing duplicated
    s = steer_summary(steered, run="s1")
    assert s.height == 1
    row = s.row(0, named=True)
    assert row["n"] == 4 and row["target"] == PROMPT
    assert row["mean_is"] == pytest.approx(40.0, abs=1e-3) and row["max_abs_logit_drift"] < 1e-6
    rows = _steer_rows(steered).filter(pl.col("reachable"))
    assert row["n_reachable"] == rows.height
    assert row["mean_abs_as"] == pytest.approx(rows["abs_as_deg"].mean(), abs=1e-4)


def test_reader_keeps_only_the_class_and_actor_steers_by_a_fixed_eps(setup, tmp_path):
    """In process, no Ray: the class-filtered reader, the actor in --eps mode writing the shard
    itself (one record at the shard's end row)."""
    import functools

    import pyarrow.parquet as pq

    from pipelines.models.classifiers import load_classifier
    from pipelines.stages.read import read_decode
    from pipelines.jobs.steer import steer_files
    from pipelines.stages.shard_writer import WriterSpec
    from pipelines.stages.steer_actor import SteerActor

    root, tr = setup
    clf = load_classifier(CLASSIFIER)
    # 12 images sorted by class, 5 per shard: shard-000001 holds 3 of class 1 and 2 of class 2
    batches = list(read_decode({"path": np.array([str(root / "shards" / "shard-000001.tar")])},
                               [clf.preprocess], chunk_size=2, only_label=1))
    assert sum((b["status"] == "ok").sum() for b in batches) == 3
    assert all((b["label"][b["status"] == "ok"] == 1).all() for b in batches)
    out = str(tmp_path / "out")
    writer = WriterSpec(functools.partial(steer_files, out=out, slug="m", run_id="r", target="a target"))
    actor = SteerActor("s", CLASSIFIER, str(tr), np.random.default_rng(0).standard_normal(32), 1, eps=0.5,
                       view=clf.preprocess, writer=writer, final=True)
    records = [actor(b) for b in batches]
    assert [len(r["shard"]) for r in records] == [0] * (len(batches) - 1) + [1]  # the end row only
    rec = records[-1]
    assert rec["shard"][0] == "shard-000001" and rec["s/rows"][0] == 3 and rec["s/images"][0] == 3
    assert rec["s/write_error"][0] == ""
    rows = pq.read_table(tmp_path / "out" / "steer" / "model=m" / "run=r" / "shard-000001.parquet").to_pylist()
    assert len(rows) == 3
    assert all(r["eps"] == 0.5 and r["reachable"] and 0 < r["is_deg"] < 180 for r in rows)
    assert max(r["logit_drift"] for r in rows) < 1e-9
    assert all(r["abs_as_deg"] == abs(r["as_deg"]) for r in rows)


# ----------------------------------------------------------------------------- class names


def test_resolve_class_names_aliases_indices_and_suggestions():
    from pipelines.models.class_names import imagenet_aliases, resolve_class
    from pipelines.models.imagenet_classes import imagenet_class_names

    names = imagenet_class_names()
    assert resolve_class("sports car", names) == 817
    assert resolve_class("Sports Car", names) == 817
    assert resolve_class("sport car", names) == 817  # alias
    assert resolve_class("Carassius auratus", names) == 1
    assert resolve_class("107", names) == 107
    with pytest.raises(ValueError, match="ambiguous.*134.*517"):
        resolve_class("crane", names)
    with pytest.raises(ValueError, match="Did you mean.*'jellyfish' \\(107\\)"):
        resolve_class("jellyfsh", names)
    with pytest.raises(ValueError, match="outside the head's 1000 classes"):
        resolve_class("1000", names)
    assert resolve_class("class_3", [f"class_{i}" for i in range(10)]) == 3
    al = imagenet_aliases()
    assert len(al) == 1000 and [al[i][0] for i in range(1000)] == list(names)
    assert al[2][1][:2] == ["white shark", "man-eater"]


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("extra,message", [
    (["--is-deg", "40", "--eps", "0.5"], "exactly one of --is-deg"),
    ([], "exactly one of --is-deg"),
    (["--is-deg", "0"], "strictly between 0 and 180"),
    (["--is-deg", "180"], "strictly between 0 and 180"),
    (["--is-deg", "-5"], "strictly between 0 and 180"),
    (["--eps", "0"], "positive finite step"),
])
def test_bad_step_exits_2_before_any_work(setup, extra, message, capsys, tmp_path):
    root, tr = setup
    rc = sing(["steer", "--model", CLASSIFIER, "--translator", str(tr), "--shards", str(root / "shards" / "*.tar"),
               "--class", "1", "--prompt", PROMPT, "--out", str(tmp_path / "o"), *extra])
    assert rc == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("model,cls,message", [
    (CLASSIFIER, "class_l", "unknown class 'class_l'"),  # close match suggested
    (CLASSIFIER, "12", "outside the head's 10 classes"),
    ("timm:test_resnet@random", "1", "has no null space"),  # 1000 classes > 96 features
    ("timm:test_resnet@random?num_classes=5", "1", "was fitted for source model"),
])
def test_bad_class_model_or_translator_exits_2(setup, model, cls, message, capsys, tmp_path):
    root, tr = setup
    rc = sing(["steer", "--model", model, "--translator", str(tr), "--shards", str(root / "shards" / "*.tar"),
               "--class", cls, "--prompt", PROMPT, "--is-deg", "40", "--out", str(tmp_path / "o")])
    assert rc == 2
    err = capsys.readouterr().err
    assert message in err
    if cls == "class_l":
        assert "Did you mean: 'class_" in err
    assert not (tmp_path / "o").exists()
