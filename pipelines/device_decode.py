"""Decode where the model runs (`sing audit --decode device`).

On a GPU node JPEG decoding on the CPU becomes the bottleneck long before the GPU is busy.
In device mode the read stage only reads each sample and checks its header (format, size,
decompression-bomb limit: a bomb never reaches the decoder); the model actor decodes the
JPEG bytes of a whole batch with torchvision.io.decode_jpeg on its own device (nvJPEG on
CUDA), resizes with antialiasing and centre-crops on the device. What nvJPEG cannot take
(PNG and other formats, CMYK/YCCK JPEGs, a stream it rejects) is decoded on the host by the
same code as host mode. Resizing a tensor differs from PIL by a few grey levels; host mode
stays the reference (pixel-exact with torchvision/timm eval transforms).
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

from .images import ImageDecodeError, decode_image, open_image, to_uint8_view
from .models import PreprocessSpec

_INTERP = {"bilinear": "BILINEAR", "bicubic": "BICUBIC", "nearest": "NEAREST", "lanczos": "BICUBIC"}


def device_decodable(data: bytes, max_pixels: int | None) -> bool:
    """Header check (raises ImageDecodeError like host decoding); True when the device JPEG
    decoder can take it, False when the actor must decode it on the host."""
    img = open_image(data, max_pixels)
    # A truncated JPEG has no end-of-image marker; libjpeg only *warns* about it and pads the
    # missing rows grey, so such a stream goes to the host decoder, which refuses it.
    complete = bytes(data[-2:]) == b"\xff\xd9"
    return img.format == "JPEG" and img.mode in ("RGB", "L") and complete


def tensor_view(img: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    """(3, H, W) uint8 on any device -> (S, S, 3) uint8: shorter side -> spec.resize, centre
    crop, the geometry of images.to_uint8_view."""
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    from .images import resized_size

    h, w = int(img.shape[-2]), int(img.shape[-1])
    nw, nh = resized_size(w, h, spec.resize)
    if (nw, nh) != (w, h):
        img = F.resize(img, [nh, nw], interpolation=InterpolationMode[_INTERP[spec.interpolation]], antialias=True)
    s = spec.size
    top, left = int(round((nh - s) / 2.0)), int(round((nw - s) / 2.0))
    return img[:, top:top + s, left:left + s].permute(1, 2, 0)


def _host(data: bytes, spec: PreprocessSpec, max_pixels, device) -> torch.Tensor:
    return torch.from_numpy(to_uint8_view(decode_image(data, max_pixels=max_pixels), spec)).to(device)


def decode_batch(encoded, spec: PreprocessSpec, device, max_pixels: int | None = None
                 ) -> tuple[torch.Tensor, dict[int, str]]:
    """Encoded images -> ((n_ok, S, S, 3) uint8 on `device`, {position: reason} of failures).
    Rows keep their order; failed positions are left out of the tensor."""
    from torchvision.io import ImageReadMode
    from torchvision.io import decode_jpeg as _decode_jpeg

    def decode_jpeg(*a, **k):
        # torchvision 0.29 deprecates its decoders in favour of TorchCodec; they still work
        # and are what this pinned stack has (move to torchcodec when it is a dependency)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return _decode_jpeg(*a, **k)

    device = torch.device(device)
    n = len(encoded)
    views: list[torch.Tensor | None] = [None] * n
    errors: dict[int, str] = {}
    jpeg = []
    for i, data in enumerate(encoded):
        try:
            if device_decodable(data, max_pixels):
                jpeg.append(i)
            else:
                views[i] = _host(data, spec, max_pixels, device)
        except ImageDecodeError as exc:
            errors[i] = f"decode: {exc}"
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
        for i, img in zip(jpeg, imgs):
            if img is None:  # the host decoder has the precise message (truncated, corrupt ...)
                try:
                    views[i] = _host(encoded[i], spec, max_pixels, device)
                except ImageDecodeError as exc:
                    errors[i] = f"decode: {exc}"
            else:
                views[i] = tensor_view(img, spec)
    ok = [v for v in views if v is not None]
    s = spec.size
    x = torch.stack(ok) if ok else torch.zeros((0, s, s, 3), dtype=torch.uint8, device=device)
    return x, errors
