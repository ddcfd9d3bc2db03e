"""Null-space steering and the logit-invariance checks."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .head import HeadDecomposition
from .scores import ScoreError, _text_rows, _unit, angle_deg
from .translator import Translator


class SteerError(ValueError):
    pass


@dataclass
class SteerResult:
    f_steered: torch.Tensor  # (B, m)
    eps: torch.Tensor  # (B,) step length along the unit null direction (NaN when unreachable)
    is_deg: torch.Tensor  # (B,) IS reached: angle(T(f), T(f_eps))
    as_deg: torch.Tensor  # (B,) angle(T(f), t) - angle(T(f_eps), t): positive = moved toward t
    reachable: torch.Tensor  # (B,) bool
    max_is_deg: torch.Tensor  # (B,) supremum of IS along this direction (approached as eps -> inf)
    direction: torch.Tensor  # (B, m) unit null direction d / |d| (zero rows where undefined)


def cosine_gradient(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """d cos(z, t) / dz = t^/|z| - cos(z, t) z/|z|^2, row-wise."""
    zn = torch.linalg.vector_norm(z, dim=-1, keepdim=True)
    t_hat = _unit(t, "text embedding")
    cos = (z * t_hat).sum(-1, keepdim=True) / zn
    return t_hat / zn - cos * z / zn**2


def null_direction(f, decomposition: HeadDecomposition, translator: Translator, text) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit direction P_n A^T grad_z cos(T(f), t) and its pre-normalisation norm."""
    z = translator(f)
    g = cosine_gradient(z, _text_rows(text, z)) @ translator.weight.to(f.device, f.dtype)  # A^T g_z, row-wise
    d = decomposition.null_part(g)
    dn = torch.linalg.vector_norm(d, dim=-1)
    # |d| at rounding level means the gradient has no null component (or null_dim == 0).
    tiny = dn <= 1e3 * torch.finfo(f.dtype).eps * torch.linalg.vector_norm(g, dim=-1).clamp_min(1e-300)
    unit = torch.where(tiny[:, None], torch.zeros_like(d), d / dn.clamp_min(1e-300)[:, None])
    return unit, torch.where(tiny, torch.zeros_like(dn), dn)


def steer(f: torch.Tensor, decomposition: HeadDecomposition, translator: Translator, text,
          eps=None, is_deg=None) -> SteerResult:
    """Move each feature along its null direction: by a fixed `eps`, or by the exact step
    giving Image Score `is_deg` (closed form, see below). Logits do not move."""
    if (eps is None) == (is_deg is None):
        raise SteerError("give exactly one of eps (fixed step) or is_deg (target Image Score)")
    if f.dim() != 2:
        raise SteerError(f"features must be a batch (B, m), got {tuple(f.shape)}")
    if not decomposition.has_null_space:
        raise SteerError("the head has no null space (null_dim = 0): steering is undefined")
    unit, _ = null_direction(f, decomposition, translator, text)
    z = translator(f)
    t = _text_rows(text, z)
    # T(f + e d) = z + e u with u = A d: IS(e) = atan2(e*beta, |z| + e*alpha) where
    # alpha, beta are u's components along and across z. It rises monotonically from 0
    # to phi_inf = angle(z, u), so a target theta < phi_inf has the unique step
    #   e = |z| sin(theta) / (beta cos(theta) - alpha sin(theta)).
    u = unit @ translator.weight.to(f.device, f.dtype).T
    zn = torch.linalg.vector_norm(z, dim=-1)
    alpha = (u * z).sum(-1) / zn
    beta = torch.linalg.vector_norm(u - alpha[:, None] * z / zn[:, None], dim=-1)
    has_dir = torch.linalg.vector_norm(unit, dim=-1) > 0
    max_is = torch.where(has_dir & (beta > 0), torch.rad2deg(torch.atan2(beta, alpha)), torch.zeros_like(zn))
    if is_deg is not None:
        theta = torch.as_tensor(is_deg, dtype=f.dtype, device=f.device).expand_as(zn)
        if not (0 < theta).all() or not (theta < 180).all():
            raise SteerError(f"target IS must be in (0, 180) degrees, got {is_deg}")
        rad = torch.deg2rad(theta)
        denom = beta * torch.cos(rad) - alpha * torch.sin(rad)
        reachable = has_dir & (theta < max_is) & (denom > 0)
        step = torch.where(reachable, zn * torch.sin(rad) / denom.where(reachable, torch.ones_like(denom)),
                           torch.full_like(zn, math.nan))
    else:
        step = torch.as_tensor(eps, dtype=f.dtype, device=f.device).expand_as(zn).clone()
        reachable = has_dir & torch.isfinite(step)
        step = torch.where(reachable, step, torch.full_like(step, math.nan))
    f_steered = f + torch.nan_to_num(step)[:, None] * unit
    z_s = translator(f_steered)
    nan = torch.full_like(zn, math.nan)
    is_reached = torch.where(reachable, angle_deg(z, z_s), nan)
    as_reached = torch.where(reachable, angle_deg(z, t) - angle_deg(z_s, t), nan)
    return SteerResult(f_steered, step, is_reached, as_reached, reachable, max_is, unit)


def logit_drift(weight, f: torch.Tensor, f_eq: torch.Tensor) -> torch.Tensor:
    """max_c |(W f_eq)_c - (W f)_c| per row (the bias cancels)."""
    w = torch.as_tensor(weight).to(f.device, f.dtype)
    if w.dim() == 4:
        w = w.flatten(1)
    if w.shape[1] != f.shape[-1] or f.shape != f_eq.shape:
        raise ScoreError(f"shape mismatch: W {tuple(w.shape)}, f {tuple(f.shape)}, f_eq {tuple(f_eq.shape)}")
    return (f_eq @ w.T - f @ w.T).abs().amax(-1)


def matched_perturbations(f: torch.Tensor, decomposition: HeadDecomposition, generator: torch.Generator | None = None):
    """Random and principal-subspace perturbations with the norm of each row's null part.

    Returns (f_null_removed, f_random, f_principal): the paper's validation compares the
    logit change of null removal with perturbations of the same size.
    """
    null = decomposition.null_part(f)
    size = torch.linalg.vector_norm(null, dim=-1, keepdim=True)
    rnd = torch.randn(f.shape, generator=generator, dtype=f.dtype).to(f.device)
    rnd = rnd / torch.linalg.vector_norm(rnd, dim=-1, keepdim=True)
    vp = decomposition.principal_basis.to(f.device, f.dtype)
    coef = torch.randn((f.shape[0], vp.shape[1]), generator=generator, dtype=f.dtype).to(f.device)
    prin = coef @ vp.T
    prin = prin / torch.linalg.vector_norm(prin, dim=-1, keepdim=True)
    return f - null, f + size * rnd, f + size * prin
