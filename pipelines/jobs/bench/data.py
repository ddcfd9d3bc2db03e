"""`sing bench`'s inputs: photo-like JPEGs in ImageNet's size mix, their shards, and a random
translator with the right metadata (numbers are not the point of a benchmark)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipelines.models.translator_file import save_translator


def synthetic_photo(rng: np.random.Generator, w: int = 500, h: int = 375, quality: int = 90) -> bytes:
    """A photo-like JPEG (smooth shapes + noise: decodes like a real photo, unlike flat colour)."""
    import io

    from PIL import Image

    yy, xx = np.mgrid[0:h, 0:w]
    fx, fy, ph = rng.uniform(0.005, 0.05, 3)
    base = np.stack([np.sin(xx * fx + ph), np.cos(yy * fy - ph), np.sin((xx + yy) * (fx + fy) / 2)], -1)
    img = (127 + 100 * base + rng.normal(0, 12, base.shape)).clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


# (w, h) and weight: roughly ImageNet's size mix (most photos are 500 on the long side); the
# mix matters on GPUs, where same-size images are resized together
IMAGENET_SIZES = [((500, 375), 0.55), ((375, 500), 0.15), ((500, 333), 0.12), ((500, 500), 0.06),
                  ((333, 500), 0.04), ((640, 480), 0.04), ((800, 600), 0.04)]


def imagenet_like_photos(n: int, rng: np.random.Generator) -> list[bytes]:
    sizes = [s for s, _ in IMAGENET_SIZES]
    picks = rng.choice(len(sizes), size=n, p=[w for _, w in IMAGENET_SIZES])
    return [synthetic_photo(rng, *sizes[k]) for k in picks]


def make_jpegs(root: Path, n: int, n_classes: int = 8, seed: int = 0, unique: int = 64) -> Path:
    """Photo-like JPEGs in ImageNet's size mix. Only `unique` distinct pictures are drawn and
    encoded (the slow part); the rest repeat their bytes under new names, which costs the
    decoder exactly as much."""
    rng = np.random.default_rng(seed)
    encoded = imagenet_like_photos(min(n, unique), rng)
    for i in range(n):
        d = root / f"class_{i % n_classes:02d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"img_{i:05d}.jpg").write_bytes(encoded[i % len(encoded)])
    return root


def bench_translator(clf, path: Path) -> Path:
    """A random translator with the right metadata (numbers are not the point here)."""
    import torch

    from sing_ops import Translator

    from pipelines.models.clip import load_clip

    clip = load_clip("openclip:tiny@random")
    g = torch.Generator().manual_seed(0)
    t = Translator(torch.randn(clip.embed_dim, clf.num_features, generator=g) / clf.num_features**0.5,
                   torch.randn(clip.embed_dim, generator=g),
                   {"source_model": clf.model_id, "clip_model": clip.model_id})
    return save_translator(t, path)


def bench_shards(work: Path, n_images: int, mult: int, threads: int, batch_size: int = 1) -> list[str]:
    """The JPEG shards of the mult-x run, made once (named by size, so a kept --out serves
    later runs of the same size only)."""
    from pipelines.jobs.make_shards import make_shards

    src = work / f"jpeg_{n_images * mult}"
    if not src.is_dir():
        make_jpegs(src, n_images * mult, seed=mult)
    # as many shards in the 1x run as read tasks can run at once, so both runs have the same
    # parallelism and peak memory compares data size, not process count; each a whole number
    # of batches: Ray Data batches follow blocks (one per shard), and shards smaller than a
    # batch made short batches that a compiled model pads to its batch size (24-image shards
    # under --batch-size 32: a third of the compiled forward was padding)
    per = max(8, n_images // (2 * threads))
    per = max(batch_size, round(per / batch_size) * batch_size)
    sd = work / f"shards_{n_images * mult}_{per}"
    if not any(sd.glob("*.tar")):
        make_shards(str(src), str(sd), per_shard=per)
    return sorted(str(p) for p in sd.glob("*.tar"))
