"""`sing reproduce` end to end, offline: random-weight models under the paper's names,
official-format translators and embeddings generated here, generated shards. Every row and
column of both tables is checked: against the result Parquet (polars), against the paper's
numbers typed in here, and the scores of one model against a float64 numpy/autograd
recomputation of AS, IS and the steering."""
from __future__ import annotations

import html as html_lib
import json
import re

import numpy as np
import polars as pl
import pytest
import torch

from pipelines.cli import main as sing
from tests.official_data import official_npz, official_translator
from tests.pipeline_data import photo_folder

pytestmark = pytest.mark.slow

SPORTS_CAR, TENCH, JELLYFISH = "n04285008", "n01440764", "n01910747"  # ImageNet 817, 0, 107
# Random weights under the paper's names. Timm's MobileNetV3s give features of a sane norm at
# random init (EfficientNet's and LCNet's are ~1e-4 and smaller: every angle would be ~0).
MODELS = {
    "efficientnet": "timm:mobilenetv3_large_100@random",  # 1280-d: null_dim 280
    "dinovit1": "timm:mobilenetv3_small_050@random",  # 1024-d: null_dim 24, like the real DinoViT
    "deit": "timm:test_vit@random?num_classes=1000",  # 64-d: no null space
    "resnext": "timm:test_resnet@random?num_classes=1000",  # 96-d, but its translator below is 2048-d
}
NULL_DIM = {"efficientnet": 280, "dinovit1": 24}
PROMPT = "an image of a jellyfish"
# the paper's numbers, typed in from METHOD.md section 5 (independent of the data file)
PAPER_RATIO = {"dinovit1": 70, "bitresnet": 47, "convnext": 37, "efficientnet": 36, "resnext": 14, "deit": 9.5}
PAPER_T1 = {"resnet": (12.04, 0.25), "efficientnet": (12.38, 0.52), "bitresnet": (9.19, 0.31),
            "dinovit1": (5.00, 0.59), "resnext": (11.15, 0.53)}
LABELS = {"efficientnet": "EfficientNet", "dinovit1": "DinoViT", "resnext": "ResNeXt101", "bitresnet": "BiT-ResNet",
          "deit": "DeiT", "convnext": "ConvNeXt"}
RATIO_HEADER = ["model", "name", "status", "null_dim", "n images", "n scored", "mean IS", "mean |AS|",
                "IS/|AS| ratio_of_means", "IS/|AS| median_ratio", "paper IS/|AS|", "diff (ratio_of_means - paper)",
                "diff (median_ratio - paper)", "paper source", "class text (AS)"]
T1_HEADER = ["model", "name", "status", "n steered", "reachable", "|AS| mean", "|AS| std", "|AS| sem", "IS mean",
             "paper |AS| mean +- std", "diff (mean - paper mean)", "paper source", "target text"]
FIG_12B = "supplement Fig. 12b (read off a plot, approximate)"  # the 13-model sweep (Fig. 4: class violins)


@pytest.fixture(scope="module")
def repro(tmp_path_factory, ray_session):
    from pipelines.models.imagenet_classes import imagenet_class_names
    from pipelines.jobs.make_shards import make_shards

    root = tmp_path_factory.mktemp("repro")
    make_shards(str(photo_folder(root / "photos", per_class=3, synsets=[SPORTS_CAR, TENCH, JELLYFISH])),
                str(root / "shards"), per_shard=4)
    tdir = root / "official" / "translators"
    raw = {}
    for i, (name, dim) in enumerate((("efficientnet", 1280), ("dinovit1", 1024), ("deit", 64))):
        # |A f| well above |b|, so that angles are degrees, not float32 noise
        _, w, b = official_translator(tdir, name, dim, seed=i, scale=10.0, bias_scale=0.01)
        raw[name] = (w.double().numpy(), b.double().numpy())
    official_translator(tdir, "resnext", 2048, seed=9)  # does not fit a 96-d head: skipped
    official_translator(tdir, "bitresnet", 2048, architecture="3layer")  # an MLP only: skipped
    names = [n.title() if i % 2 else n for i, n in enumerate(imagenet_class_names())]  # other spellings
    class_emb = official_npz(root / "in1k.npz", names, seed=11)
    concepts = ["striped", PROMPT, "wooden"]
    concept_emb = official_npz(root / "concepts.npz", concepts, seed=12)
    for npz in ("in1k", "concepts"):
        assert sing(["-q", "import", "embeddings", str(root / f"{npz}.npz"), "--out", str(root / f"{npz}.parquet")]) == 0
    out = root / "out"
    models = [f"{k}={v}" for k, v in MODELS.items()] + ["bitresnet", "convnext"]
    rc = sing(["-q", "reproduce", "--shards", str(root / "shards" / "*.tar"), "--out", str(out), "--models", *models,
               "--translators", str(tdir), "--class-text", str(root / "in1k.parquet"),
               "--prompt-embeddings", str(root / "concepts.parquet"), "--prompt", PROMPT,
               "--models-per-pass", "2", "--batch-size", "8"])
    assert rc == 0
    return {"root": root, "out": out, "raw": raw, "class_emb": class_emb, "target": concept_emb[1, 5],
            "names_differ": sum(a != b for a, b in zip(names, imagenet_class_names())),
            "rep": json.loads((out / "reproduction.json").read_text())}


def _md_tables(text: str) -> list[list[list[str]]]:
    tables, cur = [], None
    for line in text.splitlines():
        if line.startswith("|"):
            cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            if cur is None:
                cur = []
                tables.append(cur)
            if not all(set(c) <= {"-"} for c in cells):
                cur.append(cells)
        else:
            cur = None
    return tables


def _html_tables(text: str) -> list[list[list[str]]]:
    out = []
    for t in re.findall(r"<table>(.*?)</table>", text, re.S):
        rows = [[html_lib.unescape(c) for c in re.findall(r"<t[hd]>(.*?)</t[hd]>", r, re.S)]
                for r in re.findall(r"<tr>(.*?)</tr>", t, re.S)]
        out.append(rows)
    return out


def _fmt(v, diff=False, approx=False):
    if v is None:
        return "-"
    if approx and isinstance(v, (int, float)):
        return f"~{v:g}"
    if isinstance(v, float):
        return f"{v:+.2f}" if diff else f"{v:.2f}"
    return str(v)


def _images(out, slug, run):
    return pl.read_parquet(str(out / "results" / "images" / f"model={slug}" / f"run={run}" / "*.parquet"))


def _steer(out, slug, run):
    return pl.read_parquet(str(out / "results" / "steer" / f"model={slug}" / f"run={run}" / "*.parquet"))


def test_sweep_table_every_row_and_column(repro):
    rep, out = repro["rep"], repro["out"]
    rows = rep["is_as_ratio"]
    # Fig. 12b order (the paper's ratio, descending)
    assert [r["name"] for r in rows] == ["dinovit1", "bitresnet", "convnext", "efficientnet", "resnext", "deit"]
    for r in rows:
        n = r["name"]
        assert r["model"] == LABELS[n]
        assert r["paper"] == PAPER_RATIO[n] and r["paper_source"] == FIG_12B
        if n in NULL_DIM:
            # which class text this comparison used: the official npz's five-prompt mean
            assert "in1k.parquet (official npz, prompt 'mean' = the mean of five prompts" in r["class_text"]
            img = _images(out, r["slug"], r["run"])
            assert r["status"] == "ok" and r["null_dim"] == NULL_DIM[n]
            assert r["n_images"] == r["n_scored"] == img.height == 9
            a, i = img["abs_as_deg"].cast(pl.Float64), img["is_deg"].cast(pl.Float64)
            assert (a - img["as_deg"].cast(pl.Float64).abs()).abs().max() < 1e-6
            assert r["mean_is"] == pytest.approx(i.mean(), rel=1e-9)
            assert r["mean_abs_as"] == pytest.approx(a.mean(), rel=1e-9)
            assert r["ratio_of_means"] == pytest.approx(i.mean() / a.mean(), rel=1e-9)
            assert r["median_ratio"] == pytest.approx((i / a).filter(a > 0).median(), rel=1e-9)  # |AS| = 0 left out
            assert a.max() > 0.1 and i.min() > 0.1  # degrees, not float32 noise
            assert r["diff_ratio_of_means"] == pytest.approx(r["ratio_of_means"] - PAPER_RATIO[n], rel=1e-12)
            assert r["diff_median_ratio"] == pytest.approx(r["median_ratio"] - PAPER_RATIO[n], rel=1e-12)
            assert r["MODEL"] == MODELS[n]
            continue
        for k in ("mean_is", "mean_abs_as", "ratio_of_means", "median_ratio", "diff_ratio_of_means",
                  "diff_median_ratio"):
            assert r[k] is None, (n, k)
        if n == "deit":
            assert r["status"] == "no null space (AS/IS undefined)"
            assert r["null_dim"] == 0 and r["n_images"] == 9 and r["n_scored"] == 0
            img = _images(out, r["slug"], r["run"])
            assert img["as_deg"].null_count() == img["is_deg"].null_count() == 9  # NULL, never 0
        else:
            assert r["null_dim"] is None and r["n_images"] is None and r["n_scored"] is None
    by = {r["name"]: r for r in rows}
    assert by["bitresnet"]["status"].startswith("skipped: only non-linear official translators (3layer)")
    assert by["resnext"]["status"].startswith("skipped: official translator not imported")
    assert "2048-d" in by["resnext"]["status"] and "96-d" in by["resnext"]["status"]
    assert by["convnext"]["status"].startswith("skipped: no translator in")


def test_sweep_scores_match_a_float64_recomputation(repro):
    """AS/IS of every image, EfficientNet: numpy SVD null space, the raw official W, b, and
    class text row = label (the file's names are spelled differently)."""
    from pipelines.io.images import decode_image, normalise, to_uint8_view
    from pipelines.models.classifiers import load_classifier
    from pipelines.io.shards import iter_shard

    r = next(r for r in repro["rep"]["is_as_ratio"] if r["name"] == "efficientnet")
    got = _images(repro["out"], r["slug"], r["run"]).sort("key")
    clf = load_classifier(MODELS["efficientnet"])
    keys, u8, labels = [], [], []
    for shard in sorted((repro["root"] / "shards").glob("*.tar")):
        for s in iter_shard(str(shard)):
            keys.append(s.key)
            labels.append(s.label)
            u8.append(to_uint8_view(decode_image(s.image), clf.preprocess))
    with torch.inference_mode():
        f = clf.features_and_logits(normalise(torch.from_numpy(np.stack(u8)), clf.preprocess))[0].double().numpy()
    _, s, vt = np.linalg.svd(clf.head_weight.double().numpy())
    vn = vt[(s > 1e-5).sum():].T
    assert vn.shape[1] == 280
    f_eq = f - (f @ vn) @ vn.T
    A, b = repro["raw"]["efficientnet"]
    z, z_eq = f @ A.T + b, f_eq @ A.T + b
    t = repro["class_emb"][labels, 5].astype(np.float64)

    def ang(u, v):
        c = (u * v).sum(-1) / np.linalg.norm(u, axis=-1) / np.linalg.norm(v, axis=-1)
        return np.degrees(np.arccos(np.clip(c, -1, 1)))

    order = np.argsort(keys)
    assert got["key"].to_list() == [keys[i] for i in order]
    assert np.abs(got["as_deg"].to_numpy() - (ang(z, t) - ang(z_eq, t))[order]).max() < 2e-3
    assert np.abs(got["is_deg"].to_numpy() - ang(z, z_eq)[order]).max() < 2e-3
    assert sorted(set(labels)) == [0, 107, 817]
    man = json.loads((repro["out"] / "results" / "runs" / f"{r['run']}.json").read_text())
    ct = next(m for m in man["models"] if m["slug"] == r["slug"])["class_text"]
    assert ct["matched_by"] == "index" and ct["names_differ"] == repro["names_differ"] > 400 and ct["provenance"]["prompt"] == "mean"
    assert next(m for m in man["models"] if m["slug"] == r["slug"])["translator"]["official"]["note"] == \
        "imported from the official SING release"


def test_table1_every_row_and_column(repro):
    rep, out = repro["rep"], repro["out"]
    rows = rep["table1"]
    # Table 1's order, then the others as given
    assert [r["name"] for r in rows] == ["efficientnet", "bitresnet", "dinovit1", "resnext", "deit", "convnext"]
    assert rep["protocol"] == {"class": "sports car", "prompt": PROMPT, "is_deg": 40.0, "prompt_used": PROMPT}
    for r in rows:
        n = r["name"]
        assert r["model"] == LABELS[n]
        if n in PAPER_T1:
            m, s = PAPER_T1[n]
            assert (r["paper_mean"], r["paper_std"]) == (m, s) and r["paper"] == f"{m:.2f} +- {s:.2f}"
            assert r["paper_source"] == "Table 1"
        else:
            assert r["paper"] is r["paper_mean"] is r["paper_source"] is None
        if n in NULL_DIM:
            st = _steer(out, r["slug"], r["run"])
            assert st.height == r["n"] == 3 and st["label"].unique().to_list() == [817]
            assert st["target"].unique().to_list() == [PROMPT]
            reach = st.filter(pl.col("reachable"))
            assert r["n_reachable"] == reach.height >= 1
            a = reach["abs_as_deg"].cast(pl.Float64)
            assert r["status"] == "ok"
            assert r["mean_abs_as"] == pytest.approx(a.mean(), rel=1e-9)
            assert r["std_abs_as"] == pytest.approx(a.std(), rel=1e-9, abs=1e-12)
            assert r["sem_abs_as"] == pytest.approx(a.std() / np.sqrt(reach.height), rel=1e-9, abs=1e-12)
            assert r["mean_is"] == pytest.approx(40.0, abs=1e-3)
            assert r["diff"] == pytest.approx(r["mean_abs_as"] - PAPER_T1[n][0], rel=1e-12)
            assert r["target_text"].startswith(f"row '{PROMPT}' of ")
            continue
        for k in ("n", "n_reachable", "mean_abs_as", "std_abs_as", "sem_abs_as", "mean_is", "diff"):
            assert r[k] is None, (n, k)
    by = {r["name"]: r for r in rows}
    assert by["deit"]["status"].startswith("skipped:") and "no null space" in by["deit"]["status"]
    assert by["bitresnet"]["status"].startswith("skipped: only non-linear")
    assert by["resnext"]["status"].startswith("skipped: official translator not imported")
    assert by["convnext"]["status"].startswith("skipped: no translator")


def test_steering_matches_an_autograd_recomputation(repro):
    """Table 1 rows of EfficientNet: from the recorded step eps, an independent float64
    computation (autograd gradient of the cosine, numpy null projector, the raw official
    W, b and the file's target row) gives the recorded IS (= 40) and AS, logits unchanged."""
    from pipelines.io.images import decode_image, normalise, to_uint8_view
    from pipelines.models.classifiers import load_classifier
    from pipelines.io.shards import iter_shard

    r = next(r for r in repro["rep"]["table1"] if r["name"] == "efficientnet")
    st = _steer(repro["out"], r["slug"], r["run"]).filter(pl.col("reachable"))
    clf = load_classifier(MODELS["efficientnet"])
    imgs = {}
    for shard in sorted((repro["root"] / "shards").glob("*.tar")):
        for s in iter_shard(str(shard)):
            imgs[s.key] = to_uint8_view(decode_image(s.image), clf.preprocess)
    x = torch.from_numpy(np.stack([imgs[k] for k in st["key"]]))
    with torch.inference_mode():
        f = clf.features_and_logits(normalise(x, clf.preprocess))[0].double()
    W = clf.head_weight.double()
    _, s, vt = np.linalg.svd(W.numpy())
    pn = torch.from_numpy(vt[(s > 1e-5).sum():].T @ vt[(s > 1e-5).sum():])
    A, b = (torch.from_numpy(v) for v in repro["raw"]["efficientnet"])
    t = torch.from_numpy(repro["target"].astype(np.float64))
    fg = f.clone().requires_grad_(True)
    torch.nn.functional.cosine_similarity(fg @ A.T + b, t[None], dim=-1).sum().backward()
    d = fg.grad @ pn
    eps = torch.from_numpy(st["eps"].to_numpy().astype(np.float64))
    f_eps = f + eps[:, None] * d / d.norm(dim=-1, keepdim=True)
    z, z_eps = f @ A.T + b, f_eps @ A.T + b

    def ang(u, v):
        return torch.rad2deg(torch.arccos(torch.nn.functional.cosine_similarity(u, v, dim=-1).clamp(-1, 1)))

    assert torch.allclose(ang(z, z_eps), torch.full((st.height,), 40.0, dtype=torch.float64), atol=1e-3)
    assert np.abs(st["as_deg"].to_numpy() - (ang(z, t[None]) - ang(z_eps, t[None])).numpy()).max() < 1e-3
    assert ((f_eps - f) @ W.T).abs().max() < 1e-6 * f.norm(dim=-1).max()


def test_markdown_and_html_show_the_same_cells(repro):
    rep, out = repro["rep"], repro["out"]
    md = (out / "reproduction.md").read_text()
    page = (out / "reproduction.html").read_text()
    cols = {"is_as_ratio": ["model", "name", "status", "null_dim", "n_images", "n_scored", "mean_is", "mean_abs_as",
                            "ratio_of_means", "median_ratio", "paper", "diff_ratio_of_means", "diff_median_ratio",
                            "paper_source", "class_text"],
            "table1": ["model", "name", "status", "n", "n_reachable", "mean_abs_as", "std_abs_as", "sem_abs_as",
                       "mean_is", "paper", "diff", "paper_source", "target_text"]}
    for tables in (_md_tables(md), _html_tables(page)):
        assert len(tables) == 2
        for table, key, header in ((tables[0], "is_as_ratio", RATIO_HEADER), (tables[1], "table1", T1_HEADER)):
            assert table[0] == header
            expected = [[_fmt(r[c], diff=c.startswith("diff"), approx=c == "paper") for c in cols[key]]
                        for r in rep[key]]
            assert table[1:] == expected
    # a figure inline, nothing fetched from elsewhere
    assert "data:image/png;base64," in page and "http" not in page.split("<body>")[1].split("Results:")[0]
    notes = " ".join(rep["notes"])
    assert "Random weights" in notes and "official npz, prompt 'mean'" in notes
    assert f"row '{PROMPT}' of" in notes and f"{repro['names_differ']} names spelled differently" in notes
    # the paper's text and the official code use different class text: the report says which is which
    assert 'The paper\'s text uses the single prompt "an image of a <class>"' in notes
    assert "from the official code, which uses the mean of five prompt embeddings" in notes
    assert "ratio_of_means = mean(IS) / mean(|AS|)" in md


def test_paper_numbers_file_holds_method_md_section_5_for_every_zoo_model():
    from pipelines.jobs.reproduce import paper_numbers
    from pipelines.models.zoo import BY_NAME

    nums = paper_numbers()
    ratio = {k: v["value"] for k, v in nums["is_as_ratio"]["values"].items()}
    assert ratio == {"densenet": 70, "dinovit1": 70, "eva02_large": 54, "bitresnet": 47, "convnext": 37,
                     "efficientnet": 36, "swin_large": 29, "resnet": 25, "vgg16": 24, "vgg19": 20, "dinov2": 16,
                     "resnext": 14, "deit": 9.5}
    assert set(ratio) == set(BY_NAME)
    assert {k: (v["mean"], v["std"]) for k, v in nums["table1"]["values"].items()} == {
        "resnet": (12.04, 0.25), "efficientnet": (12.38, 0.52), "bitresnet": (9.19, 0.31), "dinovit1": (5.00, 0.59),
        "resnext": (11.15, 0.53)}
    assert all(v["source"] == "Table 1" for v in nums["table1"]["values"].values())
    assert all(v["source"] == FIG_12B for v in nums["is_as_ratio"]["values"].values())
    assert nums["paper"].startswith("Yadid, Levi, Betser, Gilboa: SING: Semantic Interpretation of the Null-space "
                                    "Geometry, CVPR 2026 (arXiv 2603.14610)")
    assert "an image of a <class>" in nums["class_text"]["paper"] and "five" in nums["class_text"]["official"]
    assert nums["table1"]["protocol"] == {"class": "sports car", "prompt": PROMPT, "is_deg": 40.0}


def test_bad_input_exits_2_before_any_work(tmp_path, capsys):
    assert sing(["-q", "reproduce", "--shards", str(tmp_path / "none*.tar"), "--out", str(tmp_path / "o"),
                 "--models", "nosuch"]) == 2
    assert "no paper model 'nosuch'" in capsys.readouterr().err
    assert sing(["-q", "reproduce", "--shards", str(tmp_path / "none*.tar"), "--out", str(tmp_path / "o"),
                 "--models", "resnet=notamodel"]) == 2
    assert "cannot parse model" in capsys.readouterr().err
    assert sing(["-q", "reproduce", "--shards", str(tmp_path / "none*.tar"), "--out", str(tmp_path / "o"),
                 "--models", "resnet"]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert not (tmp_path / "o").exists()
