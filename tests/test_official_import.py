"""`sing import translator|embeddings`: the official release's files, generated here in their
formats, become this project's translator file and text-embedding Parquet; every bad input
exits 2 and writes nothing; loading never executes code. Then the imported files in use:
class text matched by index, concepts and steer targets from embedding Parquets."""
from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile

import numpy as np
import pytest
import torch
import yaml

from pipelines.cli import main as sing
from pipelines.models.zoo import PAPER_CLIP
from tests.official_data import PROMPTS, official_npz, official_translator

MODEL = "timm:test_resnet@random?num_classes=10"  # 96-d head input, 10 classes
MODEL_ID = "timm:test_resnet@random?num_classes=10"


class _Evil:
    """Pickles as a call to os.system: loading it must never run it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _import(src, out, model=MODEL, *extra):
    return sing(["-q", "import", "translator", str(src), "--model", model, "--out", str(out), *extra])


# ----------------------------------------------------------------------------- translators


def _is_openai_vit_l14(ident: dict) -> None:
    import open_clip

    assert open_clip.get_pretrained_cfg("ViT-L-14", "openai")["quick_gelu"] is True
    assert (ident["arch"], ident["tag"], ident["activation"], ident["quick_gelu"]) == \
        ("ViT-L-14", "openai", "quickgelu", True)
    assert ident["hub_repo"] == open_clip.get_pretrained_cfg("ViT-L-14", "openai")["hf_hub"].rstrip("/")
    assert ident["weights_sha256"] is None and ident["hub_revision"] is None  # the release's: never here


def test_imported_translator_gives_the_official_map_in_float64_and_fits_the_audit(tmp_path):
    from pipelines.models.translator_file import load_translator_for
    from pipelines.models.classifiers import load_classifier
    from pipelines.models.translator_file import load_translator

    src, w, b = official_translator(tmp_path / "translators", "myresnet", 96)
    out = tmp_path / "tr.safetensors"
    assert _import(src, out) == 0
    tr = load_translator(out, in_dim=96, out_dim=768, source_model=MODEL_ID, clip_model=PAPER_CLIP)
    f = np.random.default_rng(0).normal(size=(5, 96)) * 3.0
    expected = f @ w.numpy().astype(np.float64).T + b.numpy().astype(np.float64)  # numpy, float64
    got = tr.to(dtype=torch.float64)(torch.from_numpy(f)).numpy()
    assert np.abs(got - expected).max() < 1e-12
    meta = tr.metadata
    prov = meta["official"]
    assert prov["source_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert prov["source_file"] == str(src.resolve())
    assert prov["note"] == "imported from the official SING release"
    assert prov["metadata"] == yaml.safe_load((src.parent / "metadata.yaml").read_text())
    assert meta["clip_model"] == PAPER_CLIP and meta["source_model"] == MODEL_ID
    # the release's translators map into OpenAI's own CLIP: QuickGELU ViT-L-14, the openai tag
    # (open_clip records quick_gelu=True for it; ViT-L-14's own config does not)
    _is_openai_vit_l14(meta["clip_identity"])
    assert json.loads((tmp_path / "tr.safetensors.json").read_text())["official"]["source_sha256"] == \
        prov["source_sha256"]
    # `sing audit --model MODEL --translator out` accepts it (exact source-model match)
    clf = load_classifier(MODEL)
    assert load_translator_for(str(out), MODEL, clf, "exact").id == tr.id


@pytest.mark.parametrize("wrap,prefix", [("state_dict", ""), ("model_state_dict", "_orig_mod."),
                                         ("translator_state_dict", ""), ("model", "_orig_mod."), (None, "_orig_mod.")])
def test_wrapped_and_compiled_checkpoints_give_the_same_weights(tmp_path, wrap, prefix):
    from pipelines.models.translator_file import load_translator

    src, w, b = official_translator(tmp_path, "m", 96, wrap=wrap, prefix=prefix, seed=3)
    assert _import(src.parent, tmp_path / "t.safetensors") == 0  # the directory works too
    tr = load_translator(tmp_path / "t.safetensors")
    assert torch.equal(tr.weight, w) and torch.equal(tr.bias, b)


def test_dims_that_do_not_fit_the_model_exit_2_before_writing(tmp_path, capsys):
    src, _, _ = official_translator(tmp_path / "a", "m", 96)
    out = tmp_path / "t.safetensors"
    assert _import(src, out, "timm:test_vit@random?num_classes=10") == 2  # 64-d head input
    err = capsys.readouterr().err
    assert "96-d" in err and "64-d" in err and err.count("\n") == 1
    assert not out.exists() and not (tmp_path / "t.safetensors.json").exists()
    # metadata disagreeing with the tensors
    src, _, _ = official_translator(tmp_path / "b", "m", 96)
    meta = yaml.safe_load((src.parent / "metadata.yaml").read_text())
    (src.parent / "metadata.yaml").write_text(yaml.safe_dump({**meta, "in_dim": 128}))
    assert _import(src, out) == 2
    assert "(768, 96)" in capsys.readouterr().err and not out.exists()
    # output dim that is not the CLIP space's
    src, _, _ = official_translator(tmp_path / "c", "m", 96, out_dim=512)
    assert _import(src, out) == 2
    assert "512-d" in capsys.readouterr().err and not out.exists()


def test_paper_zoo_model_checked_by_name_and_dims_without_weights(tmp_path, capsys):
    """A zoo name (or its MODEL string) is checked against the zoo's feature dim: no download."""
    from pipelines.models.translator_file import load_translator

    src, _, _ = official_translator(tmp_path / "a", "resnet", 2048)
    out = tmp_path / "rn.safetensors"
    assert _import(src, out, "resnet") == 0
    assert load_translator(out).metadata["source_model"] == "torchvision:resnet50.IMAGENET1K_V1"
    out2 = tmp_path / "eff.safetensors"
    assert _import(src, out2, "efficientnet") == 2  # resnet's translator for EfficientNet
    assert "'resnet'" in capsys.readouterr().err and not out2.exists()
    assert _import(src, out2, "efficientnet", "--any-name") == 2  # the name passes, the dims do not
    assert "2048-d" in (err := capsys.readouterr().err) and "1280-d" in err and not out2.exists()
    src, _, _ = official_translator(tmp_path / "b", "resnext", 1024)
    assert _import(src, out2, "timm:resnext101_32x8d.fb_wsl_ig1b_ft_in1k") == 2
    assert "1024-d" in capsys.readouterr().err and not out2.exists()


def test_mlp_translators_are_refused(tmp_path, capsys):
    src, _, _ = official_translator(tmp_path, "m", 96, architecture="3layer")
    assert _import(src, tmp_path / "t.safetensors") == 2
    err = capsys.readouterr().err
    assert "'3layer'" in err and "MLP" in err and not (tmp_path / "t.safetensors").exists()
    # a "linear" metadata over an MLP's state dict is refused too
    d = tmp_path / "x" / "m" / "linear"
    official_translator(tmp_path / "x", "m", 96)
    torch.save({"net.0.weight": torch.zeros(32, 96), "net.0.bias": torch.zeros(32),
                "net.2.weight": torch.zeros(768, 32), "net.2.bias": torch.zeros(768)}, d / "best.pt")
    assert _import(d / "best.pt", tmp_path / "t.safetensors") == 2
    assert "linear translator" in capsys.readouterr().err


def test_a_checkpoint_carrying_code_is_refused_and_not_run(tmp_path, capsys):
    src, _, _ = official_translator(tmp_path, "m", 96)
    marker = tmp_path / "pwned"
    torch.save({"weight": _Evil(marker), "bias": torch.zeros(768)}, src)
    assert _import(src, tmp_path / "t.safetensors") == 2
    assert "refusing to unpickle code" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "t.safetensors").exists()


def test_metadata_from_elsewhere(tmp_path, capsys):
    src, w, _ = official_translator(tmp_path / "t", "m", 96, meta_dir=tmp_path / "meta")
    out = tmp_path / "o.safetensors"
    assert _import(src, out) == 2
    assert "metadata not found" in capsys.readouterr().err and not out.exists()
    assert _import(src, out, MODEL, "--metadata", str(tmp_path / "meta" / "metadata.yaml")) == 0
    from pipelines.models.translator_file import load_translator

    assert torch.equal(load_translator(out).weight, w)
    # an unknown embedding backend needs --clip
    meta = tmp_path / "meta" / "metadata.yaml"
    meta.write_text(yaml.safe_dump({**yaml.safe_load(meta.read_text()), "embedding_backend": "other"}))
    assert _import(src, out, MODEL, "--metadata", str(meta)) == 2
    assert "--clip" in capsys.readouterr().err


# ----------------------------------------------------------------------------- embeddings


def test_embeddings_prompt_choice_picks_its_slice(tmp_path, capsys):
    from pipelines.models.text import load_embeddings

    names = ["Tench", "goldfish, Carassius auratus", "white shark"]
    emb = official_npz(tmp_path / "c.npz", names, dim=16)
    for prompt, k in (("mean", 5), ("prompt1", 0), ("prompt3", 2), ("prompt5", 4)):
        out = tmp_path / f"{prompt}.parquet"
        args = ["-q", "import", "embeddings", str(tmp_path / "c.npz"), "--out", str(out)]
        assert sing(args + (["--prompt", prompt] if prompt != "mean" else [])) == 0
        got_names, got, meta = load_embeddings(out, clip_model=PAPER_CLIP)
        assert got_names == names
        assert np.array_equal(got, emb[:, k, :].astype(np.float32))  # float16 -> float32 is exact
        prov = json.loads(meta["provenance"])
        assert prov["prompt"] == prompt and prov["prompts"] == PROMPTS
        _is_openai_vit_l14(json.loads(meta["clip_identity"]))
        assert prov["source_sha256"] == hashlib.sha256((tmp_path / "c.npz").read_bytes()).hexdigest()
    # the official mean is the plain mean of unit rows: kept as is (norm < 1)
    assert (np.linalg.norm(emb[:, 5].astype(np.float64), axis=1) < 0.99).all()
    assert sing(["-q", "import", "embeddings", str(tmp_path / "c.npz"), "--out", str(tmp_path / "x.parquet"),
                 "--prompt", "prompt9"]) == 2
    assert "prompt9" in capsys.readouterr().err and not (tmp_path / "x.parquet").exists()


def _npz_with(path, **arrays):
    """An npz whose members are written by np.save with pickles allowed (any object)."""
    with zipfile.ZipFile(path, "w") as z:
        for k, a in arrays.items():
            buf = io.BytesIO()
            np.save(buf, a, allow_pickle=True)
            z.writestr(f"{k}.npy", buf.getvalue())


def test_npz_object_arrays_carrying_code_or_non_strings_are_refused(tmp_path, capsys):
    marker = tmp_path / "pwned"
    emb = np.zeros((1, 6, 8), np.float16)
    prompts = np.array(PROMPTS, dtype=object)
    _npz_with(tmp_path / "evil.npz", classes=np.array([_Evil(marker)], dtype=object), prompts=prompts,
              embeddings=emb)
    assert sing(["-q", "import", "embeddings", str(tmp_path / "evil.npz"), "--out", str(tmp_path / "e.parquet")]) == 2
    assert "refusing to unpickle" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "e.parquet").exists()
    _npz_with(tmp_path / "ints.npz", classes=np.array([3], dtype=object), prompts=prompts, embeddings=emb)
    assert sing(["-q", "import", "embeddings", str(tmp_path / "ints.npz"), "--out", str(tmp_path / "e.parquet")]) == 2
    assert "plain strings" in capsys.readouterr().err
    _npz_with(tmp_path / "shape.npz", classes=np.array(["a", "b"], dtype=object), prompts=prompts, embeddings=emb)
    assert sing(["-q", "import", "embeddings", str(tmp_path / "shape.npz"), "--out", str(tmp_path / "e.parquet")]) == 2
    assert "(2 classes, 6 prompts, dim)" in capsys.readouterr().err
    # unicode (non-object) name arrays are read without any pickle
    _npz_with(tmp_path / "u.npz", classes=np.array(["a"]), prompts=np.array(PROMPTS), embeddings=emb + 1)
    assert sing(["-q", "import", "embeddings", str(tmp_path / "u.npz"), "--out", str(tmp_path / "u.parquet")]) == 0


# ----------------------------------------------------------------------------- in use


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """A 1000-class tiny model (96-d: no null space needed here), its imported official
    translator, and imported class (1000 rows, other spellings) and concept embeddings."""
    from pipelines.models.imagenet_classes import imagenet_class_names
    from pipelines.models.official import import_embeddings, import_translator

    root = tmp_path_factory.mktemp("imported")
    model = "timm:test_resnet@random?num_classes=1000"
    src, _, _ = official_translator(root / "translators", "rn", 96)
    import_translator(src, model, root / "tr.safetensors")
    ours = list(imagenet_class_names())
    names = [n.upper() if i % 3 == 0 else n for i, n in enumerate(ours)]  # spelled differently
    emb = official_npz(root / "classes.npz", names, seed=1)
    import_embeddings(root / "classes.npz", root / "classes.parquet")
    concepts = ["striped", "wooden", "snow", "an image of a jellyfish"]
    cemb = official_npz(root / "concepts.npz", concepts, seed=2)
    import_embeddings(root / "concepts.npz", root / "concepts.parquet")
    return {"root": root, "model": model, "tr": root / "tr.safetensors", "ours": ours, "names": names, "emb": emb,
            "concepts": concepts, "cemb": cemb}


def test_class_text_of_1000_rows_is_matched_by_index_whatever_the_spelling(imported, tmp_path):
    from pipelines.jobs.audit import AuditOptions, prepare_models

    d = imported
    cfg = AuditOptions(models=[d["model"]], translators=[str(d["tr"])], shards=[], out=str(tmp_path),
                      class_text=str(d["root"] / "classes.parquet"), concepts=str(d["root"] / "concepts.parquet"))
    (p,) = prepare_models(cfg, d["concepts"])
    assert np.array_equal(p.class_text, d["emb"][:, 5].astype(np.float32))  # row i = class i
    info = p.class_text_info
    assert info["matched_by"] == "index" and info["rows"] == 1000 and info["clip_model"] == PAPER_CLIP
    assert info["names_differ"] == sum(1 for a, b in zip(d["ours"], d["names"]) if a != b) > 300
    assert info["name_differences"][0] == [0, d["ours"][0], d["names"][0]]
    assert info["provenance"]["prompt"] == "mean"
    assert np.array_equal(p.concept_text, d["cemb"][:, 5].astype(np.float32))
    assert p.concept_info["rows"] == 4


def test_class_text_of_another_size_or_clip_is_a_clear_error(imported, tmp_path):
    from pipelines.jobs.audit import AuditOptions, prepare_models
    from pipelines.models.official import import_embeddings

    d = imported
    official_npz(tmp_path / "999.npz", d["names"][:999])
    import_embeddings(tmp_path / "999.npz", tmp_path / "999.parquet")
    cfg = AuditOptions(models=[d["model"]], translators=[str(d["tr"])], shards=[], out=str(tmp_path),
                      class_text=str(tmp_path / "999.parquet"))
    with pytest.raises(ValueError, match="999 rows but the classifier has 1000 classes"):
        prepare_models(cfg, None)
    import_embeddings(d["root"] / "classes.npz", tmp_path / "b32.parquet", clip="openclip:ViT-B-32@openai")
    cfg.class_text = str(tmp_path / "b32.parquet")
    with pytest.raises(ValueError, match="ViT-B-32"):
        prepare_models(cfg, None)


def test_explain_with_imported_class_text_and_concepts_needs_no_clip(imported, tmp_path, chelsea):
    """The true-class AS uses row `label` of the file: checked against numpy float64."""
    from pipelines.jobs.explain import ExplainOptions as ExplainOptions, run_explain
    from pipelines.io.images import decode_image, normalise, to_uint8_view
    from pipelines.models.classifiers import load_classifier

    d = imported
    chelsea.save(tmp_path / "cat.jpg", quality=92)
    res = run_explain(ExplainOptions(images=[str(tmp_path / "cat.jpg")], model=d["model"], translator=str(d["tr"]),
                                    class_text=str(d["root"] / "classes.parquet"),
                                    concepts=str(d["root"] / "concepts.parquet"), label="281", top=4))
    (row,) = res["images"]
    assert res["meta"]["class_text"]["names_differ"] > 300 and res["meta"]["n_concepts"] == 4
    assert row["null_dim"] == 0 and row["as_deg"] is None  # 96 features < 1000 classes
    # a model with a null space: 96-d head, 10 classes, its own imported translator; class text by index
    model = "timm:test_resnet@random?num_classes=10"
    src, w, b = official_translator(tmp_path / "t", "rn10", 96, seed=5)
    assert _import(src, tmp_path / "t10.safetensors", model) == 0
    emb = official_npz(tmp_path / "c10.npz", [f"Class {i}" for i in range(10)], seed=6)
    assert sing(["-q", "import", "embeddings", str(tmp_path / "c10.npz"), "--out", str(tmp_path / "c10.parquet")]) == 0
    res = run_explain(ExplainOptions(images=[str(tmp_path / "cat.jpg")], model=model,
                                    translator=str(tmp_path / "t10.safetensors"),
                                    class_text=str(tmp_path / "c10.parquet"),
                                    concepts=str(d["root"] / "concepts.parquet"), label="3", top=4))
    (row,) = res["images"]
    clf = load_classifier(model)
    img = decode_image((tmp_path / "cat.jpg").read_bytes())  # what explain sees: the decoded JPEG
    x = normalise(torch.from_numpy(to_uint8_view(img, clf.preprocess)[None]), clf.preprocess)
    with torch.inference_mode():
        f = clf.features_and_logits(x)[0].double().numpy()[0]
    W = clf.head_weight.double().numpy()
    _, s, vt = np.linalg.svd(W)
    vn = vt[(s > 1e-5).sum():].T
    f_eq = f - vn @ (vn.T @ f)
    A, bb = w.double().numpy(), b.double().numpy()
    z, z_eq, t = A @ f + bb, A @ f_eq + bb, emb[3, 5].astype(np.float64)
    ang = lambda u, v: np.degrees(np.arccos(np.clip(u @ v / np.linalg.norm(u) / np.linalg.norm(v), -1, 1)))  # noqa
    assert row["as_deg"] == pytest.approx(ang(z, t) - ang(z_eq, t), abs=1e-3)
    assert row["is_deg"] == pytest.approx(ang(z, z_eq), abs=1e-3)
    moved = {c["concept"]: c["as_deg"] for c in row["toward"] + row["away"]}
    for k, name in enumerate(d["concepts"]):
        if name in moved:
            tk = d["cemb"][k, 5].astype(np.float64)
            assert moved[name] == pytest.approx(ang(z, tk) - ang(z_eq, tk), abs=1e-3)
    assert moved  # some concept moved


def test_steer_target_from_an_embeddings_row(imported):
    from pipelines.jobs.steer import SteerConfigError, target_embedding

    p = str(imported["root"] / "concepts.parquet")
    text, info = target_embedding("An image of a JELLYFISH", p, PAPER_CLIP, 768)  # case-insensitive
    assert np.array_equal(text, imported["cemb"][3, 5].astype(np.float32))
    assert info["source"] == "embeddings" and info["row"] == 3 and info["name"] == "an image of a jellyfish"
    with pytest.raises(SteerConfigError, match="no row named 'jellyfish'.*close"):
        target_embedding("jellyfish", p, PAPER_CLIP, 768)
    with pytest.raises(ValueError, match="made with CLIP openclip:ViT-L-14@openai .*used with openclip:tiny@random"):
        target_embedding("striped", p, "openclip:tiny@random", 768)
