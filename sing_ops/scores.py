"""Angles, Attribute Score and Image Score in degrees."""
from __future__ import annotations

import torch


class ScoreError(ValueError):
    pass


def _unit(x: torch.Tensor, what: str, check: bool = True) -> torch.Tensor:
    """Rows scaled to unit length. check=False skips the two value checks, each a device sync;
    a NaN/Inf or zero row then gives NaN angles instead of an error."""
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    if not check:
        return x / norm
    if not torch.isfinite(x).all():
        raise ScoreError(f"{what} contains NaN/Inf")
    if (norm == 0).any():
        n = int((norm == 0).sum())
        raise ScoreError(f"{what} has {n} zero vector(s): the angle is undefined")
    return x / norm


def angle_deg(a: torch.Tensor, b: torch.Tensor, check: bool = True) -> torch.Tensor:
    """Angle between rows of a and b (broadcast over leading dims), in degrees.

    Uses atan2(|a x b|, a.b) on unit vectors, which stays accurate near 0 and 180 degrees
    where arccos of a clamped cosine loses half the digits. check=False: no NaN/zero checks
    (no device syncs); such rows give NaN.
    """
    ua, ub = torch.broadcast_tensors(_unit(a, "first argument", check), _unit(b, "second argument", check))
    dot = (ua * ub).sum(-1)
    cross = torch.linalg.vector_norm(ua - ub * dot.unsqueeze(-1), dim=-1)  # |ua| sin(theta)
    return torch.rad2deg(torch.atan2(cross, dot))


def _text_rows(text: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    text = torch.as_tensor(text, device=z.device, dtype=z.dtype)
    if text.shape[-1] != z.shape[-1]:
        raise ScoreError(f"text embedding has {text.shape[-1]} dims, image embeddings have {z.shape[-1]}")
    if text.dim() == 1:
        return text.expand_as(z)
    if text.shape != z.shape:
        raise ScoreError(f"text must be one vector (d,) or one per row {tuple(z.shape)}, got {tuple(text.shape)}")
    return text


def attribute_score(z: torch.Tensor, z_eq: torch.Tensor, text: torch.Tensor, check: bool = True) -> torch.Tensor:
    """AS = angle(T(f), t) - angle(T(f~), t). Positive: the equivalent is closer to t.
    (check: as in angle_deg)"""
    t = _text_rows(text, z)
    return angle_deg(z, t, check) - angle_deg(z_eq, t, check)


def image_score(z: torch.Tensor, z_eq: torch.Tensor, check: bool = True) -> torch.Tensor:
    """IS = angle(T(f), T(f~)). (check: as in angle_deg)"""
    return angle_deg(z, z_eq, check)


def concept_angles(z: torch.Tensor, concepts: torch.Tensor, check: bool = True) -> torch.Tensor:
    """(B, d) x (K, d) -> (B, K) angles in degrees, one matmul (check: as in angle_deg)."""
    cos = _unit(z, "image embeddings", check) @ _unit(concepts, "concept embeddings", check).T
    return torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0)))
