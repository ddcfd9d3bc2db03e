"""CLIP text embeddings for class prompts and concept vocabularies, cached as Parquet."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from .layout import write_table_atomic
from .remote import local_copy


# Concepts are short phrases ("striped", "snow", "wooden"): one neutral template.
CONCEPT_TEMPLATES = ["a photo of {}."]


class VocabularyError(ValueError):
    pass


def read_lines(path) -> list[str]:
    """One entry per line; blank lines and lines starting with '#' are ignored; duplicates refused.
    `path` may be an fsspec URL (downloaded to the cache first)."""
    try:
        local = Path(local_copy(path))
    except FileNotFoundError:
        local = None
    if local is None or not local.is_file():
        raise VocabularyError(f"vocabulary file not found: {path}")
    p = path  # messages name the file as given, not the cache copy
    items = [ln.strip() for ln in local.read_text(encoding="utf-8").splitlines()]
    items = [ln for ln in items if ln and not ln.startswith("#")]
    if not items:
        raise VocabularyError(f"vocabulary file {p} has no entries")
    dup = sorted({x for x in items if items.count(x) > 1})
    if dup:
        raise VocabularyError(f"vocabulary file {p} repeats entries: {dup[:5]}")
    return items


def embed_texts(clip, names: list[str], templates: list[str]) -> np.ndarray:
    from .clip_models import embed_prompts

    with torch.inference_mode():
        return embed_prompts(clip, names, templates).float().cpu().numpy()


def save_embeddings(path, names: list[str], emb: np.ndarray, clip_model: str, templates: list[str]) -> Path:
    path = Path(path)
    table = pa.table({"text": pa.array(names, pa.string()),
                      "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1), pa.float32()),
                                                                   emb.shape[1])})
    table = table.replace_schema_metadata({"clip_model": clip_model, "templates": "\n".join(templates)})
    write_table_atomic(table, path)
    return path


def load_embeddings(path, clip_model: str | None = None) -> tuple[list[str], np.ndarray, dict]:
    t = pq.read_table(local_copy(path))  # a URL is downloaded to the cache first
    meta = {k.decode(): v.decode() for k, v in (t.schema.metadata or {}).items()}
    if clip_model is not None and meta.get("clip_model") != clip_model:
        raise VocabularyError(f"text embeddings {path} were made with CLIP {meta.get('clip_model')!r}, "
                              f"but the translator targets {clip_model!r}")
    emb = np.asarray(t.column("embedding").combine_chunks().flatten(), dtype=np.float32).reshape(t.num_rows, -1)
    return t.column("text").to_pylist(), emb, meta
