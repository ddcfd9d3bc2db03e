"""OpenAI's CLIPs as they were trained: QuickGELU (issue 22).

A random open_clip checkpoint with QuickGELU is placed in an offline hub cache under the
`openai` tag's own repo id (read from open_clip's pretrained cfg), the way huggingface_hub
stores it (a blob named by its sha256, a snapshot link). Then `sing embed-text` (the CLI,
in a fresh process) and the CLIP image path of fit-translator (FeatureActor over a shard the
read stage decodes) must give that checkpoint's embeddings as open_clip's own QuickGELU
config computes them (float64, open_clip's own eval transform); the same weights built with
GELU must give other ones, so the test can fail.

Architectures: the smallest `openai`-tagged ones of each kind, ViT-B-32 (151 M parameters)
and RN50 (ModifiedResNet, 102 M), at real size since `openclip:ARCH@openai` builds the real
config; stored as float16 (half the bytes to write and read).

The weights: at open_clip's init the MLPs' pre-activations sit near 0, where GELU and
QuickGELU differ by < 1e-2, and the embeddings' 1 - cosine is ~1e-4: too close to the 0.9999
bar to tell the two apart. So the checkpoint's MLPs work where the two differ most: first-layer
biases around -2.5 (QuickGELU(-2.5) is twice GELU(-2.5)) and output weights x10, so the MLPs
carry the residual stream; GELU then gives cosines of ~0.95.

ModifiedResNet's image tower has no GELU (ReLU, attention pooling): for RN50 only the text
tower depends on the activation, and the test checks exactly that.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REVISION = "5eed0c1b" * 5
PROMPTS = ["an image of a goldfish", "a photo of a sports car", "jellyfish"]
ARCHS = ("ViT-B-32", "RN50")
ROOT = Path(__file__).resolve().parents[1]


def _quickgelu_checkpoint(arch: str, seed: int) -> dict:
    import open_clip

    torch.manual_seed(seed)
    model = open_clip.create_model(f"{arch}-quickgelu", pretrained=None, pretrained_text=False)
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for k, v in model.state_dict().items():
        if k.endswith("mlp.c_fc.bias"):
            v = -2.5 + 0.1 * torch.randn(v.shape, generator=g)
        elif k.endswith("mlp.c_proj.weight"):
            v = v * 10
        sd[k] = v.detach().to(torch.float16).contiguous()
    return sd


def _place(cache: Path, repo: str, filename: str, sd: dict) -> tuple[Path, str]:
    """huggingface_hub's layout: blobs/<sha256>, snapshots/REV/FILE -> the blob, refs/main."""
    from safetensors.torch import save_file

    root = cache / ("models--" + repo.replace("/", "--"))
    (root / "blobs").mkdir(parents=True)
    tmp = root / "blobs" / "incoming"
    save_file(sd, str(tmp))
    h = hashlib.sha256()
    with open(tmp, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    sha = h.hexdigest()
    tmp.rename(root / "blobs" / sha)
    snap = root / "snapshots" / REVISION
    snap.mkdir(parents=True)
    (snap / filename).symlink_to(Path("..", "..", "blobs", sha))
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(REVISION)
    return snap / filename, sha


def _reference(arch: str, path: Path, quick_gelu: bool, images: list[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
    """(text, image) embeddings of open_clip's own model (its -quickgelu config for QuickGELU,
    the plain one for GELU) over the checkpoint, with open_clip's own eval transform, float64."""
    import open_clip

    name = f"{arch}-quickgelu" if quick_gelu else arch
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=str(path), pretrained_text=False)
    model = model.double().eval()
    with torch.no_grad():
        text = model.encode_text(open_clip.get_tokenizer(name)(PROMPTS))
        image = model.encode_image(torch.stack([preprocess(im) for im in images]).double())
    return text.numpy(), image.numpy()


def _cos(a, b) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


@pytest.fixture(scope="module")
def openai_hub(tmp_path_factory):
    """Per arch: checkpoint path, sha256, repo id, references (QuickGELU and GELU); photos."""
    import open_clip
    import skimage.data

    tmp = tmp_path_factory.mktemp("openai_hub")
    cache = tmp / "hub"
    photos = tmp / "photos"
    for synset, img in (("n02124075", skimage.data.chelsea()), ("n07920052", skimage.data.coffee())):
        (photos / synset).mkdir(parents=True)
        Image.fromarray(img).save(photos / synset / "photo.jpg", quality=92)
    files = sorted(photos.glob("*/photo.jpg"))
    images = [Image.open(p).convert("RGB") for p in files]
    out = {"cache": cache, "photos": photos, "keys": [f"{p.parent.name}/photo" for p in files]}
    for i, arch in enumerate(ARCHS):
        repo, filename = os.path.split(open_clip.get_pretrained_cfg(arch, "openai")["hf_hub"])
        path, sha = _place(cache, repo, "open_clip_model.safetensors", _quickgelu_checkpoint(arch, 10 + i))
        assert filename == ""  # open_clip's default file; it prefers the .safetensors twin
        quick, gelu = _reference(arch, path, True, images), _reference(arch, path, False, images)
        out[arch] = {"repo": repo, "sha": sha, "quick": quick, "gelu": gelu}
    return out


def _check_identity(ident: dict, arch: str, hub: dict) -> None:
    assert ident["activation"] == "quickgelu" and ident["quick_gelu"] is True
    assert (ident["arch"], ident["tag"], ident["hub_repo"]) == (arch, "openai", hub[arch]["repo"])
    assert ident["hub_revision"] == REVISION and ident["weights_sha256"] == hub[arch]["sha"]


@pytest.mark.parametrize("arch", ARCHS)
def test_embed_text_cli_is_the_quickgelu_network(openai_hub, arch, tmp_path):
    out = tmp_path / "text.parquet"
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    env = {**os.environ, "HF_HUB_CACHE": str(openai_hub["cache"]), "HF_HUB_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf_home"), "SING_CACHE": str(tmp_path / "sing_cache")}
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", "-q", "embed-text", "--clip",
                           f"openclip:{arch}@openai", "--prompts", str(tmp_path / "prompts.txt"), "--raw",
                           "--out", str(out)], env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from pipelines.models.text import load_embeddings

    names, emb, meta = load_embeddings(out)
    assert names == PROMPTS
    quick, gelu = openai_hub[arch]["quick"][0], openai_hub[arch]["gelu"][0]
    assert _cos(emb, quick).min() > 0.9999
    assert _cos(emb, gelu).max() < 0.995  # GELU is another network: the test discriminates
    assert _cos(quick, gelu).max() < 0.995
    _check_identity(json.loads(meta["clip_identity"]), arch, openai_hub)


def test_clip_image_path_is_the_quickgelu_network(openai_hub, tmp_path, monkeypatch):
    """fit-translator's CLIP image embeddings: the read stage decodes a shard, FeatureActor
    (kind clip) loads `openclip:ARCH@openai` from the hub cache and embeds."""
    from huggingface_hub import constants

    from pipelines.jobs.make_shards import make_shards
    from pipelines.stages.actors import FeatureActor
    from pipelines.stages.read import read_decode

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(openai_hub["cache"]))  # read at each lookup
    monkeypatch.setenv("SING_CACHE", str(tmp_path / "sing_cache"))
    make_shards(str(openai_hub["photos"]), str(tmp_path / "shards"), per_shard=8)
    shard = str(next((tmp_path / "shards").glob("*.tar")))
    for arch in ARCHS:
        actor = FeatureActor("c", "clip", f"openclip:{arch}@openai")
        got = {}
        for chunk in read_decode({"path": [shard]}, [actor.view]):
            res = actor(chunk)
            got.update({k: e for k, s, e in zip(chunk["key"], chunk["status"], res["c/emb"]) if s == "ok"})
        emb = np.stack([got[k] for k in openai_hub["keys"]])
        quick, gelu = openai_hub[arch]["quick"][1], openai_hub[arch]["gelu"][1]
        assert _cos(emb, quick).min() > 0.9999, arch
        _check_identity(actor.model.identity, arch, openai_hub)
        if arch == "RN50":  # ModifiedResNet: ReLU, no GELU of either kind in the image tower
            assert _cos(quick, gelu).min() > 1 - 1e-9
        else:
            assert _cos(emb, gelu).max() < 0.995 and _cos(quick, gelu).max() < 0.995
