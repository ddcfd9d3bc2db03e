"""Decode where the model runs (`sing audit --decode device`).

On a GPU node JPEG decoding on the CPU becomes the bottleneck long before the GPU is busy.
In device mode the read stage checks each header (format, size, decompression-bomb limit: a
bomb never reaches the decoder) and passes the JPEGs the device can take on as bytes; the model
actor decodes a whole batch with torchvision.io.decode_jpeg on its own device (nvJPEG on CUDA,
the GPU's hardware JPEG engine where it has one), resizes with antialiasing and centre-crops
there. What nvJPEG cannot take (PNG and other formats, CMYK/YCCK JPEGs, truncated streams)
or takes slowly (progressive JPEGs: no batched hardware decode) is decoded by the read stage
as in host mode, and so is `--host-decode-share` of the JPEGs: idle
CPU cores then add to the GPU decoder's throughput instead of waiting for it. Resizing a tensor
differs from PIL by a few grey levels; host mode stays the reference (pixel-exact with
torchvision/timm eval transforms).
"""
from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np

from pipelines.io.images import ImageDecodeError, decode_image, open_image, to_uint8_view
from pipelines.models.preprocess import PreprocessSpec

if TYPE_CHECKING:  # torch is imported where it is used: the read tasks use this module without it
    import torch

_INTERP = {"bilinear": "BILINEAR", "bicubic": "BICUBIC", "nearest": "NEAREST", "lanczos": "BICUBIC"}


def device_can_take(img, data: bytes) -> bool:
    """True when the device JPEG decoder can take this (header-checked) image; False when it
    must be decoded on the host."""
    # A truncated JPEG has no end-of-image marker; libjpeg only *warns* about it and pads the
    # missing rows grey, so such a stream goes to the host decoder, which refuses it.
    complete = bytes(data[-2:]) == b"\xff\xd9"
    # Progressive JPEGs miss the GPU's batched (hardware) decoder: nvJPEG decodes them one at
    # a time with Huffman decoding on the actor's single CPU thread; the read tasks are better.
    progressive = bool(img.info.get("progressive"))
    return img.format == "JPEG" and img.mode in ("RGB", "L") and complete and not progressive


def device_decodable(data: bytes, max_pixels: int | None) -> bool:
    """Header check (raises ImageDecodeError like host decoding), then device_can_take."""
    return device_can_take(open_image(data, max_pixels), data)


def tensor_view(img: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    """(..., 3, H, W) uint8 on any device -> (..., crop_h, crop_w, 3) uint8: the geometry of
    images.to_uint8_view (spec.geometry), resized with antialiasing on the tensor. A leading
    batch dimension resizes all its (same-size) images in one call."""
    import torch
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    h, w = int(img.shape[-2]), int(img.shape[-1])
    g = spec.geometry(w, h)
    if (g.new_w, g.new_h) != (w, h):
        img = F.resize(img, [g.new_h, g.new_w], interpolation=InterpolationMode[_INTERP[spec.interpolation]],
                       antialias=True)
    if not g.pads:
        return img[..., g.y0:g.y0 + g.crop_h, g.x0:g.x0 + g.crop_w].movedim(-3, -1)
    out = torch.empty((*img.shape[:-3], g.crop_h, g.crop_w, 3), dtype=img.dtype, device=img.device)
    out[:] = torch.tensor(spec.fill, dtype=img.dtype, device=img.device)
    ys, xs = max(0, g.y0), max(0, g.x0)
    ye, xe = min(g.new_h, g.y0 + g.crop_h), min(g.new_w, g.x0 + g.crop_w)
    out[..., ys - g.y0:ye - g.y0, xs - g.x0:xe - g.x0, :] = img[..., ys:ye, xs:xe].movedim(-3, -1)
    return out


def resize_views(imgs: list[torch.Tensor], spec: PreprocessSpec, grouped: bool) -> list[torch.Tensor]:
    """tensor_view of each (3, H, W) image. grouped: stack images of equal size and resize each
    group in one call (a handful of kernel launches per batch instead of a set per image; ImageNet
    has few distinct sizes). Same pixels either way."""
    import torch

    if not grouped:
        return [tensor_view(im, spec) for im in imgs]
    groups: dict[tuple, list[int]] = {}
    for j, im in enumerate(imgs):
        groups.setdefault(tuple(im.shape), []).append(j)
    out: list[torch.Tensor | None] = [None] * len(imgs)
    for js in groups.values():
        views = tensor_view(torch.stack([imgs[j] for j in js]), spec)
        for k, j in enumerate(js):
            out[j] = views[k]
    return out


def host_view_bytes(view: np.ndarray) -> bytes:
    """A (crop_h, crop_w, 3) uint8 view decoded in the read stage, as the bytes it travels in."""
    return np.ascontiguousarray(view, dtype=np.uint8).tobytes()


def _host(data: bytes, spec: PreprocessSpec, max_pixels, device) -> torch.Tensor:
    import torch

    return torch.from_numpy(to_uint8_view(decode_image(data, max_pixels=max_pixels), spec)).to(device)


def decode_batch(encoded, spec: PreprocessSpec, device, max_pixels: int | None = None, *,
                 decoded=None, checked: bool = False, grouped: bool | None = None
                 ) -> tuple[torch.Tensor, dict[int, str]]:
    """Encoded images -> ((n_ok, crop_h, crop_w, 3) uint8 on `device`, {position: reason} of failures).
    Rows keep their order; failed positions are left out of the tensor.

    decoded: per row, the view the read stage already decoded on the host (host_view_bytes;
             b"" for rows to decode here): the images the device cannot take and the host
             share (`--host-decode-share`).
    checked: the read stage has checked every header and sent only device-decodable JPEGs, so
             the second header parse is skipped (a stream the device rejects still falls back
             to the host decoder, which has the precise error).
    grouped: resize equal-size images in one call; default on CUDA, where each per-image call
             costs its own kernel launches (on the CPU per-image calls measured 2x faster)."""
    import torch
    from torchvision.io import ImageReadMode
    from torchvision.io import decode_jpeg as _decode_jpeg

    def decode_jpeg(*a, **k):
        # torchvision 0.29 deprecates its decoders in favour of TorchCodec; they still work
        # and are what this pinned stack has (move to torchcodec when it is a dependency)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return _decode_jpeg(*a, **k)

    device = torch.device(device)
    grouped = device.type == "cuda" if grouped is None else grouped
    n, (vh, vw) = len(encoded), spec.crop_hw
    views: list[torch.Tensor | None] = [None] * n
    errors: dict[int, str] = {}
    jpeg, host = [], []
    for i, data in enumerate(encoded):
        if decoded is not None and len(decoded[i]):
            if len(decoded[i]) != vh * vw * 3:
                errors[i] = f"decode: host view has {len(decoded[i])} bytes, expected {vh}x{vw}x3"
            else:
                host.append(i)
            continue
        try:
            if checked or device_decodable(data, max_pixels):
                jpeg.append(i)
            else:
                views[i] = _host(data, spec, max_pixels, device)
        except ImageDecodeError as exc:
            errors[i] = f"decode: {exc}"
    if host:  # one host-to-device copy for all of them, not one per image
        joined = bytearray().join(decoded[i] for i in host)  # writable: torch shares it, no copy
        on_device = torch.frombuffer(joined, dtype=torch.uint8).view(len(host), vh, vw, 3).to(device)
        for k, i in enumerate(host):
            views[i] = on_device[k]
    if jpeg:
        raw = [torch.from_numpy(np.frombuffer(encoded[i], dtype=np.uint8).copy()) for i in jpeg]
        try:
            imgs = decode_jpeg(raw, mode=ImageReadMode.RGB, device=device)
        except RuntimeError:  # one bad stream fails the whole batch call: find it one by one
            imgs = []
            for t in raw:
                try:
                    imgs.append(decode_jpeg(t, mode=ImageReadMode.RGB, device=device))
                except RuntimeError:
                    imgs.append(None)
        good = [k for k, img in enumerate(imgs) if img is not None]
        for k, v in zip(good, resize_views([imgs[k] for k in good], spec, grouped)):
            views[jpeg[k]] = v
        for k, img in enumerate(imgs):
            if img is None:  # the host decoder has the precise message (truncated, corrupt ...)
                i = jpeg[k]
                try:
                    views[i] = _host(encoded[i], spec, max_pixels, device)
                except ImageDecodeError as exc:
                    errors[i] = f"decode: {exc}"
    ok = [v for v in views if v is not None]
    x = torch.stack(ok) if ok else torch.zeros((0, vh, vw, 3), dtype=torch.uint8, device=device)
    return x, errors
