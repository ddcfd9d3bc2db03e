"""`sing bench-fit`: what fitting K translators from a CLIP cache in one decode pass costs, against
the K classifiers' bare forwards over the same images (the leaderboard's target: <= 1.15).

For each K (default 1 and 4): `sing fit-translator --model M1 ... --model MK --clip-embeddings DIR`
as a user runs it (a fresh process), over N and 2N JPEGs in ImageNet's size mix; the CLIP cache
is made once beforehand (CLIP's cost is paid once for any number of models, so it is no part of
a fit's). The fits' pass seconds over the two sizes give the steady cost of N more images
(start-up cancels out), which is compared with the sum of the K models' bare forwards over N
images (in-memory inputs, the actors' precision and threads: pipelines.jobs.bench.forward).
Prints the ratio for each K last; the models share one eval transform, so each image is
decoded once per pass.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# four ImageNet architectures of one recipe (timm's a1_in1k: one eval transform), random weights
MODELS = ("timm:resnet50.a1_in1k@random", "timm:resnet34.a1_in1k@random", "timm:resnet101.a1_in1k@random",
          "timm:resnet18.a1_in1k@random")
CLIP = "openclip:tiny@random"


def _shards(work: Path, n: int) -> str:
    from pipelines.jobs.bench.data import make_jpegs
    from pipelines.jobs.make_shards import make_shards

    src, out = work / f"jpeg_{n}", work / f"shards_{n}"
    if not any(out.glob("*.tar")):
        make_jpegs(src, n, seed=n)
        make_shards(str(src), str(out), per_shard=max(8, n // 8), prefix=f"fit{n}")  # one cache holds both sizes
    return str(out / "*.tar")


def _cache(work: Path, globs: list[str]) -> str:
    from pipelines.jobs.embed_images import EmbedImagesOptions, embed_images

    out = str(work / "clip")
    embed_images(EmbedImagesOptions(clip=CLIP, shards=globs, out=out, progress=False))
    return out


def _fit_seconds(models: list[str], shards: str, cache: str, work: Path, batch: int) -> float:
    """The fit's pass seconds (its report's), in a fresh `sing` process."""
    tag = f"{len(models)}_{time.time_ns()}"
    outs = [x for i in range(len(models)) for x in ("--out", str(work / f"t_{tag}_{i}.safetensors"))]
    cmd = [sys.executable, "-m", "pipelines.cli", "-q", "fit-translator", *[x for m in models for x in ("--model", m)],
           *outs, "--clip-embeddings", cache, "--shards", shards, "--batch-size", str(batch)]
    env = {**os.environ, "SING_DERIVED_CACHE": "0"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"bench-fit: the fit failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return float(json.loads(Path(f"{work / f't_{tag}_0.safetensors'}.report.json").read_text())["seconds"]["passes"])


def bench_fit(n: int, ks: list[int], batch: int, work: str | None) -> dict:
    from pipelines.jobs.bench.forward import bare_forward_rate
    from pipelines.models.classifiers import load_classifier
    from pipelines.stages.ray_session import cluster_cpus, ensure_ray

    root = Path(work or tempfile.mkdtemp(prefix="sing-benchfit-"))
    small, large = _shards(root, n), _shards(root, 2 * n)
    cache = _cache(root, [small, large])
    threads = max(1, int(cluster_cpus() if ensure_ray() else os.cpu_count()))
    bare = {}
    for m in MODELS[:max(ks)]:
        rate, _ = bare_forward_rate(load_classifier(m), batch, 2 * batch, threads)
        bare[m] = rate
    out = {"images": n, "bare_images_per_s": bare, "k": {}}
    for k in ks:
        models = list(MODELS[:k])
        t_small, t_large = _fit_seconds(models, small, cache, root, batch), _fit_seconds(models, large, cache, root,
                                                                                           batch)
        forward = sum(n / bare[m] for m in models)  # the bare forwards over the N more images
        out["k"][k] = {"models": models, "passes_s": [t_small, t_large], "steady_s": t_large - t_small,
                       "bare_forward_s": forward, "ratio": (t_large - t_small) / forward,
                       "ratio_end_to_end": t_large / (2 * forward)}
    return out


def cli_args(p) -> None:
    p.add_argument("--images", type=int, default=96, help="images of the smaller run (the larger has twice)")
    p.add_argument("--k", type=int, nargs="+", default=[1, 4], help="models per decode pass to measure (<= 4)")
    p.add_argument("--batch-size", type=int, default=32, help="images per model batch")
    p.add_argument("--work", help="keep shards and translators here (default: a temporary directory)")


def cli_run(a) -> int:
    if max(a.k) > len(MODELS) or min(a.k) < 1:
        from pipelines.errors import BadInput

        raise BadInput(f"--k must be between 1 and {len(MODELS)}")
    r = bench_fit(a.images, a.k, a.batch_size, a.work)
    print(json.dumps(r, indent=1))
    for k, v in r["k"].items():
        print(f"K={k}: fit from the CLIP cache, {a.images} more images: {v['steady_s']:.1f} s; the K bare forwards "
              f"{v['bare_forward_s']:.1f} s; ratio {v['ratio']:.3f} (target <= 1.15); end to end "
              f"{v['ratio_end_to_end']:.2f}")
    return 0
