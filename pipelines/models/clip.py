"""CLIP models (open_clip) for the translator target space, prompts and text embeddings.

    load_clip("openclip:ViT-L-14@openai")   pretrained tag (needs the weights in the HF cache)
    load_clip("openclip:ViT-B-32@random")   any open_clip config, seeded random init
    load_clip("openclip:tiny@random")       the project's tiny config (tests, seconds on CPU)
    load_clip("openclip:ViT-B-32@/p/ckpt.safetensors")   local weights, never unpickles code

Embeddings are returned UNnormalised (float32); the translator maps to raw CLIP image
embeddings, and angles are scale free.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from pipelines.models.hub import require_weights
from pipelines.models.spec import UnknownModelError, parse_model_spec
from pipelines.io.manifest import file_sha256
from pipelines.models.checkpoints import apply_state_dict, load_state_dict_file, state_dict_sha256
from pipelines.models.registry import download_error, offline_error, seed_for, suggest
from pipelines.models.preprocess import PreprocessSpec
from pipelines.io.remote import local_copy

log = logging.getLogger(__name__)

TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "patch_size": 16, "width": 64, "layers": 2, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}

TEMPLATES: dict[str, list[str]] = {
    "single": ["an image of a {}."],
    # the 7 templates the CLIP authors found best on ImageNet (CLIP repo, Prompt_Engineering
    # notebook) plus the plain "a photo of a {}."
    "ensemble": [
        "a photo of a {}.",
        "itap of a {}.",
        "a bad photo of the {}.",
        "a origami {}.",
        "a photo of the large {}.",
        "a {} in a video game.",
        "art of the {}.",
        "a photo of the small {}.",
    ],
}


@dataclass
class ClipModel:
    model_id: str
    module: torch.nn.Module
    preprocess: PreprocessSpec
    embed_dim: int
    tokenizer: object = field(repr=False, default=None)
    device: str = "cpu"
    checkpoint_sha256: str | None = None  # file sha256 for @/path; else computed by weights_sha256()

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """x: normalised (B, 3, S, S) -> (B, d) float32, not normalised."""
        with torch.inference_mode():
            z = self.module.encode_image(x, normalize=False)
        return z.float()

    def encode_text(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        """(N, d) float32, not normalised."""
        if isinstance(texts, str):
            raise TypeError("encode_text takes a list of strings")
        if not texts:
            return torch.zeros(0, self.embed_dim)
        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), batch_size):
                tok = self.tokenizer(list(texts[i: i + batch_size])).to(self.device)
                out.append(self.module.encode_text(tok, normalize=False).float())
        return torch.cat(out)

    def to(self, device) -> "ClipModel":
        self.module.to(device)
        self.device = str(torch.device(device))
        return self

    def weights_sha256(self) -> str:
        if self.checkpoint_sha256 is None:
            self.checkpoint_sha256 = state_dict_sha256(self.module.state_dict())
        return self.checkpoint_sha256


def _preprocess(module) -> PreprocessSpec:
    """open_clip's eval transform, rule for rule (open_clip.transform.image_transform):
    'shortest' Resize(size) + CenterCrop, 'squash' Resize((h, w)), 'longest' ResizeKeepRatio
    (longest=1) + CenterCropOrPad(fill_color)."""
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    visual = module.visual
    size = visual.image_size
    hw = (int(size[0]), int(size[1])) if isinstance(size, (tuple, list)) else (int(size), int(size))
    cfg = getattr(visual, "preprocess_cfg", None) or {}
    mean = tuple(cfg.get("mean") or OPENAI_DATASET_MEAN)
    std = tuple(cfg.get("std") or OPENAI_DATASET_STD)
    interp = cfg.get("interpolation") or "bicubic"
    mode = cfg.get("resize_mode", "shortest")
    common = dict(size=hw, interpolation=interp, mean=mean, std=std)
    if mode == "squash":
        return PreprocessSpec(resize=hw, resize_mode="squash", **common)
    if mode == "longest":
        fill = cfg.get("fill_color", 0)
        fill = tuple(fill) if isinstance(fill, (tuple, list)) else (int(fill),) * 3
        return PreprocessSpec(resize=hw, resize_mode="longest", fill=fill, **common)
    if mode != "shortest":
        raise ValueError(f"unknown open_clip resize_mode {mode!r}")
    if hw[0] == hw[1]:
        return PreprocessSpec(resize=hw[0], **common)
    return PreprocessSpec(resize=hw, resize_mode="keep_ratio", **common)


def _tiny_module():
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    return CLIP(embed_dim=TINY_CFG["embed_dim"], vision_cfg=CLIPVisionCfg(**TINY_CFG["vision_cfg"]),
                text_cfg=CLIPTextCfg(**TINY_CFG["text_cfg"]))


def load_clip(spec: str, device="cpu") -> ClipModel:
    import open_clip

    ms = parse_model_spec(spec)
    if ms.source != "openclip":
        raise UnknownModelError(f"{spec!r} is not a CLIP model (openclip:ARCH@TAG|random|/path)")
    if ms.weights == "pretrained":
        require_weights(ms)  # decides online/offline before anything (the tokenizer too) asks the hub
    arch = ms.name
    sha = None
    if arch == "tiny":
        if ms.weights == "pretrained":
            raise UnknownModelError("openclip:tiny has no pretrained weights; use openclip:tiny@random")
        build = _tiny_module
        tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=TINY_CFG["text_cfg"]["context_length"])
    else:
        models = open_clip.list_models()
        if arch not in models:
            raise UnknownModelError(f"open_clip has no model {arch!r}.{suggest(arch, models)}")

        def build():
            return open_clip.create_model(arch, pretrained=None)

        try:
            tokenizer = open_clip.get_tokenizer(arch)
        except Exception as e:  # noqa: BLE001 - HF tokenizers download their vocabulary
            if download_error(e):
                raise offline_error(ms, e) from e
            raise
    if ms.weights == "pretrained":
        tags = open_clip.list_pretrained_tags_by_model(arch)
        if ms.tag not in tags:
            raise UnknownModelError(f"open_clip has no pretrained tag {ms.tag!r} for {arch}; "
                                    f"available: {', '.join(tags) or 'none'}")
        try:
            module = open_clip.create_model(arch, pretrained=ms.tag)
        except Exception as e:  # noqa: BLE001
            if download_error(e) or "download" in str(e).lower():
                raise offline_error(ms, e) from e
            raise
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed_for(ms.model_id))
            module = build()
        if ms.weights == "file":
            path = local_copy(ms.path)  # a URL is downloaded to this node's cache
            apply_state_dict(module, load_state_dict_file(path), ms.path)
            sha = file_sha256(path)
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    embed_dim = int(module.text_projection.shape[1]) if getattr(module, "text_projection", None) is not None \
        and isinstance(module.text_projection, torch.Tensor) else None
    if embed_dim is None:
        with torch.inference_mode():
            embed_dim = int(module.encode_text(tokenizer(["a"])).shape[-1])
    clip = ClipModel(model_id=ms.model_id, module=module, preprocess=_preprocess(module),
                     embed_dim=embed_dim, tokenizer=tokenizer, checkpoint_sha256=sha)
    if str(device) != "cpu":
        clip.to(device)
    return clip


def embed_prompts(clip: ClipModel, class_names: list[str], templates: list[str] | str = "single") -> torch.Tensor:
    """(K, d) prompt embeddings: for each name, the mean over templates of the L2-normalised
    text embeddings, re-normalised to unit length (the standard CLIP zero-shot classifier;
    angles are scale free, so re-normalising only makes dot products cosines)."""
    if isinstance(templates, str):
        if templates not in TEMPLATES:
            raise KeyError(f"unknown template set {templates!r}; one of {sorted(TEMPLATES)}")
        templates = TEMPLATES[templates]
    if not templates or any("{}" not in t for t in templates):
        raise ValueError("each template must contain '{}'")
    names = list(class_names)
    if not names:
        return torch.zeros(0, clip.embed_dim)
    texts = [t.format(n) for n in names for t in templates]
    z = clip.encode_text(texts)
    z = torch.nn.functional.normalize(z, dim=-1).view(len(names), len(templates), -1).mean(1)
    return torch.nn.functional.normalize(z, dim=-1)
