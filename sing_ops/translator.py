"""Affine translator T(f) = A f + b from classifier features to CLIP image embeddings."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

FORMAT = "sing-translator/1"


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

    def save(self, path) -> Path:
        """Safetensors with the metadata as JSON in its header, written atomically.

        A readable copy of the metadata goes to `<path>.json`.
        """
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {**self.metadata, "format": FORMAT, "in_dim": self.in_dim, "out_dim": self.out_dim, "id": self.id}
        tmp = path.with_name(f".{path.name}.tmp")
        save_file(
            {"weight": self.weight.detach().cpu().contiguous(), "bias": self.bias.detach().cpu().contiguous()},
            str(tmp),
            metadata={"sing": json.dumps(meta, sort_keys=True)},
        )
        os.replace(tmp, path)
        Path(f"{path}.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(
        cls,
        path,
        *,
        in_dim: int | None = None,
        out_dim: int | None = None,
        source_model: str | None = None,
        clip_model: str | None = None,
    ) -> "Translator":
        """Load and check against what the caller will use it with; refuses any mismatch."""
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"translator file not found: {path}")
        try:
            with safe_open(str(path), framework="pt") as fh:
                raw = (fh.metadata() or {}).get("sing")
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        except (SafetensorError, OSError, ValueError) as exc:
            raise TranslatorMismatch(f"{path} is not a readable safetensors translator: {exc}") from exc
        if raw is None or set(tensors) != {"weight", "bias"}:
            raise TranslatorMismatch(f"{path} is not a sing translator (no 'sing' metadata or wrong tensors)")
        meta = json.loads(raw)
        if meta.get("format") != FORMAT:
            raise TranslatorMismatch(f"{path}: unsupported translator format {meta.get('format')!r}, expected {FORMAT}")
        t = cls(tensors["weight"], tensors["bias"], meta)
        if (meta.get("in_dim"), meta.get("out_dim")) != (t.in_dim, t.out_dim):
            raise TranslatorMismatch(f"{path}: metadata dims {meta.get('in_dim')}->{meta.get('out_dim')} "
                                     f"disagree with tensors {t.in_dim}->{t.out_dim}")
        checks = [("input dim", in_dim, t.in_dim), ("output dim", out_dim, t.out_dim),
                  ("source model", source_model, meta.get("source_model")),
                  ("CLIP model", clip_model, meta.get("clip_model"))]
        for what, expected, actual in checks:
            if expected is not None and expected != actual:
                raise TranslatorMismatch(
                    f"translator {path} was fitted for {what} {actual!r}, but is used with {expected!r}"
                )
        return t
