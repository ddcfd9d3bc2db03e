"""Safe image decoding and the eval transform to uint8.

decode_image      bytes -> RGB PIL image: only photo formats, size checked from the header
                  before any pixel is decoded (decompression-bomb guard), truncated/corrupt data
                  raise ImageDecodeError (never a silently half-grey image).
to_uint8_view     PIL -> (crop_h, crop_w, 3) uint8: the model's resize rule, then the centre
                  crop (padded where needed), pixel for pixel the reference transform of each
                  model (torchvision, timm, HF processors on PIL images; pipelines.models.preprocess).
normalise         (B, H, W, 3) uint8 on any device -> (B, 3, H, W) normalised, done on the
                  model's device inside the actor.
"""

from __future__ import annotations

import io
import warnings
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageFile

if TYPE_CHECKING:
    import torch  # the read tasks import this module; torch would cost them ~275 MB each

    from pipelines.models.preprocess import PreprocessSpec  # a model's eval transform as data; io sits below models

MAX_PIXELS = 89_478_485  # PIL's default Image.MAX_IMAGE_PIXELS (warning threshold)

# Only photo formats are opened: EPS (runs Ghostscript), PDF, PSD and other exotic plugins
# widen the attack surface for no benefit on image datasets.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")

_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
             "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}


class ImageDecodeError(ValueError):
    """The bytes are not a decodable image within the limits."""


def _to_rgb(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit (or 32-bit int) grey: PIL's convert('RGB') clips at 255 (all white);
        # scale the 16-bit range down to 8 bits instead.
        a = np.asarray(img, dtype=np.float64)
        a = np.clip(np.round(a / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(a, mode="L").convert("RGB")
    if mode == "F":
        a = np.asarray(img, dtype=np.float64)
        a = a * 255.0 if a.size and np.nanmax(a) <= 1.0 else a
        a = np.clip(np.nan_to_num(np.round(a)), 0, 255).astype(np.uint8)
        return Image.fromarray(a, mode="L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Composite on white: the colour under fully transparent pixels is arbitrary (often
        # black) and convert('RGB') would expose it; white is what a viewer shows and what
        # cut-out product photos in ImageNet-like data look like.
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def open_image(data: bytes, max_pixels: int | None = MAX_PIXELS) -> Image.Image:
    """Open lazily (header only) and apply every check that needs no pixels: allowed format,
    positive size, the decompression-bomb limit. Shared by host decoding and by the device
    path, which must refuse a bomb before its bytes reach the GPU decoder."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ImageDecodeError(f"expected bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise ImageDecodeError("empty image data (0 bytes)")
    ImageFile.LOAD_TRUNCATED_IMAGES = False  # enforce: truncated data must raise, not pad grey
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as e:
        raise ImageDecodeError(f"refused before decoding: {e}") from None
    except Image.UnidentifiedImageError:
        raise ImageDecodeError(
            f"not a recognised image ({len(data)} bytes, starts with {bytes(data[:8])!r}; "
            f"accepted formats: {', '.join(ALLOWED_FORMATS)})") from None
    except Exception as e:  # noqa: BLE001 - corrupt headers raise many types
        raise ImageDecodeError(f"corrupt image header: {type(e).__name__}: {e}") from None
    w, h = img.size
    if w <= 0 or h <= 0:
        raise ImageDecodeError(f"invalid image size {w}x{h}")
    if max_pixels is not None and w * h > max_pixels:
        raise ImageDecodeError(
            f"image is {w}x{h} = {w * h} pixels, above the limit of {max_pixels} "
            "(decompression bomb guard); refused before decoding")
    return img


def decode_image(data: bytes, max_pixels: int | None = MAX_PIXELS,
                 draft_min_side: int | None = None) -> Image.Image:
    """Decode image bytes to an RGB PIL image.

    max_pixels: width*height limit checked from the header before decoding (None: no limit;
    PIL's own hard limit, 2x its MAX_IMAGE_PIXELS, still applies when above it).
    draft_min_side: JPEG only, let libjpeg decode at 1/2, 1/4 or 1/8 scale as long as the
    shorter side stays >= 2 * draft_min_side (much faster on large photos; DCT-domain scaling
    changes pixels slightly, so the default None decodes exactly).
    """
    img = open_image(data, max_pixels)
    w, h = img.size
    if draft_min_side and img.format == "JPEG":
        k = 2.0 * draft_min_side / min(w, h)
        if k < 1.0:
            img.draft("RGB", (max(1, int(w * k + 0.999)), max(1, int(h * k + 0.999))))
    try:
        img.load()
    except Exception as e:  # noqa: BLE001 - OSError, SyntaxError, ValueError, zlib errors ...
        reason = str(e) or type(e).__name__
        raise ImageDecodeError(f"{img.format} {w}x{h} ({img.mode}) failed to decode: {reason}") from None
    try:
        rgb = _to_rgb(img)
    except Exception as e:  # noqa: BLE001
        raise ImageDecodeError(f"cannot convert {img.format} mode {img.mode} to RGB: {e}") from None
    return rgb


def resized_size(w: int, h: int, short: int) -> tuple[int, int]:
    """New (w, h) with the shorter side = short; the long side truncated as torchvision does."""
    if w <= h:
        return short, int(short * h / w)
    return int(short * w / h), short


def crop_box(arr: np.ndarray, g, fill) -> np.ndarray:
    """The (crop_h, crop_w, C) box of an (H, W, C) array at (g.x0, g.y0); outside = fill."""
    if not g.pads:
        return np.array(arr[g.y0:g.y0 + g.crop_h, g.x0:g.x0 + g.crop_w], dtype=np.uint8)  # writable copy
    out = np.empty((g.crop_h, g.crop_w, arr.shape[2]), dtype=np.uint8)
    out[:] = np.asarray(fill, dtype=np.uint8)
    ys, xs = max(0, g.y0), max(0, g.x0)
    ye, xe = min(g.new_h, g.y0 + g.crop_h), min(g.new_w, g.x0 + g.crop_w)
    out[ys - g.y0:ye - g.y0, xs - g.x0:xe - g.x0] = arr[ys:ye, xs:xe]
    return out


def to_uint8_view(img: Image.Image, spec: PreprocessSpec, reducing_gap: float | None = None) -> np.ndarray:
    """(crop_h, crop_w, 3) uint8: the resize rule of spec (PIL, spec.interpolation), then the
    centre crop, padded with spec.fill where needed (pipelines.models.preprocess). Pixel-exact with the
    reference transforms (torchvision Resize + CenterCrop on PIL images, timm's eval transforms,
    the HF PIL image processors) when reducing_gap is None; reducing_gap (PIL) speeds up large
    downscales (e.g. 3.0: near-identical)."""
    if img.mode != "RGB":
        img = _to_rgb(img)
    w, h = img.size
    g = spec.geometry(w, h)
    if (g.new_w, g.new_h) != (w, h):
        img = img.resize((g.new_w, g.new_h), _RESAMPLE[spec.interpolation], reducing_gap=reducing_gap)
    if not g.pads:  # crop in PIL: converts only the box to an array
        out = np.array(img.crop((g.x0, g.y0, g.x0 + g.crop_w, g.y0 + g.crop_h)), dtype=np.uint8)
    else:
        out = crop_box(np.asarray(img), g, spec.fill)
    assert out.shape == (g.crop_h, g.crop_w, 3), out.shape
    return out


def normalise(u8: torch.Tensor, spec: PreprocessSpec, dtype: torch.dtype | None = None,
              channels_last: bool = False) -> torch.Tensor:
    """(B, H, W, 3) uint8 (any device) -> (B, 3, H, W) (x/255 - mean)/std in `dtype` (float32)."""
    import torch  # here, not at the top: the read tasks import this module without torch

    dtype = dtype or torch.float32
    if isinstance(u8, np.ndarray):
        u8 = torch.from_numpy(u8)
    if u8.dtype != torch.uint8 or u8.ndim != 4 or u8.shape[-1] != 3:
        raise ValueError(f"expected a (B, H, W, 3) uint8 tensor, got {tuple(u8.shape)} {u8.dtype}")
    dev = u8.device
    mean = torch.tensor(spec.mean, dtype=torch.float32, device=dev).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32, device=dev).view(1, 3, 1, 1)
    x = u8.permute(0, 3, 1, 2).to(torch.float32)  # NCHW view with channels-last strides
    x = (x * (1.0 / 255.0) - mean) / std
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return x.to(dtype=dtype, memory_format=fmt)
