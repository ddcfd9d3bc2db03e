"""Exact one-pass ridge regression from streaming sufficient statistics.

The sums (n, sum f, sum z, sum f f^T, sum f z^T, sum z*z) are kept in float64 and add
up across batches and workers, so a cluster-wide fit is one `merge` per worker followed
by one `solve`. The intercept is not penalised: the system is solved on centred moments.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .translator import Translator

F64 = torch.float64


class RidgeError(ValueError):
    pass


def _pair(f, z) -> tuple[torch.Tensor, torch.Tensor]:
    f = torch.as_tensor(f).detach()
    z = torch.as_tensor(z).detach()
    if f.dim() != 2 or z.dim() != 2 or f.shape[0] != z.shape[0]:
        raise RidgeError(f"expected f (n, m) and z (n, d) with equal n, got {tuple(f.shape)} and {tuple(z.shape)}")
    f = f.to("cpu", F64)
    z = z.to("cpu", F64)
    if not (torch.isfinite(f).all() and torch.isfinite(z).all()):
        raise RidgeError("NaN/Inf in features or CLIP embeddings; refusing to accumulate")
    return f, z


@dataclass
class RidgeStats:
    in_dim: int
    out_dim: int
    n: int = 0
    sum_f: torch.Tensor | None = None
    sum_z: torch.Tensor | None = None
    sum_ff: torch.Tensor | None = None
    sum_fz: torch.Tensor | None = None
    sum_zz: torch.Tensor | None = None  # per output dim, for MSE and R^2

    def __post_init__(self):
        m, d = self.in_dim, self.out_dim
        zeros = lambda *s: torch.zeros(*s, dtype=F64)  # noqa: E731
        self.sum_f = zeros(m) if self.sum_f is None else self.sum_f
        self.sum_z = zeros(d) if self.sum_z is None else self.sum_z
        self.sum_ff = zeros(m, m) if self.sum_ff is None else self.sum_ff
        self.sum_fz = zeros(m, d) if self.sum_fz is None else self.sum_fz
        self.sum_zz = zeros(d) if self.sum_zz is None else self.sum_zz

    def update(self, f, z) -> "RidgeStats":
        f, z = _pair(f, z)
        if (f.shape[1], z.shape[1]) != (self.in_dim, self.out_dim):
            raise RidgeError(f"dimension mismatch: stats are {self.in_dim}->{self.out_dim}, "
                             f"batch is {f.shape[1]}->{z.shape[1]}")
        self.n += f.shape[0]
        self.sum_f += f.sum(0)
        self.sum_z += z.sum(0)
        self.sum_ff += f.T @ f
        self.sum_fz += f.T @ z
        self.sum_zz += (z * z).sum(0)
        return self

    def merge(self, other: "RidgeStats") -> "RidgeStats":
        """A new RidgeStats holding the sums of both."""
        if (other.in_dim, other.out_dim) != (self.in_dim, self.out_dim):
            raise RidgeError(f"cannot merge {other.in_dim}->{other.out_dim} stats into {self.in_dim}->{self.out_dim}")
        return RidgeStats(self.in_dim, self.out_dim, self.n + other.n, self.sum_f + other.sum_f,
                          self.sum_z + other.sum_z, self.sum_ff + other.sum_ff, self.sum_fz + other.sum_fz,
                          self.sum_zz + other.sum_zz)

    # -- serialisation for shipping partial sums between workers (no pickle of code) --
    def state_dict(self) -> dict:
        return {"in_dim": self.in_dim, "out_dim": self.out_dim, "n": self.n, "sum_f": self.sum_f,
                "sum_z": self.sum_z, "sum_ff": self.sum_ff, "sum_fz": self.sum_fz, "sum_zz": self.sum_zz}

    @classmethod
    def from_state_dict(cls, s: dict) -> "RidgeStats":
        return cls(**s)

    # -- moments --
    def _centred(self):
        if self.n < 2:
            raise RidgeError(f"need at least 2 samples to fit a translator, have {self.n}")
        mu_f = self.sum_f / self.n
        mu_z = self.sum_z / self.n
        cff = self.sum_ff - self.n * torch.outer(mu_f, mu_f)
        cfz = self.sum_fz - self.n * torch.outer(mu_f, mu_z)
        return mu_f, mu_z, 0.5 * (cff + cff.T), cfz

    def gram_trace(self) -> float:
        """Trace of the centred Gram matrix: the natural unit of lambda."""
        return float(torch.trace(self._centred()[2])) or 1.0

    def default_grid(self, num: int = 13) -> list[float]:
        """Lambdas spanning 1e-6..1e0 times `gram_trace()`."""
        scale = self.gram_trace()
        return [scale * 10.0 ** e for e in torch.linspace(-6, 0, num).tolist()]

    def solve(self, lam: float, **metadata) -> Translator:
        return self.solve_many([lam], **metadata)[0]

    def solve_many(self, lams, **metadata) -> list[Translator]:
        """One eigendecomposition of the centred Gram matrix serves every lambda."""
        if any(not (lam >= 0) for lam in lams):
            raise RidgeError(f"lambda must be >= 0, got {list(lams)}")
        mu_f, mu_z, cff, cfz = self._centred()
        evals, q = torch.linalg.eigh(cff)
        qt_cfz = q.T @ cfz
        out = []
        for lam in lams:
            denom = evals + lam
            if lam == 0 and float(denom.min()) <= 1e-12 * max(float(denom.max()), 1.0):
                raise RidgeError("lambda = 0 with a singular feature covariance; use lambda > 0")
            a_t = q @ (qt_cfz / denom[:, None])  # (m, d) = (Cff + lam I)^-1 Cfz
            a = a_t.T.contiguous()
            b = mu_z - a @ mu_f
            out.append(Translator(a.float(), b.float(), {**metadata, "lambda": float(lam), "n_fit": self.n}))
        return out


def translation_quality(translator: Translator, f, z) -> dict:
    """Held-out MSE (mean over samples and dims), R^2 (1 - SSE/SST, pooled over dims)
    and mean cosine(T(f), z), all in float64."""
    f, z = _pair(f, z)
    pred = translator.to(dtype=F64)(f)
    err = pred - z
    sse = float((err * err).sum())
    sst = float(((z - z.mean(0)) ** 2).sum())
    cos = torch.nn.functional.cosine_similarity(pred, z, dim=1, eps=1e-12)
    return {"mse": sse / z.numel(), "r2": 1.0 - sse / sst if sst > 0 else math.nan, "mean_cosine": float(cos.mean()),
            "n": f.shape[0]}


@dataclass
class LambdaSelection:
    translator: Translator
    best_lambda: float
    table: list[dict]  # one row per grid value: lambda, mse, r2, mean_cosine, n


def select_lambda(stats: RidgeStats, heldout, grid=None, **metadata) -> LambdaSelection:
    """Fit on `stats` for every lambda in `grid`, choose by held-out MSE.

    `heldout` is a pair (f, z) of held-out features and CLIP embeddings.
    """
    f, z = heldout
    grid = list(grid) if grid is not None else stats.default_grid()
    if not grid:
        raise RidgeError("empty lambda grid")
    fits = stats.solve_many(grid, **metadata)
    table = [{"lambda": float(lam), **translation_quality(t, f, z)} for lam, t in zip(grid, fits)]
    best = min(range(len(grid)), key=lambda i: table[i]["mse"])
    chosen = fits[best]
    chosen.metadata.update({"heldout": table[best], "lambda_grid": table})
    return LambdaSelection(chosen, float(grid[best]), table)
