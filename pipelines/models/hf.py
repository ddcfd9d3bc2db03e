"""`hf:ORG/NAME` classifiers: transformers AutoModelForImageClassification and the eval
transform its image processor describes (the paper's DINOv2 is loaded this way by the official
code).

    hf:facebook/dinov2-large-imagenet1k-1-layer        weights, config and processor config
                                                        from the HF hub (or its local cache)
    hf:ORG/NAME@random                                  seeded random weights, config from the
                                                        cache (or the facts below for the paper model)
    hf:ORG/NAME@/path/model.safetensors                 local weights, config as for @random

The model is wrapped so that it maps pixel_values to a logits tensor; the generic head hook
then captures the classifier's input (for DINOv2: the CLS token concatenated with the mean
patch token, 2 x 1024).
"""
from __future__ import annotations

import torch

from pipelines.models.preprocess import PreprocessSpec

# Facts (public model cards / config files) for building the paper's DINOv2 classifier offline
# with random weights when no HF cache holds its config: the ViT-L/14 DINOv2 backbone with a
# linear head on [CLS, mean(patches)], and its BiT image processor.
KNOWN_CONFIGS: dict[str, dict] = {
    "facebook/dinov2-large-imagenet1k-1-layer": {
        "model_type": "dinov2", "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
        "patch_size": 14, "image_size": 518, "mlp_ratio": 4, "layerscale_value": 1.0,
        "layer_norm_eps": 1e-6, "qkv_bias": True, "use_swiglu_ffn": False, "num_labels": 1000,
    },
}
KNOWN_PROCESSORS: dict[str, dict] = {
    "facebook/dinov2-large-imagenet1k-1-layer": {
        "image_processor_type": "BitImageProcessor", "do_resize": True, "size": {"shortest_edge": 256},
        "resample": 3, "do_center_crop": True, "crop_size": {"height": 224, "width": 224},
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225], "do_convert_rgb": True,
    },
}

# PIL resampling filters by the integer the processor configs store
_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic"}


class HFLogits(torch.nn.Module):
    """pixel_values -> logits tensor (transformers models return an output object)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits


def processor_spec(cfg: dict, repo: str) -> PreprocessSpec:
    """The PreprocessSpec of an image processor config (preprocessor_config.json), for the
    processors whose eval transform is resize + centre crop + rescale + normalise (BiT,
    DINOv2, ViT, DeiT, ...). Anything else is refused, never approximated."""
    def bad(why: str) -> ValueError:
        return ValueError(f"hf:{repo}: unsupported image processor settings ({why}); "
                          "supported: resize to a shortest edge or to height x width, optional centre crop, "
                          "rescale 1/255, normalise")

    if not cfg.get("do_resize", True):
        raise bad("do_resize is false")
    if cfg.get("do_rescale", True) and abs(float(cfg.get("rescale_factor", 1 / 255)) - 1 / 255) > 1e-12:
        raise bad(f"rescale_factor {cfg.get('rescale_factor')}")
    if not cfg.get("do_rescale", True) or not cfg.get("do_normalize", True):
        raise bad("rescale or normalise switched off")
    interp = _RESAMPLE.get(int(cfg.get("resample", 2)))
    if interp is None:
        raise bad(f"resample filter {cfg.get('resample')}")
    size = cfg.get("size") or {}
    if isinstance(size, int):
        size = {"shortest_edge": size}
    crop = cfg.get("crop_size") if cfg.get("do_center_crop", False) else None
    if isinstance(crop, int):
        crop = {"height": crop, "width": crop}
    mean, std = tuple(cfg.get("image_mean") or ()), tuple(cfg.get("image_std") or ())
    if len(mean) != 3 or len(std) != 3:
        raise bad("image_mean/image_std must have three values")
    if set(size) == {"shortest_edge"}:
        if crop is None:
            raise bad("a shortest-edge resize without a centre crop gives images of varying size")
        return PreprocessSpec(size=(crop["height"], crop["width"]), resize=int(size["shortest_edge"]),
                              interpolation=interp, mean=mean, std=std, crop_rounding="floor")
    if set(size) == {"height", "width"}:
        hw = (int(size["height"]), int(size["width"]))
        out = (crop["height"], crop["width"]) if crop else hw
        return PreprocessSpec(size=out, resize=hw, resize_mode="squash", interpolation=interp, mean=mean,
                              std=std, crop_rounding="floor")
    raise bad(f"size {size}")


def processor_config(repo: str) -> dict:
    """The raw preprocessor_config.json (from the hub or its cache; else the facts above).
    Pretrained weights that are not cached fail at their own check, so the facts never stand in
    for a processor that the weights would bring."""
    from pipelines.models.hub import hub_online

    hub_online()  # decide once: an unreachable hub puts the process offline (no retry storm)
    try:
        from transformers.image_processing_base import ImageProcessingMixin
    except ImportError:  # transformers 4.x before the module split
        from transformers.image_processing_utils import ImageProcessingMixin
    try:
        return ImageProcessingMixin.get_image_processor_dict(repo)[0]
    except OSError:
        if repo in KNOWN_PROCESSORS:
            return dict(KNOWN_PROCESSORS[repo])
        raise


def config(repo: str):
    """The model's config.json as a transformers config (from the hub or its cache; else the
    facts above)."""
    from transformers import AutoConfig

    from pipelines.models.hub import hub_online

    hub_online()
    try:
        return AutoConfig.from_pretrained(repo)
    except OSError:
        if repo in KNOWN_CONFIGS:
            cfg = dict(KNOWN_CONFIGS[repo])
            return AutoConfig.for_model(cfg.pop("model_type"), **cfg)
        raise FileNotFoundError(
            f"hf:{repo}: no config.json in the local HF cache ({_cache_dir()}) and none known offline; "
            f"download it once (huggingface-cli download {repo} config.json preprocessor_config.json)") from None


def _cache_dir() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE
