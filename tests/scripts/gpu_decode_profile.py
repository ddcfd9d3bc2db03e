"""Where the device-decode time goes, one step at a time, synchronised (run on a GPU node):

    python tests/scripts/gpu_decode_profile.py [--batch 256] [--repeats 20] [--device cuda]

For a batch of photo-like JPEGs in ImageNet's size mix it times, per batch: the header checks
(CPU), nvJPEG's batched decode, the resize+crop per image and grouped by size, and normalise.
It prints img/s of each step and the grouped/per-image ratio: the numbers that say whether the
GPU's JPEG decoder, the resize launches or the host are the limit (docs/ARCHITECTURE.md).
With --procs N it then runs N processes that only decode + resize (what N actors per GPU do
besides the forward) and prints their total img/s: the node's device-decode ceiling, to set
against the bare forward's img/s (the pipeline cannot beat the smaller of the two).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from pipelines.jobs.bench.data import imagenet_like_photos  # noqa: E402
from pipelines.stages.device_decode import device_decodable, resize_views  # noqa: E402
from pipelines.io.images import normalise  # noqa: E402
from pipelines.models.preprocess import PreprocessSpec  # noqa: E402

def timed(fn, device, repeats: int) -> float:
    fn()  # warm-up (allocator, nvJPEG handles, kernels)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeats


def _decode_worker(args) -> tuple[int, float, float]:
    """One process: decode + resize `repeats` batches; returns (images, start, end) times."""
    batch, repeats, device_name, barrier = args
    from pipelines.stages.device_decode import decode_batch

    device = torch.device(device_name)
    spec = PreprocessSpec(224, 256, "bilinear", (0.5,) * 3, (0.5,) * 3)
    data = imagenet_like_photos(batch, np.random.default_rng(os.getpid()))
    decode_batch(data, spec, device, checked=True)  # warm-up
    barrier.wait()
    t0 = time.time()
    for _ in range(repeats):
        decode_batch(data, spec, device, checked=True)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * repeats, t0, time.time()


def decode_ceiling(procs: int, batch: int, repeats: int, device: str) -> float:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # CUDA does not survive fork
    with ctx.Manager() as m:
        barrier = m.Barrier(procs)
        with ctx.Pool(procs) as pool:
            res = pool.map(_decode_worker, [(batch, repeats, device, barrier)] * procs)
    n = sum(r[0] for r in res)
    return n / (max(r[2] for r in res) - min(r[1] for r in res))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--procs", type=int, nargs="*", default=[],
                    help="also measure the decode-only img/s of this many processes (e.g. 1 4 8)")
    a = ap.parse_args()
    from torchvision.io import ImageReadMode, decode_jpeg

    warnings.simplefilter("ignore", DeprecationWarning)
    device = torch.device(a.device)
    spec = PreprocessSpec(224, 256, "bilinear", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    data = imagenet_like_photos(a.batch, np.random.default_rng(0))
    raw = [torch.from_numpy(np.frombuffer(d, dtype=np.uint8).copy()) for d in data]
    imgs = decode_jpeg(raw, mode=ImageReadMode.RGB, device=device)
    n_groups = len({tuple(i.shape) for i in imgs})
    steps = {
        "header checks (CPU)": lambda: [device_decodable(d, None) for d in data],
        "bytes -> tensors (CPU)": lambda: [torch.from_numpy(np.frombuffer(d, dtype=np.uint8).copy()) for d in data],
        "decode_jpeg batch": lambda: decode_jpeg(raw, mode=ImageReadMode.RGB, device=device),
        "resize+crop per image": lambda: torch.stack(resize_views(imgs, spec, grouped=False)),
        f"resize+crop grouped ({n_groups} sizes)": lambda: torch.stack(resize_views(imgs, spec, grouped=True)),
    }
    u8 = torch.stack(resize_views(imgs, spec, grouped=True))
    steps["normalise bf16 channels_last"] = lambda: normalise(u8, spec, torch.bfloat16, channels_last=True)
    print(f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}), "
          f"batch {a.batch}, {a.repeats} repeats, torch {torch.__version__}")
    secs = {}
    for name, fn in steps.items():
        secs[name] = timed(fn, device, a.repeats)
        print(f"  {name:32s} {1e3 * secs[name]:8.2f} ms/batch  {a.batch / secs[name]:10.0f} img/s")
    per, grp = secs["resize+crop per image"], secs[f"resize+crop grouped ({n_groups} sizes)"]
    print(f"grouped/per-image resize time: {grp / per:.2f} (below 1: grouping wins)")
    for procs in a.procs:
        ips = decode_ceiling(procs, a.batch, a.repeats, a.device)
        print(f"decode+resize only, {procs} processes: {ips:.0f} img/s in total")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
