"""The final linear layer of any classifier, found generically, and the forward that captures
its input f (the feature SING works on) beside the logits."""
from __future__ import annotations

import torch

from pipelines.errors import BadInput


def _is_head_module(m: torch.nn.Module) -> bool:
    if isinstance(m, torch.nn.Linear):
        return True
    return (isinstance(m, torch.nn.Conv2d) and tuple(m.kernel_size) == (1, 1) and m.groups == 1)


def find_head(module: torch.nn.Module) -> torch.nn.Module:
    """The final linear layer: timm's get_classifier() when available, else the last nn.Linear
    (or 1x1 Conv2d) in module registration order."""
    if hasattr(module, "get_classifier"):
        head = module.get_classifier()
        if isinstance(head, (tuple, list)):
            raise ValueError(
                f"{type(module).__name__} has {len(head)} classifier heads (distilled model); "
                "SING needs a single final linear layer")
        if isinstance(head, torch.nn.Module):
            if _is_head_module(head):
                return head
            inner = [m for m in head.modules() if _is_head_module(m)]
            if inner:
                return inner[-1]
            if isinstance(head, torch.nn.Identity):
                raise ValueError(f"{type(module).__name__} has no classifier (num_classes=0?)")
    cands = [m for m in module.modules() if _is_head_module(m)]
    if not cands:
        raise ValueError(f"no final nn.Linear or 1x1 nn.Conv2d found in {type(module).__name__}")
    return cands[-1]


def head_name(module: torch.nn.Module, head: torch.nn.Module) -> str:
    for name, m in module.named_modules():
        if m is head:
            return name
    raise ValueError("head is not a submodule of the model")


def forward_capture(module, head, x, verify: bool):
    got: dict = {}

    def hook(_m, inp, out):
        got["f"] = inp[0]
        if verify:
            got["out"] = out

    h = head.register_forward_hook(hook)
    try:
        with torch.inference_mode():
            logits = module(x)
    finally:
        h.remove()
    if "f" not in got:
        raise BadInput("the head was not called during forward (wrong head?)")
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"model returned {type(logits).__name__}, expected a logits tensor")
    f = got["f"]
    if f.ndim > 2:
        if any(d != 1 for d in f.shape[2:]):
            raise ValueError(
                f"the head's input is spatial {tuple(f.shape)}: the final 1x1 conv is applied "
                "before pooling, so logits are not a linear function of one feature vector")
        f = f.flatten(1)
    if verify:
        out = got["out"].flatten(1) if got["out"].ndim > 2 else got["out"]
        scale = float(logits.abs().max()) if logits.numel() else 0.0
        if out.shape != logits.shape or not torch.allclose(out, logits, atol=1e-6 * scale, rtol=1e-5):
            raise ValueError(
                "the model's output is not the final linear layer's output (something runs "
                f"after it: head out {tuple(out.shape)} vs logits {tuple(logits.shape)}); "
                "SING needs logits = W f + b")
    return f.float(), logits.float()
