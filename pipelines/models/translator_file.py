"""Translator files: safetensors with the metadata as JSON in the header (sing_ops stays I/O-free).

save_translator   atomic write (temp name, rename) plus a readable `<path>.json` sidecar; to a
                  local path or an fsspec URL (written locally, then uploaded).
load_translator   refuses anything that is not a sing translator, and any mismatch with what
                  the caller will use it with (dims, source model, CLIP identity: activation,
                  config, weights; pipelines.models.clip_source). A translator from before
                  CLIP identities were recorded whose tag sing then built wrong (every
                  `openai` tag: GELU instead of QuickGELU) is refused: refit it.
Safetensors holds tensors only, so loading never executes code.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from sing_ops.translator import FORMAT, Translator, TranslatorMismatch

from pipelines.io.remote import is_url, local_path, upload, upload_written, url_fs


def save_translator(tr: Translator, path) -> Path | str:
    """Write `tr` to a local path (returned as a Path) or a URL (returned as given)."""
    from safetensors.torch import save_file

    if is_url(path):
        url_fs(path)  # a missing fsspec backend is a clear error before anything is written

        def write(tmp: str) -> None:
            save_translator(tr, tmp)
            # sidecar first: whoever sees the translator (remote.local_copy) finds its sidecar too
            upload(f"{tmp}.json", f"{path}.json")

        upload_written(path, write)
        return path
    path = Path(local_path(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {**tr.metadata, "format": FORMAT, "in_dim": tr.in_dim, "out_dim": tr.out_dim, "id": tr.id}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({"weight": tr.weight.detach().cpu().contiguous(), "bias": tr.bias.detach().cpu().contiguous()},
              str(tmp), metadata={"sing": json.dumps(meta, sort_keys=True)})
    os.replace(tmp, path)
    Path(f"{path}.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return path


def load_translator(path, *, in_dim: int | None = None, out_dim: int | None = None,
                    source_model: str | None = None, clip_model: str | dict | None = None) -> Translator:
    """`clip_model`: the CLIP it will be used with, an identity (clip_source.identity) or a
    MODEL string. The loaded translator's metadata['clip_identity'] is what it records (a file
    from before identities: derived from its MODEL string, marked derived_from_name)."""
    from pipelines.models.clip_source import ClipIdentityMismatch, as_identity, check_same_clip, recorded_identity

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
    t = Translator(tensors["weight"], tensors["bias"], meta)
    if (meta.get("in_dim"), meta.get("out_dim")) != (t.in_dim, t.out_dim):
        raise TranslatorMismatch(f"{path}: metadata dims {meta.get('in_dim')}->{meta.get('out_dim')} "
                                 f"disagree with tensors {t.in_dim}->{t.out_dim}")
    checks = [("input dim", in_dim, t.in_dim), ("output dim", out_dim, t.out_dim),
              ("source model", source_model, meta.get("source_model"))]
    for what, expected, actual in checks:
        if expected is not None and expected != actual:
            raise TranslatorMismatch(f"translator {path} was fitted for {what} {actual!r}, but is used with {expected!r}")
    what, remedy = f"translator {path}", "refit it (`sing fit-translator`) with the CLIP it is used with"
    try:
        ident = recorded_identity(meta, what, remedy, official=meta.get("fitted_by") == "official")
        if clip_model is not None:
            check_same_clip(ident, as_identity(clip_model), what, remedy)
    except ClipIdentityMismatch as exc:  # the translator errors' type, exit 2 all the same
        raise TranslatorMismatch(str(exc)) from None
    if ident is not None:
        t.metadata["clip_identity"] = ident
    return t


def load_translator_for(path, spec: str, clf, match: str = "exact") -> Translator:
    """Load a translator (local path or fsspec URL) and check it fits `clf`: "exact", fitted
    on this very model id; "arch", on any checkpoint of the same architecture and feature dim.
    Runs on the driver and in every actor: a URL is fetched into the cache of its node."""
    from pipelines.io.remote import local_copy
    from pipelines.models.spec import parse_model_spec

    if match not in ("exact", "arch"):
        raise ValueError(f"unknown translator match {match!r}; choose exact or arch")
    local = local_copy(path)
    if match == "exact":
        return load_translator(local, in_dim=clf.num_features, source_model=clf.model_id)
    tr = load_translator(local, in_dim=clf.num_features)
    fitted_on = tr.metadata.get("source_model") or ""
    try:
        fitted_arch = parse_model_spec(fitted_on).arch_ref
    except ValueError:
        fitted_arch = fitted_on
    arch = parse_model_spec(spec).arch_ref
    if fitted_arch != arch:
        raise TranslatorMismatch(f"translator {path} was fitted on {fitted_on!r} (architecture {fitted_arch}), "
                                 f"but is used with {clf.model_id!r} (architecture {arch})")
    return tr
