"""The eval transform of a classifier, as data, and its geometry. No torch here: the read tasks
import this (and images.py, shards.py) and stay light processes (importing torch costs ~275 MB
of private memory per process; a GPU node runs a read task per core).

A transform is: resize (one of four rules), then a centre crop that pads where the crop is
larger than the resized image, then (x/255 - mean)/std. The rules are those of the reference
transforms each model was evaluated with:

    shortest    torchvision Resize(int): the shorter side becomes `resize`, the longer side
                int(resize * long / short) (torchvision weights transforms, timm 'center' crop
                mode with a square input, open_clip 'shortest', the HF BiT/DINOv2 processors)
    squash      Resize((h, w)) ignoring the aspect ratio (timm crop_mode 'squash', e.g.
                EVA02; open_clip 'squash')
    keep_ratio  timm ResizeKeepRatio(longest=0): scale so the image covers the (h, w) box
                (timm 'center' crop mode with a non-square input)
    longest     timm ResizeKeepRatio(longest=1): scale so the image fits inside the box, the
                crop then pads with `fill` (timm crop_mode 'border', open_clip 'longest')

Crop offsets: `round` is torchvision's CenterCrop (int(round((n - c) / 2)), padding floor
before / ceil after); `floor` is the HF image processors' center_crop ((n - c) // 2, padding
ceil before).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

RESIZE_MODES = ("shortest", "squash", "keep_ratio", "longest")
CROP_ROUNDING = ("round", "floor")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos")


def _hw(v, what: str) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{what} must be an int or (height, width), got {v!r}")
        h, w = int(v[0]), int(v[1])
    else:
        h = w = int(v)
    if h < 1 or w < 1:
        raise ValueError(f"{what} must be positive, got {v!r}")
    return h, w


def _canonical(hw: tuple[int, int]):
    return hw[0] if hw[0] == hw[1] else hw


@dataclass(frozen=True)
class Geometry:
    """Where one image's view comes from: resize to (new_w, new_h), then the crop box of size
    (crop_w, crop_h) whose top-left corner is (x0, y0) in the resized image; box pixels outside
    the resized image are `fill` (padding)."""

    new_w: int
    new_h: int
    x0: int
    y0: int
    crop_w: int
    crop_h: int

    @property
    def pads(self) -> bool:
        return self.x0 < 0 or self.y0 < 0 or self.x0 + self.crop_w > self.new_w or self.y0 + self.crop_h > self.new_h


def _offset(n: int, c: int, rounding: str) -> int:
    """Top-left of a centred crop of c out of n (negative: padding before)."""
    if c > n:  # padded first: torchvision pads floor((c-n)/2) before, HF ceil((c-n)/2)
        return -((c - n) // 2) if rounding == "round" else -((c - n + 1) // 2)
    return int(round((n - c) / 2.0)) if rounding == "round" else (n - c) // 2


@dataclass(frozen=True)
class PreprocessSpec:
    """Eval transform: resize (resize_mode), centre crop to `size`, then (x/255 - mean)/std.
    `size` and `resize` are an int (square / shorter side) or (height, width). Images with
    equal view_key share one decode + resize + crop."""

    size: int | tuple[int, int]
    resize: int | tuple[int, int]
    interpolation: str  # "bilinear" | "bicubic" | "nearest" | "lanczos"
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize_mode: str = "shortest"
    crop_rounding: str = "round"
    fill: tuple[int, int, int] = (0, 0, 0)  # padding colour (uint8 RGB)

    def __post_init__(self):
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"unsupported interpolation {self.interpolation!r}; one of {', '.join(INTERPOLATIONS)}")
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"unknown resize mode {self.resize_mode!r}; one of {', '.join(RESIZE_MODES)}")
        if self.crop_rounding not in CROP_ROUNDING:
            raise ValueError(f"unknown crop rounding {self.crop_rounding!r}; one of {', '.join(CROP_ROUNDING)}")
        size = _hw(self.size, "crop size")
        resize = _hw(self.resize, "resize")
        if self.resize_mode == "shortest":
            if resize[0] != resize[1]:
                raise ValueError(f"resize_mode 'shortest' takes one shorter-side length, got {self.resize!r}")
            object.__setattr__(self, "resize", resize[0])
        else:
            object.__setattr__(self, "resize", resize)
        object.__setattr__(self, "size", _canonical(size))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        fill = tuple(int(v) for v in self.fill)
        if len(fill) != 3 or not all(0 <= v <= 255 for v in fill):
            raise ValueError(f"fill must be three uint8 values, got {self.fill!r}")
        object.__setattr__(self, "fill", fill)

    @property
    def crop_hw(self) -> tuple[int, int]:
        return _hw(self.size, "crop size")

    @property
    def view_key(self) -> str:
        """Names the uint8 view (everything before mean/std). The classic transform keeps its
        short historical key (224c-256r-bilinear)."""
        h, w = self.crop_hw
        if self.resize_mode == "shortest" and h == w and self.crop_rounding == "round":
            return f"{h}c-{self.resize}r-{self.interpolation}"
        r = self.resize if isinstance(self.resize, int) else f"{self.resize[0]}x{self.resize[1]}"
        key = f"{h}x{w}c-{r}{self.resize_mode}-{self.interpolation}-{self.crop_rounding}"
        if self.fill != (0, 0, 0):
            key += "-fill" + ".".join(str(v) for v in self.fill)
        return key

    def resized(self, w: int, h: int) -> tuple[int, int]:
        """(new_w, new_h) of a w x h image under the resize rule."""
        if self.resize_mode == "shortest":
            s = self.resize
            return (s, int(s * h / w)) if w <= h else (int(s * w / h), s)
        th, tw = self.resize
        if self.resize_mode == "squash":
            return tw, th
        rh, rw = h / th, w / tw
        ratio = max(rh, rw) if self.resize_mode == "longest" else min(rh, rw)
        # timm rounds with Python's round (half to even); keep at least one pixel
        return max(1, round(w / ratio)), max(1, round(h / ratio))

    def geometry(self, w: int, h: int) -> Geometry:
        nw, nh = self.resized(w, h)
        ch, cw = self.crop_hw
        return Geometry(nw, nh, _offset(nw, cw, self.crop_rounding), _offset(nh, ch, self.crop_rounding), cw, ch)

    def as_dict(self) -> dict:
        h, w = self.crop_hw
        return {"input_size": [h, w], "resize": self.resize if isinstance(self.resize, int) else list(self.resize),
                "resize_mode": self.resize_mode, "crop_rounding": self.crop_rounding, "fill": list(self.fill),
                "interpolation": self.interpolation, "mean": list(self.mean), "std": list(self.std)}


def timm_spec(cfg: dict) -> PreprocessSpec:
    """The PreprocessSpec of a timm data config (timm.data.resolve_data_config), following
    timm's transforms_imagenet_eval rule for rule."""
    _, h, w = cfg["input_size"]
    if cfg.get("crop_border_pixels"):
        raise ValueError("timm crop_border_pixels is not supported")
    crop_pct = cfg.get("crop_pct") or 0.875
    mode = cfg.get("crop_mode") or "center"
    scale = (math.floor(h / crop_pct), math.floor(w / crop_pct))
    interp = cfg.get("interpolation") or "bilinear"
    common = dict(size=(h, w), interpolation=interp, mean=tuple(cfg["mean"]), std=tuple(cfg["std"]))
    if mode == "squash":
        return PreprocessSpec(resize=scale, resize_mode="squash", **common)
    if mode == "border":
        fill = tuple(round(255 * v) for v in cfg["mean"])
        return PreprocessSpec(resize=scale, resize_mode="longest", fill=fill, **common)
    if mode != "center":
        raise ValueError(f"unknown timm crop_mode {mode!r}")
    if scale[0] == scale[1]:
        return PreprocessSpec(resize=scale[0], resize_mode="shortest", **common)
    return PreprocessSpec(resize=scale, resize_mode="keep_ratio", **common)


def describe(spec: PreprocessSpec, crop_pct: float | None = None) -> dict:
    """The `sing models` description: input_size [H, W], resize, crop_mode, crop_pct,
    interpolation, mean, std (crop_mode in timm's words: center, squash, border)."""
    h, w = spec.crop_hw
    crop_mode = {"shortest": "center", "keep_ratio": "center", "squash": "squash", "longest": "border"}[spec.resize_mode]
    if crop_pct is None:
        short = spec.resize if isinstance(spec.resize, int) else spec.resize[0]
        crop_pct = round(h / short, 4)
    d = {"input_size": [h, w], "resize": spec.resize if isinstance(spec.resize, int) else list(spec.resize),
         "crop_mode": crop_mode, "crop_pct": crop_pct, "interpolation": spec.interpolation,
         "mean": list(spec.mean), "std": list(spec.std)}
    if spec.crop_rounding != "round":
        d["crop_rounding"] = spec.crop_rounding
    return d
