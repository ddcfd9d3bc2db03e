"""A planted-leakage world: the known-answer test of the whole method.

Latent factors per sample: a class y and nuisance factors n ("background", "colour").
    classifier feature  f = V_p (mu_y + s_p e) + V_n (leak * L_y + N n + s_n e')
    CLIP embedding      z = G_c[y] + nuis * G_n n + z_0 + s_z e''
    class text          t_y = G_c[y]
The head W = M V_p^T sees only the principal coordinates. The null space always holds the
nuisance (harmless invariance: large IS); `leak` additionally writes a class code L_y into
it, so a translator fitted on (f, z) learns to read class meaning from the null space and
removing the null part moves T(f) away from the class text (|AS| grows with `leak`).
z_0 is a common offset, like CLIP's shared image direction, which keeps image-text
cosines low (about 0.1; real CLIP: 0.2-0.3) so that removing nuisance alone barely changes
the angle to the class text.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .head import HeadDecomposition
from .ridge import RidgeStats
from .translator import Translator


@dataclass
class SyntheticWorld:
    weight: torch.Tensor  # (c, m) head
    bias: torch.Tensor  # (c,)
    features: torch.Tensor  # (n, m) float64
    clip: torch.Tensor  # (n, d) float64
    labels: torch.Tensor  # (n,)
    class_text: torch.Tensor  # (c, d)
    leak: float

    @property
    def decomposition(self) -> HeadDecomposition:
        return HeadDecomposition.from_weight(self.weight)

    def ridge_stats(self, batch: int = 256) -> RidgeStats:
        stats = RidgeStats(self.features.shape[1], self.clip.shape[1])
        for i in range(0, len(self.labels), batch):
            stats.update(self.features[i:i + batch], self.clip[i:i + batch])
        return stats

    def translator(self, lam: float = 1e-3) -> Translator:
        """Ridge translator fitted on this world's own pairs (lambda relative to the trace)."""
        stats = self.ridge_stats()
        return stats.solve(lam * stats.gram_trace())

    def head_module(self) -> torch.nn.Linear:
        head = torch.nn.Linear(self.weight.shape[1], self.weight.shape[0])
        with torch.no_grad():
            head.weight.copy_(self.weight)
            head.bias.copy_(self.bias)
        return head


def _orthonormal(rows: int, cols: int, g: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(rows, cols, generator=g, dtype=torch.float64))
    return q


def make_world(leak: float = 0.0, n_classes: int = 8, n_per_class: int = 150, feat_dim: int = 48,
               clip_dim: int = 32, n_nuisance: int = 4, nuisance: float = 2.0, offset: float = 10.0,
               noise: float = 0.3, seed: int = 0, world_seed: int = 1234) -> SyntheticWorld:
    """`world_seed` fixes the geometry (bases, class codes); `seed` draws the samples, so
    worlds differing only in `leak` share everything else."""
    c, m, d, q = n_classes, feat_dim, clip_dim, n_nuisance
    if m < c + q + c or d < c + q + 1:
        raise ValueError("dimensions too small for the planted factors")
    g = torch.Generator().manual_seed(world_seed)
    basis = _orthonormal(m, m, g)
    v_p, v_n = basis[:, :c], basis[:, c:]
    k = m - c
    null_codes = _orthonormal(k, c + q, g)  # class codes and nuisance directions, orthogonal
    leak_codes, nuis_dirs = null_codes[:, :c], null_codes[:, c:]
    mu = 3.0 * _orthonormal(c, c, g)  # well separated class means in principal coords
    mix = torch.eye(c, dtype=torch.float64) + 0.2 * torch.randn(c, c, generator=g, dtype=torch.float64)
    weight = mix @ mu @ v_p.T  # rank c, row space = span(V_p); logits peak at the true class
    bias = 0.1 * torch.randn(c, generator=g, dtype=torch.float64)
    clip_basis = _orthonormal(d, c + q + 1, g)
    g_c, g_n, z0 = clip_basis[:, :c], clip_basis[:, c:c + q], clip_basis[:, -1] * offset

    s = torch.Generator().manual_seed(seed)
    labels = torch.arange(c).repeat_interleave(n_per_class)
    n = labels.numel()
    nuis = torch.randn(n, q, generator=s, dtype=torch.float64)
    p_coords = mu[labels] + noise * torch.randn(n, c, generator=s, dtype=torch.float64)
    n_coords = (leak * 2.0 * leak_codes.T[labels] + nuis @ nuis_dirs.T
                + noise * torch.randn(n, k, generator=s, dtype=torch.float64))
    features = p_coords @ v_p.T + n_coords @ v_n.T
    clip = (g_c.T[labels] + nuisance * nuis @ g_n.T + z0
            + 0.1 * noise * torch.randn(n, d, generator=s, dtype=torch.float64))
    return SyntheticWorld(weight.float(), bias.float(), features, clip, labels, g_c.T.contiguous(), leak)
