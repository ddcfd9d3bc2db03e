"""The numeric precision of model forwards: one policy for every command that runs a model.

    fp32   IEEE float32 everywhere: TF32 is switched off for matmuls AND convolutions (PyTorch
           lets cuDNN convolutions use TF32 by default on Ampere and newer GPUs)
    tf32   float32 tensors, TF32 tensor-core matmuls and convolutions on CUDA (10-bit mantissa);
           on CPUs, which have no TF32, the same as fp32
    bf16   bfloat16 inputs and autocast (8-bit mantissa), channels-last on CUDA

The default is fp32: measured against a float64 forward (`sing bench-precision`), bf16 moves
per-image scores by far more than the error budget (README, "Precision"). The choice is part
of a run's identity (run id, manifest), so two precisions never mix in one run. Features and
logits leave the forward as float32; the SING ops after it run in float32 (audit) or float64
(explain, steer), which the budget covers.
"""
from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported where used: the CLI parser imports this module
    import torch

PRECISIONS = ("fp32", "tf32", "bf16")
DEFAULT_PRECISION = "fp32"
HELP = ("numeric precision of model forwards: fp32 (IEEE float32, TF32 off; the default), tf32 (TF32 tensor "
        "cores on CUDA; = fp32 on CPU) or bf16 (bfloat16 autocast); part of the run id")


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    return precision


def configure(precision: str) -> None:
    """Process-wide backend switches for `precision` (each model actor and the in-process
    commands run one precision, so process-wide is the right scope)."""
    import torch

    mode = "tf32" if check_precision(precision) == "tf32" else "ieee"
    torch.backends.cuda.matmul.fp32_precision = mode
    torch.backends.cudnn.conv.fp32_precision = mode
    torch.backends.cudnn.rnn.fp32_precision = mode


def input_dtype(precision: str) -> torch.dtype:
    import torch

    return torch.bfloat16 if precision == "bf16" else torch.float32


def autocast(precision: str, device) -> contextlib.AbstractContextManager:
    import torch

    dev = torch.device(device).type
    if precision == "bf16":
        return torch.autocast(dev, dtype=torch.bfloat16)
    return torch.autocast(dev, enabled=False)


def model_inputs(u8, view, precision: str, device) -> torch.Tensor:
    """(B, H, W, 3) uint8 (numpy or tensor) -> normalised model inputs on `device`."""
    import numpy as np
    import torch

    from pipelines.io.images import normalise

    if isinstance(u8, np.ndarray):
        u8 = torch.from_numpy(np.ascontiguousarray(u8))
    dev = torch.device(device)
    return normalise(u8.to(dev, non_blocking=True), view, dtype=input_dtype(precision),
                     channels_last=dev.type == "cuda")


def features_and_logits(model, x: torch.Tensor, precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward every command uses: (f, logits) as float32. `model` is a
    pipelines.models.classifiers.Classifier (or anything with features_and_logits)."""
    import torch

    with torch.inference_mode(), autocast(precision, x.device):
        f, logits = model.features_and_logits(x)
    return f.float(), logits.float()
