"""pipelines.device_decode on the CPU (torchvision's decode_jpeg; the same call runs nvJPEG on
CUDA) against the host path (PIL), which is pixel-exact with the eval transforms."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.device_decode import decode_batch, device_decodable
from pipelines.images import decode_image, to_uint8_view
from pipelines.models import PreprocessSpec

SPEC = PreprocessSpec(size=224, resize=256, interpolation="bilinear", mean=(0.5,) * 3, std=(0.5,) * 3)


def _enc(img: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _host(data: bytes) -> np.ndarray:
    return to_uint8_view(decode_image(data), SPEC)


def test_jpegs_decode_close_to_pil_and_odd_formats_exactly(chelsea, coffee):
    batch = [_enc(chelsea, quality=92), _enc(coffee, quality=92), _enc(chelsea.convert("L")),
             _enc(coffee, "PNG"), _enc(chelsea.convert("CMYK"))]
    assert [device_decodable(b, None) for b in batch] == [True, True, True, False, False]
    x, bad = decode_batch(batch, SPEC, "cpu")
    assert not bad and x.shape == (5, 224, 224, 3) and x.dtype == torch.uint8
    for i, data in enumerate(batch):
        ref = _host(data).astype(np.int16)
        d = np.abs(x[i].numpy().astype(np.int16) - ref)
        if i < 3:  # tensor antialiased resize vs PIL: a few grey levels, no geometric shift
            assert d.mean() < 2.0 and np.percentile(d, 99) <= 12, (i, d.mean(), np.percentile(d, 99))
        else:  # PNG and CMYK JPEG take the host decoder inside the actor: identical
            assert d.max() == 0
    gray = x[2].numpy()
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()


def test_bad_streams_are_per_sample_errors_and_keep_the_order(chelsea):
    good = _enc(chelsea)
    truncated = good[: len(good) // 2]  # libjpeg would only warn and pad grey
    corrupt = b"\xff\xd8\xff\xe0 not a jpeg" * 4
    huge = _enc(Image.new("RGB", (600, 600)), "PNG")  # above the limit below; chelsea is 451x300
    x, bad = decode_batch([truncated, good, corrupt, huge, good], SPEC, "cpu", max_pixels=500 * 500)
    assert set(bad) == {0, 2, 3}
    assert all(r.startswith("decode: ") for r in bad.values())
    assert "above the limit" in bad[3]  # the bomb guard runs before any decoder sees the bytes
    assert x.shape[0] == 2 and torch.equal(x[0], x[1])


def test_empty_batch():
    x, bad = decode_batch([], SPEC, "cpu")
    assert x.shape == (0, 224, 224, 3) and bad == {}


@pytest.mark.parametrize("w,h", [(300, 200), (200, 300), (256, 256)])
def test_geometry_matches_host_crop(w, h):
    """A smooth gradient: any misplaced crop would show as a large difference."""
    yy, xx = np.mgrid[0:h, 0:w]
    a = np.stack([xx * 255 // w, yy * 255 // h, (xx + yy) * 127 // (w + h)], -1).astype(np.uint8)
    data = _enc(Image.fromarray(a), quality=98)
    x, _ = decode_batch([data], SPEC, "cpu")
    d = np.abs(x[0].numpy().astype(np.int16) - _host(data).astype(np.int16))
    assert d.mean() < 1.5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_decode_matches_cpu_decode(chelsea, coffee):
    """nvJPEG on the GPU against libjpeg on the CPU, both through decode_batch."""
    batch = [_enc(chelsea, quality=92), _enc(coffee), _enc(coffee, "PNG"), b"\xff\xd8\xff\xe0 junk" * 4]
    x_gpu, bad_gpu = decode_batch(batch, SPEC, "cuda")
    x_cpu, bad_cpu = decode_batch(batch, SPEC, "cpu")
    assert x_gpu.device.type == "cuda" and set(bad_gpu) == set(bad_cpu) == {3}
    d = (x_gpu.cpu().to(torch.int16) - x_cpu.to(torch.int16)).abs()
    assert d.float().mean() < 2.0, d.float().mean()
