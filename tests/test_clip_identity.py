"""What a CLIP MODEL string builds and the identity files record of it (issue 22): the tag's
recorded architecture settings over the config, the stated activation and its contradictions,
a checkpoint's own record, the refusal rules for translators and embedding files, and the
derived cache's keys."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from pipelines.cli import main as sing
from pipelines.errors import BadInput, exit_code
from pipelines.models.clip import load_clip
from pipelines.models.clip_source import (TINY_CFG, ClipActivationError, ClipIdentityMismatch, check_same_clip,
                                          clip_identity, resolve_clip)
from pipelines.models.spec import UnknownModelError, parse_model_spec


def test_every_openai_tag_builds_quickgelu_and_the_tag_wins_over_its_config():
    import open_clip

    models = open_clip.list_pretrained_models_by_tag("openai")
    assert len(models) >= 9
    for arch in models:
        src = resolve_clip(f"openclip:{arch}@openai")
        assert src.quick_gelu and src.build_kwargs()["quick_gelu"] is True, arch
    # ViT-L-14's own config says GELU; the tag's network is open_clip's ViT-L-14-quickgelu config
    assert not open_clip.get_model_config("ViT-L-14").get("quick_gelu")
    assert resolve_clip("openclip:ViT-L-14@openai").model_cfg == open_clip.get_model_config("ViT-L-14-quickgelu")
    a, b = (clip_identity(f"openclip:{n}@openai", resolve_weights=False) for n in ("ViT-L-14", "ViT-L-14-quickgelu"))
    assert a["id"] == b["id"] and a["activation"] == "quickgelu" and a["hub_repo"] == "timm/vit_large_patch14_clip_224.openai"
    # a tag trained with GELU, and a non-openai tag that records QuickGELU (MetaCLIP)
    assert resolve_clip("openclip:ViT-B-32@laion2b_s34b_b79k").activation == "gelu"
    assert resolve_clip("openclip:ViT-B-32@metaclip_400m").activation == "quickgelu"
    assert resolve_clip("openclip:ViT-B-32@random").activation == "gelu"


@pytest.mark.parametrize("spec, match", [
    ("openclip:ViT-L-14@openai?act=gelu", "trained with quickgelu"),
    ("openclip:ViT-B-32-quickgelu@laion2b_s34b_b79k", "trained with GELU.*use openclip:ViT-B-32@laion2b"),
    ("openclip:ViT-B-32-quickgelu@random?act=gelu", "QuickGELU config"),
])
def test_contradicting_activations_are_bad_input(spec, match):
    with pytest.raises(ClipActivationError, match=match) as e:
        resolve_clip(spec)
    assert exit_code(e.value) == 2


def test_activation_option_syntax(tmp_path):
    ms = parse_model_spec(f"openclip:ViT-B-32@{tmp_path}/ckpt.safetensors?act=quickgelu")
    assert (ms.weights, ms.path, ms.act) == ("file", f"{tmp_path}/ckpt.safetensors", "quickgelu")
    assert ms.model_id == "openclip:ViT-B-32@ckpt.safetensors?act=quickgelu"
    assert parse_model_spec("openclip:ViT-L-14@openai?act=quickgelu").model_id == "openclip:ViT-L-14@openai?act=quickgelu"
    for bad, why in (("openclip:tiny@random?act=relu", "unknown activation"),
                     ("timm:test_vit@random?act=gelu", "openclip models only")):
        with pytest.raises(UnknownModelError, match=why):
            parse_model_spec(bad)


def _tiny_reference(sd: dict, quick_gelu: bool):
    """open_clip's own CLIP class with the tiny config, the given activation and weights."""
    from open_clip.model import CLIP

    m = CLIP(**TINY_CFG, quick_gelu=quick_gelu).eval()
    m.load_state_dict(sd)
    return m


def test_the_stated_activation_is_the_built_network(tmp_path):
    clip = load_clip("openclip:tiny@random?act=quickgelu")
    assert clip.identity["activation"] == "quickgelu"
    assert clip.identity["id"] != load_clip("openclip:tiny@random").identity["id"]
    sd = clip.module.state_dict()
    tok = clip.tokenizer(["a photo of a cat", "an image of a goldfish"])
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref_q, ref_g = _tiny_reference(sd, True), _tiny_reference(sd, False)
        torch.testing.assert_close(clip.encode_text(["a photo of a cat", "an image of a goldfish"]),
                                   ref_q.encode_text(tok))
        torch.testing.assert_close(clip.encode_image(x), ref_q.encode_image(x))
        assert not torch.allclose(ref_g.encode_text(tok), ref_q.encode_text(tok), atol=1e-6)


def test_a_checkpoint_records_its_activation(tmp_path, capsys):
    """A QuickGELU checkpoint saying so in its safetensors metadata: loading it as GELU is
    refused (exit 2, through the CLI); stated, it loads as the QuickGELU network."""
    q = load_clip("openclip:tiny@random?act=quickgelu")
    sd = {k: v.contiguous() for k, v in q.module.state_dict().items()}
    p = tmp_path / "q.safetensors"
    save_file(sd, str(p), metadata={"quick_gelu": "true"})
    (tmp_path / "prompts.txt").write_text("a cat\n")
    argv = ["embed-text", "--clip", f"openclip:tiny@{p}", "--prompts", str(tmp_path / "prompts.txt"),
            "--out", str(tmp_path / "e.parquet")]
    assert sing(argv) == 2
    assert "the checkpoint records quickgelu" in capsys.readouterr().err
    got = load_clip(f"openclip:tiny@{p}?act=quickgelu")
    torch.testing.assert_close(got.encode_text(["a cat"]), q.encode_text(["a cat"]))
    assert got.identity["weights_sha256"] == got.checkpoint_sha256 and got.identity["activation"] == "quickgelu"
    # open_clip's layout: an open_clip_config.json beside the weights
    d = tmp_path / "dir"
    d.mkdir()
    save_file(sd, str(d / "open_clip_model.safetensors"))
    (d / "open_clip_config.json").write_text(json.dumps({"model_cfg": {**TINY_CFG, "quick_gelu": True}}))
    with pytest.raises(ClipActivationError, match="records quickgelu .*open_clip_config.json"):
        load_clip(f"openclip:tiny@{d}/open_clip_model.safetensors?act=gelu")
    assert load_clip(f"openclip:tiny@{d}/open_clip_model.safetensors?act=quickgelu").identity["quick_gelu"]


def _translator(path, meta: dict):
    from sing_ops import Translator

    from pipelines.models.translator_file import save_translator

    return save_translator(Translator(torch.zeros(32, 8), torch.zeros(32), {"source_model": "m", **meta}), path)


def test_translators_from_before_identities(tmp_path):
    from sing_ops.translator import TranslatorMismatch

    from pipelines.models.translator_file import load_translator

    # named an openai tag: sing built it with GELU then; refused, with what to do
    p = _translator(tmp_path / "old.safetensors", {"clip_model": "openclip:ViT-B-32@openai"})
    with pytest.raises(TranslatorMismatch, match="before sing recorded CLIP activations.*built with gelu.*refit") as e:
        load_translator(p)
    assert exit_code(e.value) == 2
    # an official import came from OpenAI's CLIP itself: its identity is the tag's network
    p = _translator(tmp_path / "off.safetensors", {"clip_model": "openclip:ViT-B-32@openai", "fitted_by": "official"})
    assert load_translator(p).metadata["clip_identity"]["activation"] == "quickgelu"
    # built right then: a GELU tag, open_clip's -quickgelu config, random weights
    for clip in ("openclip:ViT-B-32@laion2b_s34b_b79k", "openclip:ViT-B-32-quickgelu@openai", "openclip:tiny@random"):
        ident = load_translator(_translator(tmp_path / "ok.safetensors", {"clip_model": clip})).metadata["clip_identity"]
        assert ident["derived_from_name"] and ident["id"] == clip_identity(clip, resolve_weights=False)["id"]


def test_translator_and_clip_identities_must_agree(tmp_path):
    from sing_ops.translator import TranslatorMismatch

    from pipelines.models.translator_file import load_translator

    gelu = load_clip("openclip:tiny@random").identity
    p = _translator(tmp_path / "t.safetensors", {"clip_model": gelu["model"], "clip_identity": gelu})
    assert load_translator(p, clip_model=gelu).metadata["clip_identity"] == gelu
    with pytest.raises(TranslatorMismatch, match=r"made with CLIP openclip:tiny@random \(gelu.*quickgelu"):
        load_translator(p, clip_model=load_clip("openclip:tiny@random?act=quickgelu").identity)
    # the same network from another hub revision with other weights: refused; the official
    # identity (no weights recorded) agrees with any revision of the tag's repo
    hub = clip_identity("openclip:ViT-B-32@openai", resolve_weights=False)
    a, b = ({**hub, "hub_revision": r, "weights_sha256": s} for r, s in (("r1", "a" * 64), ("r2", "b" * 64)))
    with pytest.raises(ClipIdentityMismatch, match="weights_sha256"):
        check_same_clip(a, b, "translator t", "refit it")
    check_same_clip(hub, b, "translator t", "refit it")
    check_same_clip(a, {**a, "model": "openclip:ViT-B-32-quickgelu@openai", "arch": "ViT-B-32-quickgelu"}, "t", "x")
    # a file whose MODEL string and identity disagree is not trusted
    bad = _translator(tmp_path / "bad.safetensors", {"clip_model": "openclip:ViT-B-32@openai", "clip_identity": gelu})
    with pytest.raises(TranslatorMismatch, match="names CLIP 'openclip:ViT-B-32@openai' but records"):
        load_translator(bad)


def test_embedding_files_record_and_check_the_clip(tmp_path):
    from pipelines.models.text import load_embeddings, save_embeddings
    from pipelines.models.zoo import OFFICIAL_PROVENANCE

    emb = np.ones((2, 32), np.float32)
    tiny = load_clip("openclip:tiny@random").identity
    p = save_embeddings(tmp_path / "e.parquet", ["a", "b"], emb, tiny, ["{}"])
    assert json.loads(load_embeddings(p, clip_model=tiny)[2]["clip_identity"]) == tiny
    with pytest.raises(ClipIdentityMismatch, match="re-embed"):
        load_embeddings(p, clip_model="openclip:tiny@random?act=quickgelu")
    # files from before identities (clip_model only) that name an openai tag: refused, unless imported
    import pyarrow.parquet as pq

    t = pq.read_table(p)
    old = {b"clip_model": b"openclip:ViT-L-14@openai", b"templates": b"{}"}
    pq.write_table(t.replace_schema_metadata(old), tmp_path / "old.parquet")
    with pytest.raises(BadInput, match="before sing recorded CLIP activations.*re-embed it"):
        load_embeddings(tmp_path / "old.parquet")
    prov = json.dumps({"note": OFFICIAL_PROVENANCE, "prompt": "mean"}).encode()
    pq.write_table(t.replace_schema_metadata({**old, b"provenance": prov}), tmp_path / "official.parquet")
    assert load_embeddings(tmp_path / "official.parquet", clip_model="openclip:ViT-L-14@openai")[0] == ["a", "b"]


def test_derived_cache_keys_on_the_full_identity(tmp_path, monkeypatch):
    from pipelines.models import derived_cache

    monkeypatch.setenv("SING_CACHE", str(tmp_path))
    clip = load_clip("openclip:tiny@random")
    calls = []

    def get():
        calls.append(1)
        return clip

    hub = {**clip_identity("openclip:ViT-B-32@openai", resolve_weights=False), "hub_revision": "r1",
           "weights_sha256": "a" * 64}
    variants = [hub, {**hub, "hub_revision": "r2"}, {**hub, "weights_sha256": "b" * 64},
                {**hub, "activation": "gelu", "id": "clip-other", "config_sha256": "0" * 16}]
    keys = [derived_cache.clip_identity(v) for v in variants]
    assert len({json.dumps(k) for k in keys}) == 4
    same_net = {**hub, "model": "openclip:ViT-B-32-quickgelu@openai", "arch": "ViT-B-32-quickgelu"}
    assert derived_cache.clip_identity(same_net) == keys[0]
    with pytest.raises(ValueError, match="without its weights"):  # never keyed by the MODEL string alone
        derived_cache.clip_identity(clip_identity("openclip:ViT-B-32@openai", resolve_weights=False))
    first = derived_cache.text_embeddings(variants[0], ["cat"], ["{}"], get)
    again = derived_cache.text_embeddings(variants[0], ["cat"], ["{}"], get)
    assert len(calls) == 1 and np.array_equal(first, again)  # a hit: CLIP not asked
    for v in variants[1:]:  # a moved revision, other weights, another activation: recomputed
        derived_cache.text_embeddings(v, ["cat"], ["{}"], get)
    assert len(calls) == 4
