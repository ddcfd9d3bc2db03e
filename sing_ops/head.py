"""Null/principal decomposition of a classifier's final linear layer."""
from __future__ import annotations

from dataclasses import dataclass

import torch

DEFAULT_ATOL = 1e-5  # the official code's absolute singular-value tolerance


class HeadError(ValueError):
    """The head weight cannot be decomposed (wrong shape, NaN/Inf, unsupported module)."""


def _as_float64_matrix(weight) -> torch.Tensor:
    w = torch.as_tensor(weight)
    if w.dim() == 4 and w.shape[2:] == (1, 1):  # 1x1 conv head: (c, m, 1, 1)
        w = w.flatten(1)
    if w.dim() != 2:
        raise HeadError(f"head weight must be 2-D (classes x features), got shape {tuple(w.shape)}")
    if w.shape[0] == 0 or w.shape[1] == 0:
        raise HeadError(f"head weight is empty: shape {tuple(w.shape)}")
    w = w.detach().to("cpu", torch.float64)
    if not torch.isfinite(w).all():
        bad = int((~torch.isfinite(w)).sum())
        raise HeadError(f"head weight has {bad} NaN/Inf entries; refusing to decompose")
    return w


@dataclass(frozen=True)
class HeadDecomposition:
    """W = U S V^T in float64; V = [V_p | V_n].

    `null_basis` (m x null_dim) spans ker(W); `principal_basis` (m x rank) spans its
    orthogonal complement. Bases are kept in float64; `to()` makes device/dtype copies
    for batched work.
    """

    singular_values: torch.Tensor  # (min(c, m),) float64, descending
    principal_basis: torch.Tensor  # (m, rank)
    null_basis: torch.Tensor  # (m, null_dim)
    atol: float | None
    rtol: float | None
    threshold: float  # the singular-value cut actually applied

    @classmethod
    def from_weight(cls, weight, atol: float | None = DEFAULT_ATOL, rtol: float | None = None):
        """Decompose a (c x m) weight. rank = #{s_i > max(atol, rtol * s_max)}."""
        if atol is None and rtol is None:
            raise HeadError("give a rank tolerance: atol, rtol or both")
        for name, tol in (("atol", atol), ("rtol", rtol)):
            if tol is not None and not (tol >= 0):
                raise HeadError(f"{name} must be a non-negative number, got {tol}")
        w = _as_float64_matrix(weight)
        m = w.shape[1]
        # full_matrices=True: V must span all of R^m, including directions W never sees.
        _, s, vh = torch.linalg.svd(w, full_matrices=True)
        s_max = float(s[0]) if s.numel() else 0.0
        threshold = max(atol or 0.0, (rtol or 0.0) * s_max)
        rank = int((s > threshold).sum())
        v = vh.T  # (m, m)
        return cls(
            singular_values=s,
            principal_basis=v[:, :rank].contiguous(),
            null_basis=v[:, rank:m].contiguous(),
            atol=atol,
            rtol=rtol,
            threshold=threshold,
        )

    @classmethod
    def from_module(cls, head: torch.nn.Module, atol: float | None = DEFAULT_ATOL, rtol: float | None = None):
        """From a torch head: nn.Linear, or an nn.Conv2d with a 1x1 kernel (flattened)."""
        if isinstance(head, torch.nn.Linear):
            return cls.from_weight(head.weight, atol=atol, rtol=rtol)
        if isinstance(head, torch.nn.Conv2d):
            if head.kernel_size != (1, 1) or head.groups != 1:
                raise HeadError(f"only 1x1, ungrouped conv heads are linear maps of the feature; got {head}")
            return cls.from_weight(head.weight, atol=atol, rtol=rtol)
        raise HeadError(f"unsupported head module {type(head).__name__}: expected nn.Linear or 1x1 nn.Conv2d")

    @property
    def num_features(self) -> int:
        return self.principal_basis.shape[0]

    @property
    def rank(self) -> int:
        return self.principal_basis.shape[1]

    @property
    def null_dim(self) -> int:
        return self.null_basis.shape[1]

    @property
    def has_null_space(self) -> bool:
        return self.null_dim > 0

    def to(self, device=None, dtype=None) -> "HeadDecomposition":
        conv = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
        return HeadDecomposition(
            singular_values=self.singular_values,
            principal_basis=conv(self.principal_basis),
            null_basis=conv(self.null_basis),
            atol=self.atol,
            rtol=self.rtol,
            threshold=self.threshold,
        )

    def _check(self, f: torch.Tensor) -> torch.Tensor:
        if f.shape[-1] != self.num_features:
            raise HeadError(
                f"feature dimension mismatch: features have {f.shape[-1]} dims, head expects {self.num_features}"
            )
        return f

    def null_coords(self, f: torch.Tensor) -> torch.Tensor:
        """V_n^T f for a batch (..., m) -> (..., null_dim)."""
        f = self._check(f)
        return f @ self.null_basis.to(device=f.device, dtype=f.dtype)

    def null_part(self, f: torch.Tensor) -> torch.Tensor:
        """P_n f = V_n V_n^T f."""
        vn = self.null_basis.to(device=f.device, dtype=f.dtype)
        return (self._check(f) @ vn) @ vn.T

    def remove_null(self, f: torch.Tensor) -> torch.Tensor:
        """The equivalent feature f~ = f - P_n f = P_p f (same logits)."""
        return f - self.null_part(f)

    def summary(self) -> dict:
        return {
            "num_features": self.num_features,
            "rank": self.rank,
            "null_dim": self.null_dim,
            "rank_atol": self.atol,
            "rank_rtol": self.rtol,
            "rank_threshold": self.threshold,
        }
