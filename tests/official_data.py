"""Files in the official SING release's formats, generated here (nothing is copied from it):
a linear translator directory (best.pt state dict + metadata.yaml) and a text-embedding npz
(object arrays of names and prompt names, float16 embeddings (N, 6, d))."""
from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import torch
import yaml

PROMPTS = ["prompt1", "prompt2", "prompt3", "prompt4", "prompt5", "mean"]


def official_translator(root: Path, name: str, in_dim: int, out_dim: int = 768, seed: int = 0,
                        wrap: str | None = None, prefix: str = "", architecture: str = "linear",
                        meta_dir: Path | None = None, scale: float = 1.0, bias_scale: float = 0.1,
                        **meta_over) -> tuple[Path, torch.Tensor, torch.Tensor]:
    """root/<name>/<architecture>/{best.pt, metadata.yaml}; returns (best.pt, weight, bias)."""
    d = root / name / architecture
    d.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    w = scale * torch.randn(out_dim, in_dim, generator=g) / in_dim ** 0.5
    b = bias_scale * torch.randn(out_dim, generator=g)
    sd = collections.OrderedDict([(f"{prefix}weight", w), (f"{prefix}bias", b)])
    torch.save({wrap: sd, "epoch": 7} if wrap else sd, d / "best.pt")
    meta = {"model_name": name, "translator_name": architecture, "architecture": architecture,
            "embedding_backend": "kakao_karlo_v1_alpha_image_variations", "in_dim": in_dim, "out_dim": out_dim,
            "checkpoint_file": "best.pt", **meta_over}
    (meta_dir or d).mkdir(parents=True, exist_ok=True)
    (meta_dir or d).joinpath("metadata.yaml").write_text(yaml.safe_dump(meta))
    return d / "best.pt", w, b


def official_npz(path: Path, names: list[str], dim: int = 768, seed: int = 0) -> np.ndarray:
    """Five L2-normalised prompt rows per name and their plain (not renormalised) mean, float16,
    saved the way the official converter does (object arrays). Returns the (N, 6, dim) float16."""
    rng = np.random.default_rng(seed)
    rows = rng.normal(size=(len(names), 5, dim))
    rows /= np.linalg.norm(rows, axis=-1, keepdims=True)
    emb = np.concatenate([rows, rows.mean(1, keepdims=True)], 1).astype(np.float16)
    np.savez_compressed(path, classes=np.array(names, dtype=object), prompts=np.array(PROMPTS, dtype=object),
                        embeddings=emb)
    return emb
