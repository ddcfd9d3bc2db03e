import numpy as np
import pytest
import torch

from pipelines.errors import BadInput
from pipelines.models.clip import TEMPLATES, ClipModel, embed_prompts, load_clip
from pipelines.models.spec import UnknownModelError


@pytest.fixture(scope="module")
def tiny() -> ClipModel:
    return load_clip("openclip:tiny@random")


def test_tiny_clip_shapes_and_preprocess(tiny):
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    assert tiny.model_id == "openclip:tiny@random" and tiny.embed_dim == 32
    p = tiny.preprocess
    assert (p.size, p.resize, p.interpolation) == (64, 64, "bicubic")
    assert p.mean == tuple(OPENAI_DATASET_MEAN) and p.std == tuple(OPENAI_DATASET_STD)
    assert sum(x.numel() for x in tiny.module.parameters()) < 5_000_000
    z = tiny.encode_image(torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    assert z.shape == (3, 32) and z.dtype == torch.float32
    assert not torch.allclose(z.norm(dim=-1), torch.ones(3), atol=1e-3)  # not normalised
    assert not torch.allclose(z[0], z[1])
    t = tiny.encode_text(["a photo of a cat.", "a photo of a dog."])
    assert t.shape == (2, 32) and not torch.allclose(t[0], t[1])
    assert tiny.encode_text([]).shape == (0, 32)


def test_tiny_clip_on_a_real_photo(tiny, chelsea):
    from pipelines.io.images import normalise, to_uint8_view

    u8 = torch.from_numpy(to_uint8_view(chelsea, tiny.preprocess))[None]
    z = tiny.encode_image(normalise(u8, tiny.preprocess))
    assert z.shape == (1, 32) and torch.isfinite(z).all()


def test_seeded_and_batching_invariant(tiny):
    texts = [f"a photo of a thing number {i}." for i in range(5)]
    again = load_clip("openclip:tiny@random")
    torch.testing.assert_close(again.encode_text(texts), tiny.encode_text(texts))
    assert again.weights_sha256() == tiny.weights_sha256()
    torch.testing.assert_close(tiny.encode_text(texts, batch_size=2), tiny.encode_text(texts), atol=1e-5, rtol=1e-5)


def test_embed_prompts(tiny):
    names = ["cat", "espresso", "goldfish"]
    e = embed_prompts(tiny, names, TEMPLATES["ensemble"])
    assert e.shape == (3, 32)
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(3))
    # by hand: mean of L2-normalised template embeddings, re-normalised
    z = torch.nn.functional.normalize(tiny.encode_text([t.format("espresso") for t in TEMPLATES["ensemble"]]), dim=-1)
    torch.testing.assert_close(e[1], torch.nn.functional.normalize(z.mean(0), dim=0), atol=1e-5, rtol=1e-5)
    single = embed_prompts(tiny, names, "single")
    ref = torch.nn.functional.normalize(tiny.encode_text([f"an image of a {n}." for n in names]), dim=-1)
    torch.testing.assert_close(single, ref, atol=1e-5, rtol=1e-5)
    assert TEMPLATES["single"] == ["an image of a {}."] and len(TEMPLATES["ensemble"]) == 8
    with pytest.raises(ValueError, match="'{}'"):
        embed_prompts(tiny, names, ["no placeholder"])
    with pytest.raises(KeyError):
        embed_prompts(tiny, names, "nope")


def test_bad_specs():
    with pytest.raises(UnknownModelError, match="no model 'ViT-X-99'"):
        load_clip("openclip:ViT-X-99@random")
    with pytest.raises(UnknownModelError, match="no pretrained tag 'nope' for ViT-B-32; available: openai"):
        load_clip("openclip:ViT-B-32@nope")
    with pytest.raises(UnknownModelError, match="not a CLIP model"):
        load_clip("timm:test_vit@random")
    with pytest.raises(UnknownModelError, match="tiny has no pretrained"):
        load_clip("openclip:tiny@openai")


def test_pretrained_offline_is_a_clear_error():
    """Not cached and HF_HUB_OFFLINE=1 (conftest): refused before open_clip asks the hub."""
    from pipelines.models.hub import WeightsUnavailableError

    with pytest.raises(WeightsUnavailableError, match=r"openclip:RN50@openai are not in the local cache.*"
                                                      r"timm/resnet50_clip.openai.*openclip:RN50@/path"):
        load_clip("openclip:RN50@openai")


def test_a_failed_download_is_a_clear_error(monkeypatch):
    """The real open_clip path, the hub judged reachable, then the download failing."""
    import open_clip.factory
    import open_clip.pretrained

    import pipelines.models.hub

    monkeypatch.setattr(pipelines.models.hub, "hub_online", lambda: True)

    def no_net(*a, **k):
        from huggingface_hub.errors import LocalEntryNotFoundError

        raise LocalEntryNotFoundError("cannot find the requested files in the local cache")

    monkeypatch.setattr(open_clip.pretrained, "hf_hub_download", no_net, raising=False)
    monkeypatch.setattr(open_clip.pretrained, "download_pretrained", no_net)
    monkeypatch.setattr(open_clip.factory, "download_pretrained", no_net, raising=False)
    with pytest.raises(BadInput, match=r"could not download .*openclip:RN50@openai.*@/path"):
        load_clip("openclip:RN50@openai")


def test_local_checkpoint(tiny, tmp_path):
    from safetensors.torch import save_file

    p = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in tiny.module.state_dict().items()}, str(p))
    got = load_clip(f"openclip:tiny@{p}")
    assert got.model_id == "openclip:tiny@tiny.safetensors" and got.embed_dim == 32
    assert len(got.checkpoint_sha256) == 64 and got.checkpoint_sha256 != tiny.weights_sha256()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(got.encode_image(x).numpy(), tiny.encode_image(x).numpy(), rtol=1e-5, atol=1e-5)
    torch.save({"state_dict": {"module." + k: v for k, v in tiny.module.state_dict().items()}}, tmp_path / "t.pt")
    got = load_clip(f"openclip:tiny@{tmp_path}/t.pt")
    torch.testing.assert_close(got.encode_text(["a cat"]), tiny.encode_text(["a cat"]))


def test_real_config_random_init_builds():
    """A built-in open_clip config through the real create_model path (smallest: ViT-S-32)."""
    clip = load_clip("openclip:ViT-S-32@random")
    assert clip.preprocess.size == 224 and clip.embed_dim == 384
    t = clip.encode_text(["a photo of a cat."])
    assert t.shape == (1, clip.embed_dim) and torch.isfinite(t).all()
