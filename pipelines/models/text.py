"""CLIP text embeddings for class prompts and concept vocabularies, cached as Parquet.

A text-embedding Parquet records the CLIP that made it (`clip_model`, its MODEL string, and
`clip_identity`, pipelines.models.clip_source.identity: activation, config hash, weights'
source and sha256); a file is refused (exit 2) where it is used with a CLIP of another
identity, and where it predates identities and names a tag that sing then built wrong."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.io.layout import write_table_atomic
from pipelines.io.remote import local_copy


# Concepts are short phrases ("striped", "snow", "wooden"): one neutral template.
CONCEPT_TEMPLATES = ["a photo of {}."]


class VocabularyError(ValueError):
    pass


# the project's concept vocabulary, shipped as package data (pyproject: pipelines/vocab/*.txt)
DEFAULT_VOCABULARY = Path(__file__).resolve().parents[1] / "vocab" / "concepts.txt"


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
    """(N, d) float32 prompt embeddings of `names` with `clip`, through the node's derived
    cache (pipelines.models.derived_cache): the same CLIP, names and templates are embedded
    once (fit-translator's zero-shot check leaves the audit's class prompts embedded)."""
    from pipelines.models.derived_cache import text_embeddings

    return text_embeddings(clip.identity, names, templates, lambda: clip)


def save_embeddings(path, names: list[str], emb: np.ndarray, clip_identity: dict, templates: list[str],
                    extra: dict | None = None):
    """`clip_identity`: of the CLIP that made the embeddings (clip_source.identity). `extra`
    (e.g. the provenance of imported embeddings) is kept as JSON under 'provenance'. `path`: a
    local path or a URL (returned as given)."""
    table = pa.table({"text": pa.array(names, pa.string()),
                      "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1), pa.float32()),
                                                                   emb.shape[1])})
    meta = {"clip_model": clip_identity["model"], "clip_identity": json.dumps(clip_identity, sort_keys=True),
            "templates": "\n".join(templates)}
    if extra:
        meta["provenance"] = json.dumps(extra, sort_keys=True)
    table = table.replace_schema_metadata(meta)
    write_table_atomic(table, path)
    return path


def file_clip_identity(path, meta: dict) -> dict | None:
    """The CLIP identity an embeddings file records (legacy files: clip_source.recorded_identity)."""
    from pipelines.models.clip_source import recorded_identity
    from pipelines.models.zoo import OFFICIAL_PROVENANCE

    try:
        official = json.loads(meta.get("provenance") or "{}").get("note") == OFFICIAL_PROVENANCE
    except ValueError:
        official = False
    return recorded_identity(meta, f"text-embedding file {path}", "re-embed it (`sing embed-text`)", official)


def load_embeddings(path, clip_model: str | dict | None = None) -> tuple[list[str], np.ndarray, dict]:
    """(names, (N, d) float32, metadata). `clip_model`: the CLIP they will be used with, as an
    identity (clip_source.identity; a translator's) or a MODEL string: another CLIP is refused."""
    local = local_copy(path)  # a URL is downloaded to the cache first
    if not Path(local).is_file():
        raise FileNotFoundError(f"text embeddings file not found: {path}")
    try:
        t = pq.read_table(local)
    except (pa.ArrowInvalid, OSError) as exc:
        raise VocabularyError(f"{path} is not a text-embedding Parquet: {exc}") from None
    if not {"text", "embedding"} <= set(t.column_names):
        raise VocabularyError(f"{path} is not a text-embedding Parquet (columns text, embedding; has "
                              f"{t.column_names}); make one with `sing embed-text` or `sing import embeddings`")
    meta = {k.decode(): v.decode() for k, v in (t.schema.metadata or {}).items()}
    recorded = file_clip_identity(path, meta)
    if clip_model is not None:
        from pipelines.models.clip_source import as_identity, check_same_clip

        check_same_clip(recorded, as_identity(clip_model), f"text-embedding file {path}",
                        "re-embed it with that CLIP (`sing embed-text`)")
    # a copy: Arrow's zero-copy view is read-only, and torch warns on such arrays
    emb = np.array(t.column("embedding").combine_chunks().flatten(), dtype=np.float32).reshape(t.num_rows, -1)
    return t.column("text").to_pylist(), emb, meta


def is_embeddings_file(path) -> bool:
    """A text-embedding Parquet (by name); anything else given as --concepts is a vocabulary text file."""
    return str(path).lower().endswith(".parquet")


def embeddings_info(path, names: list[str], meta: dict) -> dict:
    """What a run records about a text-embedding file it used (manifest)."""
    from pipelines.io.manifest import file_sha256

    info = {"path": str(path), "sha256": file_sha256(local_copy(path)), "rows": len(names),
            "clip_model": meta.get("clip_model"), "clip_identity": file_clip_identity(path, meta),
            "templates": meta.get("templates")}
    if meta.get("provenance"):
        info["provenance"] = json.loads(meta["provenance"])
    return info


def load_class_text(path, clip_model: str | dict | None, class_names: list[str], out_dim: int | None = None,
                    ) -> tuple[np.ndarray, dict]:
    """Class prompt embeddings for a head of len(class_names) classes, matched BY INDEX: row i
    is class i (embedding files from other sources spell names differently, e.g. the official
    release's ImageNet names). The names of both sides are recorded where they differ."""
    names, emb, meta = load_embeddings(path, clip_model=clip_model)
    c = len(class_names)
    if len(names) != c:
        raise VocabularyError(f"--class-text {path} has {len(names)} rows but the classifier has {c} classes; "
                              "class text is matched to classes by index, one row per class in class order")
    if out_dim is not None and emb.shape[1] != out_dim:
        raise VocabularyError(f"--class-text {path} embeddings are {emb.shape[1]}-d but the translator outputs "
                              f"{out_dim}-d")
    diff = [[i, a, b] for i, (a, b) in enumerate(zip(class_names, names)) if a != b]
    info = {**embeddings_info(path, names, meta), "matched_by": "index", "names_differ": len(diff),
            "name_differences": diff}  # [index, classifier's name, the file's name]
    return emb, info


def load_concept_embeddings(path, clip_model: str | dict | None, out_dim: int | None = None,
                            ) -> tuple[list[str], np.ndarray, dict]:
    """Concept names and embeddings from a text-embedding Parquet (names must be unique: they
    key the concepts table)."""
    names, emb, meta = load_embeddings(path, clip_model=clip_model)
    if not names:
        raise VocabularyError(f"concept embeddings {path} have no rows")
    dup = sorted({x for x in names if names.count(x) > 1})
    if dup:
        raise VocabularyError(f"concept embeddings {path} repeat names: {dup[:5]}")
    if out_dim is not None and emb.shape[1] != out_dim:
        raise VocabularyError(f"concept embeddings {path} are {emb.shape[1]}-d but the translator outputs "
                              f"{out_dim}-d")
    return names, emb, embeddings_info(path, names, meta)


def concept_names(path) -> list[str]:
    """The concept list of --concepts: a vocabulary text file or a text-embedding Parquet."""
    if is_embeddings_file(path):
        names, _, _ = load_embeddings(path)
        dup = sorted({x for x in names if names.count(x) > 1})
        if dup:
            raise VocabularyError(f"concept embeddings {path} repeat names: {dup[:5]}")
        return names
    return read_lines(path)
