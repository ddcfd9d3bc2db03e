"""Every paper model's host view equals its own reference transform (timm create_transform,
torchvision Weights.transforms(), the HF PIL image processor) on real photos, squash, padding
and non-square inputs included; the device view (tensor resize) stays within its tolerance."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.stages.device_decode import tensor_view
from pipelines.io.images import normalise, to_uint8_view
from pipelines.models.resolve import resolve_preprocess
from pipelines.models.preprocess import PreprocessSpec, timm_spec
from pipelines.models.zoo import PAPER_MODELS


@pytest.fixture(scope="module")
def photos():
    """Real photos of several shapes: landscape, portrait, square, grey, and a small one that
    the 448-px models upscale."""
    import skimage.data

    imgs = [Image.fromarray(skimage.data.chelsea()), Image.fromarray(skimage.data.rocket()),
            Image.fromarray(skimage.data.astronaut()), Image.fromarray(skimage.data.camera()).convert("RGB"),
            Image.fromarray(skimage.data.coffee()).resize((173, 131), Image.Resampling.BILINEAR)]
    assert {im.size[0] > im.size[1] for im in imgs} == {True, False}  # both orientations
    return imgs


def _reference(model: str):
    """The model's own eval transform, built by its library from its own config."""
    source = model.split(":", 1)[0]
    if source == "timm":
        import timm
        from timm.data import create_transform, resolve_data_config

        cfg = resolve_data_config(pretrained_cfg=timm.models.get_pretrained_cfg(model.split(":", 1)[1]).to_dict())
        return create_transform(**cfg, is_training=False)
    if source == "torchvision":
        import torchvision

        name, tag = model.split(":", 1)[1].split(".")
        return torchvision.models.get_model_weights(name)[tag].transforms()
    if source == "hf":
        from transformers.models.bit import BitImageProcessorPil

        from pipelines.models.hf import KNOWN_PROCESSORS

        cfg = {k: v for k, v in KNOWN_PROCESSORS[model.split(":", 1)[1]].items() if k != "image_processor_type"}
        proc = BitImageProcessorPil(**cfg)
        return lambda img: torch.as_tensor(np.asarray(proc(img, return_tensors="np")["pixel_values"][0]))
    raise AssertionError(model)


def _grey_levels(ours: torch.Tensor, ref: torch.Tensor, spec: PreprocessSpec) -> float:
    """Largest difference between two normalised images, in grey levels of the uint8 input."""
    std = torch.tensor(spec.std).view(3, 1, 1)
    return float(((ours - ref).abs() * std * 255).max())


@pytest.mark.parametrize("zoo", PAPER_MODELS, ids=lambda m: m.name)
def test_host_view_equals_the_models_reference_transform(zoo, photos):
    spec, _ = resolve_preprocess(zoo.model)
    ref = _reference(zoo.model)
    for img in photos:
        want = ref(img)
        got = normalise(to_uint8_view(img, spec)[None], spec)[0]
        assert got.shape == want.shape, (img.size, got.shape, want.shape)
        assert _grey_levels(got, want.float(), spec) <= 1.0 + 1e-3, (zoo.name, img.size)


@pytest.mark.parametrize("crop_mode", ["center", "squash", "border"])
@pytest.mark.parametrize("crop_pct", [0.875, 1.15])  # 1.15: the crop is larger than the resize: padding
def test_non_square_and_padded_views_follow_timm(crop_mode, crop_pct, photos):
    from timm.data.transforms_factory import transforms_imagenet_eval

    cfg = {"input_size": (3, 160, 224), "crop_pct": crop_pct, "crop_mode": crop_mode, "interpolation": "bicubic",
           "mean": (0.48, 0.45, 0.4), "std": (0.27, 0.26, 0.28)}
    spec = timm_spec(cfg)
    ref = transforms_imagenet_eval(img_size=(160, 224), crop_pct=crop_pct, crop_mode=crop_mode,
                                   interpolation="bicubic", mean=cfg["mean"], std=cfg["std"])
    for img in photos:
        got = normalise(to_uint8_view(img, spec)[None], spec)[0]
        assert got.shape == (3, 160, 224)
        assert _grey_levels(got, ref(img), spec) <= 1.0 + 1e-3, (crop_mode, crop_pct, img.size)


def test_hf_crop_offsets_differ_from_torchvision_where_they_should():
    """(n - c) odd: torchvision rounds half to even, HF floors. A gradient shows the shift."""
    a = np.tile(np.arange(235, dtype=np.uint8)[None, :, None], (230, 1, 3))  # 235 wide, 230 tall
    img = Image.fromarray(a)
    tv = PreprocessSpec(224, 230, "bilinear", (0.5,) * 3, (0.5,) * 3)
    hf = PreprocessSpec(224, 230, "bilinear", (0.5,) * 3, (0.5,) * 3, crop_rounding="floor")
    # resized 235x230 (no-op); x offsets: round(11 / 2) = 6 (half to even), 11 // 2 = 5
    assert int(to_uint8_view(img, tv)[0, 0, 0]) == 6 and int(to_uint8_view(img, hf)[0, 0, 0]) == 5


@pytest.mark.parametrize("zoo", [m for m in PAPER_MODELS if m.name in ("resnet", "dinov2", "eva02_large")],
                         ids=lambda m: m.name)
def test_device_view_within_the_documented_tolerance(zoo, photos):
    """Tensor (antialiased) resize vs PIL: mean < 1.5 grey levels, p99 <= 12, no shift."""
    spec, _ = resolve_preprocess(zoo.model)
    for img in photos:
        host = to_uint8_view(img, spec).astype(np.int16)
        t = torch.from_numpy(np.asarray(img.convert("RGB"))).permute(2, 0, 1).contiguous()
        dev = tensor_view(t, spec).numpy().astype(np.int16)
        assert dev.shape == host.shape
        d = np.abs(dev - host)
        assert d.mean() < 1.5 and np.percentile(d, 99) <= 12, (zoo.name, img.size, d.mean(), np.percentile(d, 99))


def test_device_view_pads_like_the_host():
    spec = timm_spec({"input_size": (3, 160, 224), "crop_pct": 1.15, "crop_mode": "border",
                      "interpolation": "bilinear", "mean": (0.5, 0.25, 0.0), "std": (1, 1, 1)})
    img = Image.fromarray(np.full((90, 300, 3), 200, np.uint8))
    host = to_uint8_view(img, spec)
    dev = tensor_view(torch.from_numpy(np.asarray(img)).permute(2, 0, 1).contiguous(), spec).numpy()
    assert (host[0, 0] == [128, 64, 0]).all()  # the fill: round(255 * mean)
    assert (dev == host).mean() > 0.99


@pytest.mark.parametrize("resize_mode", ["shortest", "squash", "longest"])
def test_clip_views_follow_open_clip(resize_mode, photos):
    from open_clip.transform import PreprocessCfg, image_transform_v2

    from pipelines.models.clip import _preprocess

    class Visual:  # what _preprocess reads from an open_clip model
        image_size = 64
        preprocess_cfg = {"resize_mode": resize_mode, "interpolation": "bicubic", "fill_color": 0}

    class Module:
        visual = Visual()

    spec = _preprocess(Module())
    ref = image_transform_v2(PreprocessCfg(size=64, resize_mode=resize_mode), is_train=False)
    for img in photos:
        got = normalise(to_uint8_view(img, spec)[None], spec)[0]
        assert _grey_levels(got, ref(img), spec) <= 1.0 + 1e-3, (resize_mode, img.size)
