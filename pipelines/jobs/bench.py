"""`sing bench`: is the pipeline as fast as the model allows, and does it stream?

Measured in one run, on this machine, with the same model, batch size, device and
precision throughout:
  1. bare forward: the classifier on in-memory random tensors (the ceiling);
  2. pipeline: `sing audit` over JPEG shards (read, decode, forward, SING ops, Parquet),
     run for N and 4N images. Steady-state images/s = 3N / (wall(4N) - wall(N)): Ray and
     actor start-up cost the same in both runs and cancel out (timing rows as they reach
     the driver would not: Ray Data hands them over in bursts). End-to-end images/s
     (start-up included) is reported too;
  3. naive loop: what single-image code does (decode, forward, score, one at a time);
  4. peak memory (PSS, so shared pages count once) of the whole process tree (driver + Ray workers) for 1x and 4x the images.
Prints ratios last.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from pipelines.models.precision import DEFAULT_PRECISION
from pipelines.io.translator_file import load_translator, save_translator


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


def _make_jpegs(root: Path, n: int, n_classes: int = 8, seed: int = 0, unique: int = 64) -> Path:
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


def _rss_tree(pid: int) -> int:
    import psutil

    try:
        p = psutil.Process(pid)
        procs = [p] + p.children(recursive=True)
    except psutil.Error:
        return 0
    total = 0
    for q in procs:
        pss = _pss(q.pid)
        if pss is None:
            try:
                pss = q.memory_info().rss
            except psutil.Error:
                pss = 0
        total += pss
    return total


def _pss(pid: int) -> int | None:
    """PSS: shared pages (Ray's object store, libraries) split among their users, so a sum
    over processes counts them once. smaps_rollup is one cheap read; psutil's full smaps
    walk took a visible share of a 2-core machine at this sampling rate."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _peak_rss_of(cmd: list[str], env: dict) -> tuple[int, int, str]:
    """Run cmd; sample the memory (PSS) of its whole process tree every 200 ms. (peak bytes, rc, tail)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = [0]

    def sample():
        while proc.poll() is None:
            peak[0] = max(peak[0], _rss_tree(proc.pid))
            time.sleep(0.2)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, _ = proc.communicate()
    th.join()
    return peak[0], proc.returncode, out[-2000:]


def _bench_translator(clf, path: Path) -> Path:
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


def bare_forward_rate(clf, batch_size: int, n_images: int, threads: int, device: str = "cpu",
                      precision: str = DEFAULT_PRECISION) -> float:
    """The ceiling: in-memory random inputs, the precision and layout the actors use
    (pipelines.models.precision; channels_last on CUDA)."""
    import torch

    from pipelines.models.precision import configure, features_and_logits, model_inputs

    torch.set_num_threads(threads)
    configure(precision)
    cuda = device.startswith("cuda")
    g = torch.Generator().manual_seed(0)
    u8 = torch.randint(0, 256, (batch_size, *clf.preprocess.crop_hw, 3), dtype=torch.uint8, generator=g)
    x = model_inputs(u8, clf.preprocess, precision, device)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    for _ in range(3 if cuda else 1):  # warm-up (cuDNN picks its algorithms)
        features_and_logits(clf, x, precision)
    sync()
    n, t0 = 0, time.perf_counter()
    while n < n_images:
        features_and_logits(clf, x, precision)
        n += batch_size
    sync()
    return n / (time.perf_counter() - t0)


def naive_loop_rate(clf, translator_path: Path, shard_paths: list[str], n_images: int, threads: int,
                    device: str = "cpu") -> float:
    """Single-image code: for each image decode -> transform -> forward -> SING scores
    (float32, as the official code does)."""
    import torch

    from sing_ops import AuditScorer, HeadDecomposition

    from pipelines.io.images import decode_image, normalise, to_uint8_view
    from pipelines.io.shards import Sample, iter_shard

    torch.set_num_threads(threads)
    tr = load_translator(translator_path)
    dec = HeadDecomposition.from_weight(clf.head_weight)
    text = torch.randn(clf.num_classes, tr.out_dim)
    samples = [s for p in shard_paths for s in iter_shard(p) if isinstance(s, Sample)][:n_images]
    t0 = time.perf_counter()
    for s in samples:
        # the single-image path rebuilds its projector and scorer per image, like one-image code
        scorer = AuditScorer(clf.head_weight, dec, tr, text, device=device)
        u8 = torch.from_numpy(to_uint8_view(decode_image(s.image), clf.preprocess))[None].to(device)
        with torch.inference_mode():
            f, logits = clf.features_and_logits(normalise(u8, clf.preprocess))
            res = scorer.score(f, torch.tensor([s.label % clf.num_classes], device=device), logits)
        float(res["is_deg"][0])  # the result reaches the host, as single-image code prints it
    return len(samples) / (time.perf_counter() - t0)


def _bench_shards(work: Path, n_images: int, mult: int, threads: int) -> list[str]:
    """The JPEG shards of the mult-x run, made once (named by size, so a kept --out serves
    later runs of the same size only)."""
    from pipelines.jobs.make_shards import make_shards

    src = work / f"jpeg_{n_images * mult}"
    if not src.is_dir():
        _make_jpegs(src, n_images * mult, seed=mult)
    sd = work / f"shards_{n_images * mult}"
    if not any(sd.glob("*.tar")):
        # as many shards in the 1x run as read tasks can run at once, so both runs have
        # the same parallelism and peak memory compares data size, not process count
        make_shards(str(src), str(sd), per_shard=max(8, n_images // (2 * threads)))
    return sorted(str(p) for p in sd.glob("*.tar"))


def run_bench(model: str, n_images: int | None, batch_size: int, out: str | None = None,
              device: str | None = None, decode: str | None = None, host_decode_share: float = 0.0,
              actors_per_gpu: int | None = None, actor_threads: int | None = None,
              buffer_gb: float | None = None, precision: str = DEFAULT_PRECISION) -> dict:
    import torch

    from pipelines.models.classifiers import load_classifier

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.startswith("cuda")
    decode = decode or ("device" if cuda else "host")
    n_images = n_images or (4096 if cuda else 192)  # enough seconds of work to time on each
    work = Path(out) if out else Path(tempfile.mkdtemp(prefix="sing-bench-"))
    threads = os.cpu_count() or 1
    clf = load_classifier(model)
    tpath = _bench_translator(clf, work / "translator.safetensors")
    shards = {mult: _bench_shards(work, n_images, mult, threads) for mult in (1, 4)}

    # the audit options this bench sets (the rest are the audit's defaults), with their labels
    audit_flags = [(flag, label.format(value), value) for flag, label, value in (
        ("--host-decode-share", "host decode share {}", host_decode_share),
        ("--actors-per-gpu", "{} actors per GPU", actors_per_gpu),
        ("--actor-threads", "{} threads per actor", actor_threads),
        ("--buffer-gb", "buffer {} GB", buffer_gb)) if value]
    print(f"[bench] model {clf.model_id}, {n_images} images, batch {batch_size}, {threads} CPU threads, "
          f"device {device} ({precision}{', channels_last' if cuda else ''}), decode {decode}"
          + "".join(f", {label}" for _, label, _ in audit_flags))
    clf.to(device, channels_last=cuda)
    bare = bare_forward_rate(clf, batch_size, max(n_images, 4 * batch_size), threads, device, precision)
    print(f"[bench] bare forward: {bare:.2f} img/s")
    naive = naive_loop_rate(clf, tpath, shards[1], min(n_images, 24 if not cuda else 256), threads, device)
    print(f"[bench] naive per-image loop: {naive:.2f} img/s")

    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    results = {}
    for mult in (1, 4):
        res_dir = work / f"results_{mult}x"
        cmd = [sys.executable, "-m", "pipelines.cli", "-q", "audit", "--model", model, "--translator", str(tpath),
               "--shards", *shards[mult], "--out", str(res_dir), "--batch-size", str(batch_size),
               "--run-id", f"bench-{mult}x-{int(time.time())}", "--device", device, "--decode", decode,
               "--precision", precision]
        cmd += [str(x) for flag, _, value in audit_flags for x in (flag, value)]
        t0 = time.perf_counter()
        peak, rc, tail = _peak_rss_of(cmd, env)
        wall = time.perf_counter() - t0
        if rc != 0:
            raise RuntimeError(f"benchmark audit failed (rc {rc}):\n{tail}")
        man = json.loads(sorted((res_dir / "runs").glob("*.json"))[-1].read_text())
        results[mult] = {"peak_rss_mb": peak / 2**20, "wall_s": man["wall_seconds"], "manifest": man}
        print(f"[bench] pipeline {mult}x ({n_images * mult} images): {man['wall_seconds']:.1f} s in the audit "
              f"({n_images * mult / man['wall_seconds']:.2f} img/s end-to-end), process {wall:.1f} s, "
              f"peak PSS {peak / 2**20:.0f} MiB")
    # the ceiling again, after the pipeline runs: a noisy machine shows up as two values
    bare_after = bare_forward_rate(clf, batch_size, max(n_images, 4 * batch_size), threads, device, precision)
    print(f"[bench] bare forward again: {bare_after:.2f} img/s (before: {bare:.2f})")
    bare = (bare + bare_after) / 2
    man = results[4]["manifest"]
    stages = man["stage_seconds"]
    print("[bench] stage seconds (4x run; summed over workers): " +
          ", ".join(f"{k} {v:.1f}" for k, v in sorted(stages.items())))
    steady = 3 * n_images / max(results[4]["wall_s"] - results[1]["wall_s"], 1e-9)
    print(f"[bench] pipeline steady state (4x - 1x): {steady:.2f} img/s")
    stream = man.get("stream_images_per_second") or float("nan")
    print(f"[bench] pipeline stream rate (4x run, first result to last): {stream:.2f} img/s")
    report = {
        "bare_forward_ips": bare, "pipeline_steady_ips": steady,
        "pipeline_end_to_end_ips": 4 * n_images / results[4]["wall_s"], "naive_ips": naive,
        "pipeline_stream_ips": stream,
        "peak_rss_mb_1x": results[1]["peak_rss_mb"], "peak_rss_mb_4x": results[4]["peak_rss_mb"],
        "stage_seconds": stages,
    }
    print(f"peak PSS 1x {report['peak_rss_mb_1x']:.0f} MiB, 4x {report['peak_rss_mb_4x']:.0f} MiB "
          f"(ratio {report['peak_rss_mb_4x'] / report['peak_rss_mb_1x']:.2f}; streaming keeps it ~1)")
    print(f"speed-up over naive per-image loop: {steady / naive:.1f}x (end-to-end "
          f"{report['pipeline_end_to_end_ips'] / naive:.1f}x)")
    print(f"ratio pipeline/bare forward: steady {steady / bare:.3f}, stream {stream / bare:.3f}, end-to-end "
          f"{report['pipeline_end_to_end_ips'] / bare:.3f} (goal >= {0.9 if cuda else 0.85} steady on {device})")
    return report


def cli_args(p) -> None:
    from pipelines.models.precision import HELP, PRECISIONS

    p.add_argument("--model", default="torchvision:resnet50@random", help="classifier MODEL string")
    p.add_argument("--precision", choices=PRECISIONS, default=DEFAULT_PRECISION, help=HELP)
    p.add_argument("--images", type=int, help="images of the 1x run (default: 192 on CPU, 4096 on CUDA)")
    p.add_argument("--batch-size", type=int, default=32, help="images per model batch")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--decode", choices=["host", "device"], help="default: device on CUDA, host on CPU")
    p.add_argument("--host-decode-share", type=float, default=0.0, metavar="F",
                   help="passed to the audit (--decode device only)")
    p.add_argument("--actors-per-gpu", type=int, help="passed to the audit (default: the audit's)")
    p.add_argument("--actor-threads", type=int, help="passed to the audit (default: the audit's)")
    p.add_argument("--buffer-gb", type=float, help="passed to the audit (default: Ray's budget)")
    p.add_argument("--out", help="keep the benchmark's shards and results here")


def cli_run(args) -> int:
    run_bench(args.model, args.images, args.batch_size, args.out, args.device, args.decode,
              args.host_decode_share, args.actors_per_gpu, args.actor_threads,
              args.buffer_gb, args.precision)
    return 0
