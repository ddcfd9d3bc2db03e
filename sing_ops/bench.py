"""Benchmark: SING ops on a batch vs one ResNet50 forward on the same batch, same device.

    python -m sing_ops.bench [--batch 4096] [--device cuda] [--forward-batch 64]

The ops (null removal, translation, AS/IS and logit drift for a 2048-d, 1000-class head and
a 2048->768 translator) run on the full batch. On CPU a ResNet50 forward of 4096 images
takes minutes, so by default it is timed on `--forward-batch` images and scaled linearly
to the batch (forward cost is linear in batch size); on GPU pass --forward-batch 0 to time
the whole batch. Prints the ratio last.
"""
from __future__ import annotations

import argparse
import time

import torch

from .head import HeadDecomposition
from .scorer import AuditScorer
from .translator import Translator


def _time(fn, device, repeat: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None) -> float:
    p = argparse.ArgumentParser(prog="python -m sing_ops.bench", description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--forward-batch", type=int, default=32, help="images timed for the forward (0 = whole batch)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    device = torch.device(args.device)
    import torchvision

    g = torch.Generator().manual_seed(0)
    # A ResNet50-like head: 1000 classes over 2048 features (rank 1000, null_dim 1048).
    w = torch.randn(1000, 2048, generator=g) / 2048**0.5
    dec = HeadDecomposition.from_weight(w)
    tr = Translator(torch.randn(768, 2048, generator=g) / 2048**0.5, torch.randn(768, generator=g))
    scorer = AuditScorer(w, dec, tr, torch.randn(1000, 768, generator=g), device=device)
    f = torch.randn(args.batch, 2048, generator=g).abs().to(device)
    labels = torch.randint(0, 1000, (args.batch,), generator=g).to(device)
    logits = f @ w.T.to(device)
    ops_s = _time(lambda: scorer.score(f, labels, logits), device, args.repeat)

    model = torchvision.models.resnet50().eval().to(device)
    nb = args.batch if args.forward_batch <= 0 else min(args.forward_batch, args.batch)
    x = torch.randn(nb, 3, 224, 224, generator=g).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)

    def fwd():
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            model(x)

    fwd_s = _time(fwd, device, max(1, args.repeat - 1)) * (args.batch / nb)
    print(f"device={device} batch={args.batch} threads={torch.get_num_threads()}")
    print(f"SING ops (null removal + translation + AS/IS + drift): {ops_s * 1e3:.1f} ms "
          f"({args.batch / ops_s:,.0f} features/s)")
    print(f"ResNet50 forward, {nb} images timed, scaled to {args.batch}: {fwd_s:.2f} s ({args.batch / fwd_s:,.1f} img/s)")
    ratio = ops_s / fwd_s
    print(f"ratio sing_ops / resnet50_forward = {ratio:.4%} (goal < 2%)")
    return ratio


if __name__ == "__main__":
    main()
