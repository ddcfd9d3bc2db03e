"""What explain sheets and report pages share about an image: its thumbnail (a square view made
the way a model's eval transform makes its view) and the anchor that names its row in a sheet.
Here, below both the jobs and the queries, so each can use them."""
from __future__ import annotations

import io
import re


def thumbnail_jpeg(img, size: int = 128, quality: int = 85) -> bytes:
    """Square centre-cropped JPEG thumbnail of a PIL image."""
    from PIL import Image

    from pipelines.io.images import to_uint8_view
    from pipelines.models.preprocess import PreprocessSpec

    spec = PreprocessSpec(size=size, resize=size, interpolation="bilinear", mean=(0, 0, 0), std=(1, 1, 1))
    buf = io.BytesIO()
    Image.fromarray(to_uint8_view(img, spec)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def explain_anchor(shard: str | None, key: str | None) -> str:
    """The id of an image's row in a contact sheet: `sing report --explain-dir` links a
    thumbnail to SHEET.html#<anchor>."""
    return "img-" + re.sub(r"[^A-Za-z0-9._-]", "-", f"{shard or ''}/{key or ''}")
