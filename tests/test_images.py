import io
import struct
import time
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.io.images import ImageDecodeError, decode_image, normalise, to_uint8_view
from pipelines.models.preprocess import PreprocessSpec


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


# ----------------------------------------------------------------------------- decode


def test_decode_formats_and_modes(chelsea):
    ref = np.asarray(chelsea).astype(int)
    png = decode_image(encode(chelsea, "PNG"))
    assert png.mode == "RGB" and np.array_equal(np.asarray(png), ref)  # lossless
    for fmt in ("JPEG", "WEBP"):
        im = decode_image(encode(chelsea, fmt, quality=95))
        assert im.mode == "RGB" and im.size == chelsea.size
        assert np.abs(np.asarray(im).astype(int) - ref).mean() < 4
    grey = np.asarray(decode_image(encode(chelsea.convert("L"), "PNG")))
    assert grey.shape == (300, 451, 3) and (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    cmyk = decode_image(encode(chelsea.convert("CMYK"), "JPEG", quality=95))
    assert cmyk.mode == "RGB" and np.abs(np.asarray(cmyk).astype(int) - ref).mean() < 4
    p = chelsea.convert("P")
    pal = decode_image(encode(p, "PNG"))
    assert pal.mode == "RGB" and np.array_equal(np.asarray(pal), np.asarray(p.convert("RGB")))


def test_alpha_is_composited_on_white():
    a = np.zeros((8, 8, 4), np.uint8)
    a[..., 0] = 200  # red under everything
    a[:4, :, 3] = 0  # top half fully transparent
    a[4:, :, 3] = 255
    out = np.asarray(decode_image(encode(Image.fromarray(a, "RGBA"), "PNG")))
    assert (out[:4] == 255).all()  # transparent -> white, not the hidden red/black
    assert (out[4:] == [200, 0, 0]).all()
    la = np.zeros((4, 4, 2), np.uint8)
    la[..., 1] = 0
    assert (np.asarray(decode_image(encode(Image.fromarray(la, "LA"), "PNG"))) == 255).all()
    p = Image.fromarray(np.zeros((4, 4), np.uint8), "P")
    p.putpalette([10, 20, 30] * 256)
    assert (np.asarray(decode_image(encode(p, "PNG", transparency=0))) == 255).all()


def test_16bit_grey_is_scaled_not_clipped():
    a = np.array([[0, 257 * 100], [65535, 257 * 7]], dtype=np.uint16)
    out = np.asarray(decode_image(encode(Image.fromarray(a), "PNG")))
    assert out[..., 0].tolist() == [[0, 100], [255, 7]]


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_is_an_error_not_grey(chelsea, fmt):
    data = encode(chelsea, fmt)
    for cut in (len(data) // 2, len(data) - 30):
        with pytest.raises(ImageDecodeError, match=f"{fmt} 451x300 .*truncated"):
            decode_image(data[:cut])


def test_garbage_empty_and_exotic_formats():
    with pytest.raises(ImageDecodeError, match="not a recognised image"):
        decode_image(b"hello, this is not an image")
    with pytest.raises(ImageDecodeError, match="empty"):
        decode_image(b"")
    # EPS would run Ghostscript: not an accepted format, so never opened
    with pytest.raises(ImageDecodeError, match="not a recognised image"):
        decode_image(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    bad = bytearray(encode(Image.new("RGB", (16, 16), "red"), "PNG"))
    bad[40:60] = b"\x00" * 20  # corrupt the compressed data
    with pytest.raises(ImageDecodeError):
        decode_image(bytes(bad))


def _png_header_only(w: int, h: int) -> bytes:
    """A PNG whose IHDR claims w x h but whose pixel data is a few bytes: decoding it would fail
    with 'truncated', so a size error proves the check ran before decoding."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_decompression_bomb_refused_before_decoding():
    t = time.perf_counter()
    with pytest.raises(ImageDecodeError, match=r"10000x10000 = 100000000 pixels, above the limit .*before decoding"):
        decode_image(_png_header_only(10_000, 10_000))
    with pytest.raises(ImageDecodeError, match=r"10000000000 pixels.*decompression bomb"):
        decode_image(_png_header_only(100_000, 100_000))  # PIL's own hard limit fires first
    with pytest.raises(ImageDecodeError, match=r"above the limit of 1000"):
        decode_image(_png_header_only(40, 40), max_pixels=1000)
    assert time.perf_counter() - t < 1.0
    # below the limit the same bytes reach the decoder, which finds the data missing
    with pytest.raises(ImageDecodeError, match="truncated|decode"):
        decode_image(_png_header_only(40, 40))


def test_jpeg_draft_is_close_and_smaller(chelsea):
    big = chelsea.resize((1804, 1200), Image.Resampling.BICUBIC)
    data = encode(big, "JPEG", quality=92)
    spec = PreprocessSpec(224, 256, "bilinear", (0.5,) * 3, (0.5,) * 3)
    exact, fast = decode_image(data), decode_image(data, draft_min_side=256)
    assert exact.size == (1804, 1200) and fast.size == (902, 600)  # libjpeg 1/2 scale, >= 2*256
    a, b = to_uint8_view(exact, spec).astype(int), to_uint8_view(fast, spec).astype(int)
    assert np.abs(a - b).mean() < 1.5
    assert np.abs(to_uint8_view(exact, spec, reducing_gap=3.0).astype(int) - a).mean() < 1.0


# ----------------------------------------------------------------------------- transform


@pytest.mark.parametrize("arch", ["test_vit", "test_resnet", "resnet50"])
@pytest.mark.parametrize("rot", [False, True])
def test_view_matches_timm_eval_transform(arch, rot, chelsea, coffee):
    """Our uint8 view + normalise reproduce timm's create_transform(**data_config) exactly
    (same PIL resize, same torchvision long-side truncation and crop rounding): the only
    difference allowed is float rounding, < 1e-5 after normalisation."""
    import timm
    from timm.data import create_transform, resolve_data_config

    from pipelines.models.resolve import resolve_preprocess

    model = timm.create_model(arch, pretrained=False) if arch.startswith("test") else None
    cfg = (resolve_data_config({}, model=model) if model is not None
           else resolve_data_config({}, pretrained_cfg=timm.get_pretrained_cfg(arch).to_dict()))
    tf = create_transform(**cfg)
    spec = resolve_preprocess(f"timm:{arch}@random")[0] if model is not None else PreprocessSpec(
        cfg["input_size"][-1], int(cfg["input_size"][-1] / cfg["crop_pct"]), cfg["interpolation"],
        cfg["mean"], cfg["std"])
    for img in (chelsea, coffee):
        img = img.transpose(Image.Transpose.ROTATE_90) if rot else img
        ref = tf(img)[None]
        ours = normalise(torch.from_numpy(to_uint8_view(img, spec))[None], spec)
        assert ours.shape == ref.shape == (1, 3, spec.size, spec.size)
        assert (ours - ref).abs().max().item() < 1e-5


def test_normalise_values_layout_and_dtype():
    spec = PreprocessSpec(2, 2, "bilinear", (0.5, 0.25, 0.0), (0.5, 0.25, 1.0))
    u8 = torch.zeros(2, 2, 2, 3, dtype=torch.uint8)
    u8[1] = 255
    x = normalise(u8, spec)
    assert x.shape == (2, 3, 2, 2) and x.dtype == torch.float32 and x.is_contiguous()
    assert x[0, :, 0, 0].tolist() == [-1.0, -1.0, 0.0]
    assert x[1, :, 0, 0].tolist() == [1.0, 3.0, 1.0]
    cl = normalise(u8, spec, dtype=torch.bfloat16, channels_last=True)
    assert cl.dtype == torch.bfloat16 and cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(cl.float(), x, atol=2e-2, rtol=1e-2)
    assert normalise(u8.numpy(), spec).shape == (2, 3, 2, 2)
    with pytest.raises(ValueError, match="uint8"):
        normalise(u8.float(), spec)
    with pytest.raises(ValueError, match=r"\(B, H, W, 3\)"):
        normalise(u8[0], spec)


def test_preprocess_spec():
    s = PreprocessSpec(224, 256, "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert s.view_key == "224c-256r-bicubic"
    assert s.view_key == PreprocessSpec(224, 256, "bicubic", (0, 0, 0), (1, 1, 1)).view_key
    assert s.as_dict()["resize"] == 256
    # a crop larger than the resize pads (torchvision CenterCrop, timm crop_pct > 1)
    assert PreprocessSpec(224, 200, "bilinear", (0, 0, 0), (1, 1, 1)).geometry(300, 200).x0 == 38
    assert PreprocessSpec(224, 200, "bilinear", (0, 0, 0), (1, 1, 1)).geometry(300, 200).y0 == -12
    with pytest.raises(ValueError, match="interpolation"):
        PreprocessSpec(224, 256, "area", (0, 0, 0), (1, 1, 1))
    with pytest.raises(ValueError, match="one shorter-side length"):
        PreprocessSpec(224, (256, 300), "bilinear", (0, 0, 0), (1, 1, 1))
    with pytest.raises(ValueError, match="resize mode"):
        PreprocessSpec(224, 256, "bilinear", (0, 0, 0), (1, 1, 1), resize_mode="fit")
    with pytest.raises(ValueError, match="fill"):
        PreprocessSpec(224, 256, "bilinear", (0, 0, 0), (1, 1, 1), fill=(0, 0, 300))
    sq = PreprocessSpec((448, 448), (448, 448), "bicubic", (0, 0, 0), (1, 1, 1), resize_mode="squash")
    assert sq.size == 448 and sq.view_key == "448x448c-448x448squash-bicubic-round"
    assert sq.geometry(640, 480) == sq.geometry(100, 900)  # aspect ignored


def test_view_shape_for_tiny_and_odd_images():
    spec = PreprocessSpec(16, 18, "bicubic", (0, 0, 0), (1, 1, 1))
    for w, h in ((3, 50), (50, 3), (17, 17), (1, 1)):
        img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8))
        assert to_uint8_view(img, spec).shape == (16, 16, 3)
    assert to_uint8_view(Image.new("L", (20, 30), 7), spec).shape == (16, 16, 3)
