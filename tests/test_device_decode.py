"""pipelines.stages.device_decode on the CPU (torchvision's decode_jpeg; the same call runs nvJPEG on
CUDA) against the host path (PIL), which is pixel-exact with the eval transforms."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.stages.device_decode import decode_batch, device_decodable
from pipelines.io.images import decode_image, to_uint8_view
from pipelines.models.preprocess import PreprocessSpec

SPEC = PreprocessSpec(size=224, resize=256, interpolation="bilinear", mean=(0.5,) * 3, std=(0.5,) * 3)


def _enc(img: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _host(data: bytes) -> np.ndarray:
    return to_uint8_view(decode_image(data), SPEC)


def test_jpegs_decode_close_to_pil_and_odd_formats_exactly(chelsea, coffee):
    batch = [_enc(chelsea, quality=92), _enc(coffee, quality=92), _enc(chelsea.convert("L")),
             _enc(coffee, "PNG"), _enc(chelsea.convert("CMYK")), _enc(coffee, progressive=True)]
    assert [device_decodable(b, None) for b in batch] == [True, True, True, False, False, False]
    x, bad = decode_batch(batch, SPEC, "cpu")
    assert not bad and x.shape == (6, 224, 224, 3) and x.dtype == torch.uint8
    for i, data in enumerate(batch):
        ref = _host(data).astype(np.int16)
        d = np.abs(x[i].numpy().astype(np.int16) - ref)
        if i < 3:  # tensor antialiased resize vs PIL: a few grey levels, no geometric shift
            assert d.mean() < 2.0 and np.percentile(d, 99) <= 12, (i, d.mean(), np.percentile(d, 99))
        else:  # PNG, CMYK and progressive JPEGs take the host decoder: identical
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


@pytest.mark.parametrize("interp", ["bilinear", "bicubic"])
def test_grouped_resize_gives_the_same_pixels_as_per_image(interp):
    """Resizing equal-size images in one call (the CUDA default) must not change a pixel."""
    from pipelines.stages.device_decode import resize_views

    spec = PreprocessSpec(size=32, resize=40, interpolation=interp, mean=(0.5,) * 3, std=(0.5,) * 3)
    g = torch.Generator().manual_seed(0)
    shapes = [(3, 60, 80), (3, 80, 60), (3, 60, 80), (3, 40, 40), (3, 60, 80), (3, 97, 41)]
    imgs = [torch.randint(0, 256, s, dtype=torch.uint8, generator=g) for s in shapes]
    one = resize_views(imgs, spec, grouped=False)
    grp = resize_views(imgs, spec, grouped=True)
    assert [tuple(v.shape) for v in grp] == [(32, 32, 3)] * len(imgs)
    for a, b in zip(one, grp):
        assert torch.equal(a, b)
    x, bad = decode_batch([_enc(Image.fromarray(i.permute(1, 2, 0).numpy()), quality=95) for i in imgs],
                          spec, "cpu", grouped=True)
    y, _ = decode_batch([_enc(Image.fromarray(i.permute(1, 2, 0).numpy()), quality=95) for i in imgs],
                        spec, "cpu", grouped=False)
    assert not bad and torch.equal(x, y)


def test_host_decoded_rows_pass_through_in_order(chelsea, coffee):
    """Rows the read stage decoded arrive as view bytes and are used as they are; the others
    are decoded here; order is kept; a view of the wrong size is a per-row error."""
    from pipelines.stages.device_decode import host_view_bytes

    jpeg = [_enc(chelsea, quality=92), _enc(coffee, quality=92)]
    ref = [_host(b) for b in jpeg]
    marker = np.full((224, 224, 3), 7, dtype=np.uint8)
    encoded = [jpeg[0], b"", jpeg[1], b"", b""]
    decoded = [b"", host_view_bytes(ref[1]), b"", host_view_bytes(marker), b"\x00" * 10]
    x, bad = decode_batch(encoded, SPEC, "cpu", decoded=decoded, checked=True)
    assert set(bad) == {4} and "host view has 10 bytes" in bad[4]
    assert x.shape[0] == 4
    assert np.array_equal(x[1].numpy(), ref[1]) and np.array_equal(x[3].numpy(), marker)
    for row, r in ((0, ref[0]), (2, ref[1])):  # decoded here: close to PIL, not bit-equal
        d = np.abs(x[row].numpy().astype(np.int16) - r.astype(np.int16))
        assert 0 < d.mean() < 2.0


def test_checked_rows_skip_the_header_parse_but_a_rejected_stream_still_falls_back(chelsea, monkeypatch):
    import pipelines.stages.device_decode as dd

    good = _enc(chelsea)
    truncated = good[: len(good) // 2]  # what a lying read stage could send: the host decoder refuses it
    calls = []
    monkeypatch.setattr(dd, "device_decodable", lambda *a: calls.append(a) or True)
    x, bad = decode_batch([good, truncated], SPEC, "cpu", checked=True)
    assert calls == []
    assert x.shape[0] == 1 and set(bad) == {1} and bad[1].startswith("decode: ")


def test_read_stage_splits_device_and_host_rows(tmp_path, chelsea, coffee):
    """Device mode: odd formats and `host_share` of the JPEGs are decoded in the read stage,
    evenly spread; the rest travel as JPEG bytes. Each row is in exactly one of the two."""
    import tarfile

    from pipelines.stages.read import ENC_COLUMN, host_pick, read_decode, u8_column

    samples = [(f"j{i:02d}", _enc(chelsea if i % 2 else coffee, quality=80 + i % 10), "jpg") for i in range(20)]
    samples += [("png", _enc(coffee, "PNG"), "png"), ("cmyk", _enc(chelsea.convert("CMYK")), "jpg")]
    path = tmp_path / "s.tar"
    with tarfile.open(path, "w") as tf:
        for key, data, ext in samples:
            for name, payload in ((f"{key}.{ext}", data), (f"{key}.cls", b"3")):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tf.addfile(info, io.BytesIO(payload))
    for share, n_host_jpeg in ((0.0, 0), (0.25, 5), (1.0, 20)):
        rows = {}
        for b in read_decode({"path": np.array([str(path)])}, [SPEC], encoded=True, host_share=share):
            for k, st, e, u in zip(b["key"], b["status"], b[ENC_COLUMN], b[u8_column(SPEC)]):
                if st == "ok":
                    assert (len(e) > 0) != (len(u) > 0), k
                    rows[k] = "device" if len(e) else "host"
        assert len(rows) == 22 and rows["png"] == rows["cmyk"] == "host"
        host_jpegs = [k for k in rows if k.startswith("j") and rows[k] == "host"]
        assert len(host_jpegs) == n_host_jpeg
        assert host_jpegs == [f"j{n:02d}" for n in range(20) if host_pick(share, n)]
    assert [n for n in range(8) if host_pick(0.25, n)] == [3, 7]  # evenly spread
