"""Affine translator T(f) = A f + b from classifier features to CLIP image embeddings."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

FORMAT = "sing-translator/1"  # file format tag (pipelines.translator_file)


class TranslatorMismatch(ValueError):
    """A translator file does not fit the model/CLIP/dims it is used with."""


@dataclass
class Translator:
    weight: torch.Tensor  # (d, m)
    bias: torch.Tensor  # (d,)
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        self.weight = torch.as_tensor(self.weight)
        self.bias = torch.as_tensor(self.bias)
        if self.weight.dim() != 2 or self.bias.shape != (self.weight.shape[0],):
            raise TranslatorMismatch(
                f"translator weight must be (d, m) and bias (d,), got {tuple(self.weight.shape)} and {tuple(self.bias.shape)}"
            )
        if not (torch.isfinite(self.weight).all() and torch.isfinite(self.bias).all()):
            raise TranslatorMismatch("translator has NaN/Inf parameters")

    @property
    def in_dim(self) -> int:
        return self.weight.shape[1]

    @property
    def out_dim(self) -> int:
        return self.weight.shape[0]

    def to(self, device=None, dtype=None) -> "Translator":
        return Translator(self.weight.to(device, dtype), self.bias.to(device, dtype), dict(self.metadata))

    def __call__(self, f: torch.Tensor) -> torch.Tensor:
        if f.shape[-1] != self.in_dim:
            raise TranslatorMismatch(
                f"feature dimension mismatch: features have {f.shape[-1]} dims, translator expects {self.in_dim}"
            )
        w = self.weight.to(device=f.device, dtype=f.dtype)
        return torch.addmm(self.bias.to(device=f.device, dtype=f.dtype), f.reshape(-1, self.in_dim), w.T).reshape(
            *f.shape[:-1], self.out_dim
        )

    @property
    def id(self) -> str:
        """Content hash of the parameters (stable across save/load)."""
        h = hashlib.sha256()
        h.update(self.weight.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        h.update(self.bias.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        return h.hexdigest()[:16]
