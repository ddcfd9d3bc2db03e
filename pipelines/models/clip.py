"""CLIP models (open_clip) for the translator target space, prompts and text embeddings.

What a MODEL string builds (config, the tag's own settings such as QuickGELU for every
`openai` tag, the stated activation, the weights' file) is decided by
pipelines.models.clip_source; this module builds it and embeds with it.

    load_clip("openclip:ViT-L-14@openai")   pretrained tag, QuickGELU (needs the weights in the HF cache)
    load_clip("openclip:ViT-B-32@random")   any open_clip config, seeded random init
    load_clip("openclip:tiny@random")       the project's tiny config (tests, seconds on CPU)
    load_clip("openclip:ViT-B-32@/p/ckpt.safetensors")   local weights, never unpickles code
    load_clip("openclip:ViT-B-32@/p/ckpt.safetensors?act=quickgelu")   ... trained with QuickGELU

Embeddings are returned UNnormalised (float32); the translator maps to raw CLIP image
embeddings, and angles are scale free.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from pipelines.models.checkpoints import apply_state_dict, load_state_dict_file, state_dict_sha256
from pipelines.models.clip_source import TINY_CFG, ClipSource, identity, resolve_clip, weights_file
from pipelines.models.weights import require_weights
from pipelines.models.preprocess import PreprocessSpec
from pipelines.models.registry import download_error, offline_error, seeded
from pipelines.models.spec import UnknownModelError, parse_model_spec

log = logging.getLogger(__name__)

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
    identity: dict = field(default_factory=dict)  # pipelines.models.clip_source.identity: what files record

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


def _tokenizer(src: ClipSource):
    import open_clip

    if src.arch == "tiny":
        return open_clip.tokenizer.SimpleTokenizer(context_length=TINY_CFG["text_cfg"]["context_length"])
    try:
        return open_clip.get_tokenizer(src.arch)
    except Exception as e:  # noqa: BLE001 - HF tokenizers download their vocabulary
        if download_error(e):
            raise offline_error(src.spec, e) from e
        raise


def _build(src: ClipSource, path: str | None) -> torch.nn.Module:
    """The network the source describes (clip_source: the tag's settings over the config,
    the stated activation), with its weights."""
    import open_clip

    if src.arch == "tiny":
        from open_clip.model import CLIP

        module = CLIP(**src.model_cfg)
    elif src.spec.weights == "pretrained":  # open_clip's own checkpoint loader (weights_only=True)
        module = open_clip.create_model(src.arch, pretrained=path, force_preprocess_cfg=src.preprocess_cfg,
                                        **src.build_kwargs())
    else:  # no tower downloads its own base weights: random is random, a checkpoint replaces them
        module = open_clip.create_model(src.arch, pretrained=None, pretrained_text=False, **src.build_kwargs())
    if src.spec.weights == "file":
        apply_state_dict(module, load_state_dict_file(path), src.spec.path)
    _check_activation(module, src)
    return module


def _check_activation(module, src: ClipSource) -> None:
    """The built network has the activation it was asked for (open_clip takes quick_gelu as a
    keyword: a release that ignored it would otherwise go unnoticed)."""
    from open_clip.transformer import QuickGELU

    n_quick = sum(isinstance(m, QuickGELU) for m in module.modules())
    if src.quick_gelu != (n_quick > 0):
        raise RuntimeError(f"{src.spec.raw}: asked open_clip for {src.activation}, but the built model has "
                           f"{n_quick} QuickGELU layers")


def load_clip(spec: str, device="cpu") -> ClipModel:
    ms = parse_model_spec(spec)
    if ms.source != "openclip":
        raise UnknownModelError(f"{spec!r} is not a CLIP model (openclip:ARCH@TAG|random|/path)")
    if ms.weights == "pretrained":
        require_weights(ms)  # decides online/offline before anything (the tokenizer too) asks the hub
    src = resolve_clip(ms)
    tokenizer = _tokenizer(src)
    path = weights_file(src)
    module = seeded(ms, lambda: _build(src, path))  # a random init is the same in every process
    module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    embed_dim = int(module.text_projection.shape[1]) if getattr(module, "text_projection", None) is not None \
        and isinstance(module.text_projection, torch.Tensor) else None
    if embed_dim is None:
        with torch.inference_mode():
            embed_dim = int(module.encode_text(tokenizer(["a"])).shape[-1])
    ident = identity(src, path)
    clip = ClipModel(model_id=ms.model_id, module=module, preprocess=_preprocess(module), embed_dim=embed_dim,
                     tokenizer=tokenizer, checkpoint_sha256=ident["weights_sha256"] if ms.weights == "file" else None,
                     identity=ident)
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
