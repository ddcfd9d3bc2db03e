"""Builders for pipeline test data: clean shards from an ImageFolder, and a shard full of
every kind of bad sample the audit must survive."""
from __future__ import annotations

import io
import json
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

SYNSETS = ["n01440764", "n01443537", "n01484850"]  # ImageNet classes 0, 1, 2
CLASSIFIER = "timm:test_resnet@random?num_classes=10"  # 96-d features, 10 classes: null_dim 86
CLIP = "openclip:tiny@random"


def photo_folder(root: Path, per_class: int = 8, seed: int = 0, synsets=SYNSETS) -> Path:
    """Smooth random 'photos' with a class-dependent colour, so features carry the label."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:72, 0:96] / 96.0
    for c, syn in enumerate(synsets):
        d = root / syn
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = np.stack([np.sin(6 * xx + rng.uniform(0, 6)), np.cos(5 * yy + rng.uniform(0, 6)),
                             np.sin(4 * (xx + yy))], -1)
            tint = np.eye(3)[c % 3] * 60
            img = (110 + 70 * base + tint + rng.normal(0, 8, base.shape)).clip(0, 255).astype(np.uint8)
            Image.fromarray(img).save(d / f"{syn}_{i}.jpg", quality=90)
    return root


def _bytes(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height: a decompression bomb in 60 bytes."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def bad_shard(path: Path) -> dict:
    """A shard mixing good odd-format images and broken samples.

    Returns {key: expected outcome} with outcome "ok" or the expected error stage."""
    rng = np.random.default_rng(1)
    rgb = Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8))
    good_jpeg = _bytes(rgb, "JPEG")
    samples = {
        "png_rgb": ("png", _bytes(rgb, "PNG"), 0, "ok"),
        "gray": ("jpg", _bytes(rgb.convert("L"), "JPEG"), 1, "ok"),
        "cmyk": ("jpg", _bytes(rgb.convert("CMYK"), "JPEG"), 2, "ok"),
        "rgba": ("png", _bytes(rgb.convert("RGBA"), "PNG"), 0, "ok"),
        "corrupt": ("jpg", b"\xff\xd8\xff\xe0 this is not a jpeg at all" * 3, 1, "decode"),
        "truncated_jpeg": ("jpg", good_jpeg[: len(good_jpeg) // 2], 2, "decode"),
        "bomb": ("png", _png_header_only(100_000, 100_000), 0, "decode"),
        "no_label": ("jpg", good_jpeg, None, "label"),
        "label_out_of_range": ("jpg", good_jpeg, 999, "model"),
    }
    with tarfile.open(path, "w") as tar:
        for key, (ext, data, label, _) in samples.items():
            _add(tar, f"{key}.{ext}", data)
            if label is not None:
                _add(tar, f"{key}.cls", str(label).encode())
            _add(tar, f"{key}.json", json.dumps({"source": key}).encode())
    return {k: v[3] for k, v in samples.items()}


def truncate(src: Path, dst: Path, keep: float = 0.6) -> None:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * keep)])
