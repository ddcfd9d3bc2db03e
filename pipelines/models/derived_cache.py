"""What is derived from model weights and costs seconds to derive, cached per node: head
decompositions (a float64 SVD: up to 16 s for a large head on a busy machine) and CLIP text
embeddings (loading CLIP and running its text tower over 1000 prompts, or 8000 with the
template ensemble).

Entries live beside the download cache ($SING_CACHE, pipelines.io.remote), one folder each,
so `sing cache ls|prune` list and prune them too. Each is keyed by a hash of everything its
value depends on, its inputs' bytes included where they are at hand (a head's weights; a
CLIP's full identity: config with its activation, the weights' sha256 and hub revision),
plus the torch and open_clip versions; a file that does not read back
with the expected shapes is recomputed. Values are safetensors (no pickle). Set
SING_DERIVED_CACHE=0 to compute everything afresh (cold-start measurements do).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

log = logging.getLogger("sing.cache")
DATA = "data.safetensors"


def enabled() -> bool:
    return os.environ.get("SING_DERIVED_CACHE", "1") not in ("0", "false", "off")


def _versions() -> dict:
    out = {}
    for pkg in ("torch", "open_clip_torch"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def entry_key(kind: str, parts) -> str:
    blob = json.dumps([kind, parts, _versions()], sort_keys=True, default=str).encode()
    return f"{kind}-{hashlib.sha256(blob).hexdigest()[:24]}"


def _dir(key: str) -> Path:
    from pipelines.io.remote import default_cache_dir

    return Path(default_cache_dir()) / key


def load(key: str, shapes: dict[str, tuple] | None = None) -> dict[str, np.ndarray] | None:
    """The arrays of an entry, or None (absent, disabled, unreadable or not the expected shapes)."""
    path = _dir(key) / DATA
    if not enabled() or not path.is_file():
        return None
    try:
        from safetensors.numpy import load_file

        arrays = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - a damaged entry is recomputed, never trusted
        log.warning("derived cache %s unreadable (%s); recomputing", key, exc)
        return None
    if shapes and any(k not in arrays or (s is not None and arrays[k].shape != tuple(s)) for k, s in shapes.items()):
        log.warning("derived cache %s has unexpected shapes; recomputing", key)
        return None
    try:
        os.utime(path.parent)  # last use, for `sing cache prune`
    except OSError:
        pass
    return arrays


def store(key: str, arrays: dict[str, np.ndarray]) -> None:
    """Write an entry atomically (temp name + rename: concurrent writers leave one whole file).
    A cache that cannot be written is only a slower next run."""
    if not enabled():
        return
    d = _dir(key)
    tmp = d / f".{DATA}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        from safetensors.numpy import save_file

        d.mkdir(parents=True, exist_ok=True)
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp))
        os.replace(tmp, d / DATA)
    except OSError as exc:
        log.warning("derived cache %s not written (%s)", key, exc)
    finally:
        tmp.unlink(missing_ok=True)


def head_decomposition(weight, atol=1e-5, rtol=None):
    """HeadDecomposition.from_weight(weight, atol, rtol), cached under a hash of the weight's
    bytes: the same head never pays its SVD twice on a node."""
    import torch

    from sing_ops import HeadDecomposition

    w = torch.as_tensor(weight).detach().to("cpu").contiguous()
    digest = hashlib.sha256(w.numpy().tobytes()).hexdigest()
    key = entry_key("svd", [digest, list(w.shape), str(w.dtype), atol, rtol])
    m = int(w.reshape(w.shape[0], -1).shape[1])
    hit = load(key, {"singular_values": None, "principal_basis": None, "null_basis": None, "threshold": (1,)})
    if hit is not None and hit["principal_basis"].shape[0] == m == hit["null_basis"].shape[0]:
        t = {k: torch.from_numpy(hit[k].copy()) for k in ("singular_values", "principal_basis", "null_basis")}
        return HeadDecomposition(**t, atol=atol, rtol=rtol, threshold=float(hit["threshold"][0]))
    dec = HeadDecomposition.from_weight(w, atol=atol, rtol=rtol)
    store(key, {"singular_values": dec.singular_values.numpy(), "principal_basis": dec.principal_basis.numpy(),
                "null_basis": dec.null_basis.numpy(), "threshold": np.array([dec.threshold], dtype=np.float64)})
    return dec


def clip_identity(ident: dict) -> list:
    """What a CLIP's text embeddings depend on, as a key (pipelines.models.clip_source.identity):
    the architecture config with its activation, and the weights: their sha256 and hub
    revision (a tag's hub file; a checkpoint file) or the seed of random ones. Never the
    MODEL string alone: openclip:ViT-L-14@openai once built GELU, and a hub repo can move."""
    if ident.get("weights") != "random" and not ident.get("weights_sha256"):
        raise ValueError(f"CLIP identity of {ident.get('model')} without its weights' sha256: resolve the weights "
                         "first (clip_source.identity with resolve_weights)")
    return [ident["id"], ident["config_sha256"], ident["activation"], ident.get("weights_sha256"),
            ident.get("hub_revision"), ident.get("seed")]


def text_embeddings(ident: dict, names: list[str], templates: list[str], get_clip):
    """(N, d) float32 prompt embeddings of `names` by get_clip(), whose identity is `ident`,
    cached: on a hit CLIP is not even loaded."""
    key = entry_key("text", [clip_identity(ident), list(templates), list(names)])
    hit = load(key, {"embeddings": None})
    if hit is not None and hit["embeddings"].shape[0] == len(names):
        return hit["embeddings"]
    import torch

    from pipelines.models.clip import embed_prompts

    with torch.inference_mode():
        emb = embed_prompts(get_clip(), names, templates).float().cpu().numpy()
    store(key, {"embeddings": emb})
    return emb
