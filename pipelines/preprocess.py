"""The eval transform of a classifier, as data. No torch here: the read tasks import this
(and images.py, shards.py) and stay light processes (importing torch costs ~275 MB of private
memory per process; a GPU node runs a read task per core)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PreprocessSpec:
    """Eval transform: shorter side -> resize (interpolation), centre crop size x size, then
    (x/255 - mean)/std. Images with equal view_key share one decode + resize + crop."""

    size: int
    resize: int
    interpolation: str  # "bilinear" | "bicubic"
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __post_init__(self):
        if self.interpolation not in ("bilinear", "bicubic", "nearest", "lanczos"):
            raise ValueError(f"unsupported interpolation {self.interpolation!r}")
        if self.size < 1 or self.resize < self.size:
            raise ValueError(f"need 1 <= size <= resize, got size={self.size} resize={self.resize}")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    @property
    def view_key(self) -> str:
        return f"{self.size}c-{self.resize}r-{self.interpolation}"

    def as_dict(self) -> dict:
        return {"size": self.size, "resize": self.resize, "interpolation": self.interpolation,
                "mean": list(self.mean), "std": list(self.std)}
