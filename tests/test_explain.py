"""`sing explain` (single images, in process) and `sing index` (retrieval, one Ray run):
known-answer concept rankings on constructed heads, the CLI's JSON and contact sheets,
retrieval against brute force, and bad input."""
from __future__ import annotations

import base64
import io
import json
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.cli import main as sing
from pipelines.models.translator_file import load_translator
from tests.pipeline_data import CLASSIFIER, CLIP, photo_folder
from tests.test_multimodel import random_translator


# ----------------------------------------------------------------------------- the core


def _planted(rotate: bool):
    """m = d = 6, two classes. W reads e0, e1 only (null space: e2..e5), T = identity, f = e0 + e2;
    or the same in a randomly rotated feature frame (f' = R f, W' = W R^T, T'(x) = R^T x).
    Removing the null part (e2) takes T(f) from 45 deg off e0 and e2 to exactly onto e0 and
    perpendicular to e2: 'object' moves +45 deg toward, 'hidden' -45 deg away; e1, e3 do not move."""
    from sing_ops import HeadDecomposition, Translator

    eye = torch.eye(6, dtype=torch.float64)
    r = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64))[0] \
        if rotate else eye
    w = eye[:2] @ r.T  # rows: (R e0)^T, (R e1)^T
    tr = Translator(r.T.clone(), torch.zeros(6, dtype=torch.float64))  # T(R x) = x
    f = ((eye[0] + eye[2]) @ r.T)[None]  # R (e0 + e2)
    names = ["object", "other class", "hidden", "bystander", "half hidden"]
    concepts = torch.stack([eye[0], eye[1], eye[2], eye[3], eye[0] + eye[2] + eye[3]])
    class_text = torch.stack([eye[0], eye[1]])
    return f, w, HeadDecomposition.from_weight(w), tr, class_text, concepts, names


@pytest.mark.parametrize("rotate", [False, True])
def test_concept_ranking_recovers_the_planted_concepts(rotate):
    from pipelines.jobs.explain import explain_features

    f, w, dec, tr, class_text, concepts, names = _planted(rotate)
    (e,) = explain_features(f, w, dec, tr, class_text, concepts, names, labels=[0], class_names=["obj", "oth"])
    assert e.null_dim == 4 and e.pred == 0 and e.pred_name == "obj" and e.class_name == "obj"
    assert e.logit_drift < 1e-12
    assert e.is_deg == pytest.approx(45.0, abs=1e-9)
    assert e.as_deg == pytest.approx(45.0, abs=1e-9) and e.pred_as_deg == pytest.approx(45.0, abs=1e-9)
    assert [c["concept"] for c in e.toward] == ["object"]  # only concepts that really moved toward
    assert e.toward[0]["as_deg"] == pytest.approx(45.0, abs=1e-9)
    assert e.toward[0]["angle_after_deg"] == pytest.approx(0.0, abs=1e-6)
    assert [c["concept"] for c in e.away] == ["hidden", "half hidden"]  # most negative first
    assert e.away[0]["as_deg"] == pytest.approx(-45.0, abs=1e-9)
    assert "carries (removing it moves away from): hidden, half hidden" in e.description
    assert "suppresses (removing it moves toward): object" in e.description
    d = e.to_dict()
    assert json.loads(json.dumps(d))["away"][0]["concept"] == "hidden"
    # unknown label: only the predicted-class AS
    (u,) = explain_features(f, w, dec, tr, class_text, concepts, names)
    assert u.as_deg is None and u.label is None and u.pred_as_deg == pytest.approx(45.0, abs=1e-9)


def test_leaky_world_names_the_true_class_as_the_hidden_concept():
    """With class codes planted in the null space (leak=2), removing the null part moves T(f)
    away from the image's own class text: with class prompts as the vocabulary, the true class
    is the top 'away' concept for every image; without leakage it never is."""
    from sing_ops.synthetic import make_world

    from pipelines.jobs.explain import explain_features

    names = [f"class {i}" for i in range(8)]
    top_away = {}
    for leak in (0.0, 2.0):
        world = make_world(leak=leak)
        idx = slice(None, None, 50)
        exps = explain_features(world.features[idx], world.weight, world.decomposition, world.translator(),
                                world.class_text, world.class_text, names, world.labels[idx].tolist(), names,
                                bias=world.bias, top=3)
        assert max(e.logit_drift for e in exps) < 1e-9
        top_away[leak] = np.mean([bool(e.away) and e.away[0]["concept"] == f"class {e.label}" for e in exps])
    assert top_away[2.0] == 1.0 and top_away[0.0] < 0.2


def test_no_null_space_reports_undefined_scores():
    from sing_ops import HeadDecomposition, Translator

    from pipelines.jobs.explain import explain_features

    g = torch.Generator().manual_seed(0)
    w = torch.randn(12, 6, generator=g, dtype=torch.float64)  # more classes than features
    tr = Translator(torch.randn(4, 6, generator=g, dtype=torch.float64), torch.zeros(4, dtype=torch.float64))
    (e,) = explain_features(torch.randn(1, 6, generator=g), w, HeadDecomposition.from_weight(w), tr,
                            torch.randn(12, 4, generator=g), torch.randn(3, 4, generator=g), ["a", "b", "c"], [2])
    assert e.null_dim == 0 and e.is_deg is None and e.as_deg is None and e.pred_as_deg is None
    assert e.toward == e.away == [] and "no null space" in e.description and e.logit_drift == 0.0


# ----------------------------------------------------------------------------- index + CLI


@pytest.fixture(scope="module")
def setup(tmp_path_factory, ray_session):
    from pipelines.jobs.make_shards import make_shards

    root = tmp_path_factory.mktemp("explain")
    make_shards(str(photo_folder(root / "photos", per_class=4)), str(root / "shards"), per_shard=5)
    tr = random_translator(CLASSIFIER, root / "tr.safetensors")
    rc = sing(["-q", "index", "--clip", CLIP, "--shards", str(root / "shards" / "*.tar"), "--out", str(root / "idx"),
               "--thumb-size", "48"])
    assert rc == 0
    return root, tr


def test_index_holds_clip_embeddings_and_thumbnails_of_every_image(setup):
    import pyarrow.parquet as pq

    from pipelines.models.clip import load_clip
    from pipelines.io.images import decode_image, normalise, to_uint8_view
    from pipelines.jobs.index import ImageIndex, part_file
    from pipelines.io.shards import iter_shard

    root, _ = setup
    idx = ImageIndex.open(root / "idx")
    assert len(idx) == 12 and idx.clip_model == CLIP and idx.meta["status"] == "complete"
    assert idx.meta["images"] == 12 and idx.meta["dtype"] == "float16"
    clip = load_clip(CLIP)
    samples = list(iter_shard(str(root / "shards" / "shard-000001.tar")))
    with torch.inference_mode():
        z = clip.encode_image(normalise(torch.from_numpy(np.stack(
            [to_uint8_view(decode_image(s.image), clip.preprocess) for s in samples])), clip.preprocess)).numpy()
    t = pq.read_table(part_file(root / "idx", "shard-000001"))
    assert t.column("key").to_pylist() == [s.key for s in samples]
    assert t.column("label").to_pylist() == [s.label for s in samples]
    emb = np.asarray(t.column("emb").combine_chunks().flatten().to_numpy(zero_copy_only=False), np.float32)
    emb = emb.reshape(len(samples), -1)
    assert np.abs(emb - z).max() < 2e-3 * np.abs(z).max()  # float16 storage
    thumb = Image.open(io.BytesIO(t.column("thumb")[0].as_py()))
    assert thumb.format == "JPEG" and thumb.size == (48, 48)
    # a rerun finds every shard done
    assert sing(["-q", "index", "--clip", CLIP, "--shards", str(root / "shards" / "*.tar"),
                 "--out", str(root / "idx"), "--thumb-size", "48"]) == 0
    assert json.loads((root / "idx" / "index.json").read_text())["shards"]["skipped_done"] == 3


def test_explain_cli_json_retrieval_and_contact_sheets(setup, capsys):
    from pipelines.jobs.index import ImageIndex

    root, tr = setup
    img = root / "photos" / "n01440764" / "n01440764_0.jpg"
    from_shard = f"{root / 'shards' / 'shard-000001.tar'}#n01443537/n01443537_2"
    out_json, sheet = root / "ex.json", root / "sheet.html"
    rc = sing(["-q", "explain", str(img), from_shard, "--model", CLASSIFIER, "--translator", str(tr),
               "--json", str(out_json), "--index", str(root / "idx"), "--k", "3", "--sheet", str(sheet)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "removing the null part moves toward" in printed and "nearest to T(f~)" in printed
    res = json.loads(out_json.read_text())
    assert res["meta"]["null_dim"] == 86 and res["meta"]["n_concepts"] == 182  # the shipped vocabulary
    file_row, shard_row = res["images"]
    assert file_row["label"] is None and file_row["as_deg"] is None and file_row["pred_as_deg"] is not None
    assert shard_row["label"] == 1 and shard_row["class_name"] == "class_1" and shard_row["as_deg"] is not None
    for r in res["images"]:
        assert r["logit_drift"] < 1e-6 and r["null_dim"] == 86 and 0 < r["is_deg"] < 180
        assert len(r["toward"]) + len(r["away"]) >= 5
        assert all(c["as_deg"] > 0 for c in r["toward"]) and all(c["as_deg"] < 0 for c in r["away"])
        assert [c["as_deg"] for c in r["toward"]] == sorted((c["as_deg"] for c in r["toward"]), reverse=True)
        assert len(r["nearest"]["f"]) == len(r["nearest"]["f_eq"]) == 3
    # the query image itself is never its own neighbour
    assert all(h["key"] != "n01443537/n01443537_2" for h in shard_row["nearest"]["f"] + shard_row["nearest"]["f_eq"])
    # nearest to T(f) by brute force over the index, with T(f) recomputed independently

    from pipelines.io.images import decode_image, normalise, to_uint8_view
    from pipelines.models.classifiers import load_classifier

    clf, t = load_classifier(CLASSIFIER), load_translator(tr)
    with torch.inference_mode():
        f = clf.features_and_logits(normalise(torch.from_numpy(
            to_uint8_view(decode_image(img.read_bytes()), clf.preprocess))[None], clf.preprocess))[0]
    z = t(f.double()).numpy()[0]
    idx = ImageIndex.open(root / "idx")
    cos = idx.emb @ (z / np.linalg.norm(z))
    assert [h["key"] for h in file_row["nearest"]["f"]] == [idx.keys[j] for j in np.argsort(-cos)[:3]]
    assert file_row["nearest"]["f"][0]["cosine"] == pytest.approx(float(cos.max()), abs=1e-4)
    # HTML contact sheet: query + 3 + 3 embedded JPEGs per image
    page = sheet.read_text()
    b64 = re.findall(r'src="data:image/jpeg;base64,([^"]+)"', page)
    assert len(b64) == 2 * (1 + 3 + 3)
    assert Image.open(io.BytesIO(base64.b64decode(b64[1]))).size == (48, 48)
    # each row is anchored by its image (sing report --explain-dir links there); the JSON names the sheet
    from pipelines.models.thumbnails import explain_anchor

    assert f"id='{explain_anchor('shard-000001', 'n01443537/n01443537_2')}'" in page
    assert res["meta"]["sheet"] == str(sheet)
    # without an index: the query images, their scores and concepts, no neighbour columns
    bare = root / "bare.html"
    assert sing(["-q", "explain", from_shard, "--model", CLASSIFIER, "--translator", str(tr), "--sheet", str(bare)]) == 0
    bare_page = bare.read_text()
    assert bare_page.count("data:image/jpeg;base64,") == 1 and "nearest to T(f)" not in bare_page
    assert "the null space" in bare_page
    # PNG contact sheet, with an explicit label by name
    png = root / "sheet.png"
    assert sing(["-q", "explain", str(img), "--model", CLASSIFIER, "--translator", str(tr), "--label", "class_0",
                 "--index", str(root / "idx"), "--k", "2", "--sheet", str(png), "--json", str(out_json)]) == 0
    with Image.open(png) as im:
        im.verify()
    assert json.loads(out_json.read_text())["images"][0]["label"] == 0


@pytest.mark.parametrize("case,message", [
    ("missing_image", "image file not found"),
    ("missing_key", "has no sample with key"),
    ("other_model", "was fitted for source model"),
    ("unknown_label", "unknown class 'goldfsh'"),
    ("bad_sheet_suffix", "--sheet must end in .html or .png"),
    ("other_clip_index", "rebuild it with `sing index --clip openclip:tiny@random`"),
    ("not_an_index", "not an image index"),
])
def test_bad_input_exits_2(setup, case, message, capsys, tmp_path):
    root, tr = setup
    img = str(root / "photos" / "n01440764" / "n01440764_0.jpg")
    argv = ["explain", img, "--model", CLASSIFIER, "--translator", str(tr)]
    if case == "missing_image":
        argv[1] = str(tmp_path / "nope.jpg")
    elif case == "missing_key":
        argv[1] = f"{root / 'shards' / 'shard-000000.tar'}#no/such-key"
    elif case == "other_model":
        argv[3] = "timm:test_resnet@random?num_classes=5"
    elif case == "unknown_label":
        argv += ["--label", "goldfsh"]
    elif case == "bad_sheet_suffix":
        argv += ["--sheet", str(tmp_path / "s.txt")]
    elif case == "other_clip_index":
        shutil.copytree(root / "idx", tmp_path / "idx")
        meta = json.loads((tmp_path / "idx" / "index.json").read_text())
        (tmp_path / "idx" / "index.json").write_text(json.dumps({**meta, "clip_model": "openclip:ViT-B-32@openai"}))
        argv += ["--index", str(tmp_path / "idx")]
    elif case == "not_an_index":
        argv += ["--index", str(tmp_path)]
    assert sing(argv) == 2
    assert message in capsys.readouterr().err
