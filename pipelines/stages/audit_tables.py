"""The audit's result tables of one shard, built from the per-row columns a model actor computed
(pipelines.stages.actors.ScoreActor). Pure Arrow: the model actors build and write them
(pipelines.stages.shard_writer), and tests build them alone.

    images          one row per scored image
    concept_angles  one row per scored image: the angles to every concept of the run's
                    vocabulary as two lists in vocabulary order (with --concepts)
    concept_vocab   the vocabulary itself, one row per concept (index, text), once per model
                    and run
    errors          one row per sample that was not scored
    concepts        (LONG_CONCEPTS_SCHEMA, the layout before 2026-12-03) one row per image and
                    concept; read, never written (queries' `concept_rows` macro unites both)

Why lists: measured by `sing bench-layout` (README, "Results layout"): at 1M images x 182
concepts the one-row-per-image lists take fewer bytes per image, cost less to build and write
on the workers, and answer the named queries faster than the long table.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

IMAGES_SCHEMA = pa.schema([
    ("key", pa.string()), ("shard", pa.string()), ("label", pa.int32()), ("class_name", pa.string()),
    ("pred", pa.int32()), ("pred_name", pa.string()), ("as_deg", pa.float32()), ("abs_as_deg", pa.float32()),
    ("is_deg", pa.float32()), ("pred_as_deg", pa.float32()), ("logit_drift", pa.float32()),
    ("null_norm_frac", pa.float32()), ("null_dim", pa.int32()),
])
CONCEPT_ANGLES_SCHEMA = pa.schema([
    ("key", pa.string()), ("shard", pa.string()), ("label", pa.int32()),
    ("angle_before_deg", pa.list_(pa.float32())), ("angle_after_deg", pa.list_(pa.float32())),
])
CONCEPT_VOCAB_SCHEMA = pa.schema([("concept_index", pa.int32()), ("concept", pa.string())])
LONG_CONCEPTS_SCHEMA = pa.schema([
    ("key", pa.string()), ("shard", pa.string()), ("label", pa.int32()), ("concept", pa.string()),
    ("angle_before_deg", pa.float32()), ("angle_after_deg", pa.float32()), ("as_deg", pa.float32()),
])
ERRORS_SCHEMA = pa.schema([("key", pa.string()), ("shard", pa.string()), ("stage", pa.string()),
                           ("reason", pa.string())])
SCORE_COLUMNS = ("as_deg", "is_deg", "pred_as_deg", "logit_drift", "null_norm_frac")


def f32_nullable(a) -> pa.Array:
    a = np.asarray(a, dtype=np.float32)
    return pa.array(a, mask=np.isnan(a), type=pa.float32())


def _const(value: str, n: int) -> pa.Array:
    """n copies of one string, built as a dictionary (no Python list of n strings)."""
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([value], pa.string())
                                          ).cast(pa.string())


def _strings(values: np.ndarray) -> pa.Array:
    return pa.array(values, pa.string()) if len(values) else pa.array([], pa.string())


def _stage(reason: str, default: str) -> str:
    head = str(reason).split(": ", 1)[0]
    return head if head in ("decode", "score") else default


def error_table(cols: dict, shard: str, model_err: np.ndarray | None = None, stage: str = "model") -> pa.Table:
    """The errors table of one shard: the rows the read stage could not read or decode, then
    the rows a model could not score (model_err: its per-row reason, "" for none; a reason
    starting "decode: " is a decode error of device mode, "score: " a degenerate score)."""
    status = cols["status"]
    bad_read = status == "error"
    bad_model = (status == "ok") & (model_err != "") if model_err is not None else np.zeros(len(status), bool)
    reasons = list(model_err[bad_model]) if model_err is not None else []
    n = int(bad_read.sum() + bad_model.sum())
    return pa.table({
        "key": pa.array(list(cols["key"][bad_read]) + list(cols["key"][bad_model]), pa.string()),
        "shard": _const(shard, n),
        "stage": pa.array(list(cols["stage"][bad_read]) + [_stage(r, stage) for r in reasons], pa.string()),
        "reason": pa.array(list(cols["reason"][bad_read]) + reasons, pa.string()),
    }, schema=ERRORS_SCHEMA)


def images_table(cols: dict, good: np.ndarray, shard: str, class_names, null_dim: int) -> pa.Table:
    """cols: the shard's rows with the model's columns unprefixed (as_deg, pred, ...)."""
    n = int(good.sum())
    labels = cols["label"][good].astype(np.int32)
    pred = cols["pred"][good].astype(np.int32)
    names = class_names if isinstance(class_names, pa.Array) else pa.array(list(class_names), pa.string())
    as_deg = cols["as_deg"][good]
    return pa.table({
        "key": _strings(cols["key"][good]),
        "shard": _const(shard, n),
        "label": pa.array(labels, pa.int32()),
        "class_name": names.take(pa.array(labels)),
        "pred": pa.array(pred, pa.int32()),
        "pred_name": names.take(pa.array(pred)),
        "as_deg": f32_nullable(as_deg),
        "abs_as_deg": f32_nullable(np.abs(as_deg)),
        "is_deg": f32_nullable(cols["is_deg"][good]),
        "pred_as_deg": f32_nullable(cols["pred_as_deg"][good]),
        "logit_drift": f32_nullable(cols["logit_drift"][good]),
        "null_norm_frac": f32_nullable(cols["null_norm_frac"][good]),
        "null_dim": pa.array(np.full(n, null_dim, np.int32), pa.int32()),
    }, schema=IMAGES_SCHEMA)


def _list_column(a: np.ndarray) -> pa.Array:
    """(n, k) float32 -> list<float32> of n rows of k values, NaN as NULL values."""
    n, k = a.shape
    flat = f32_nullable(a.reshape(-1))
    return pa.ListArray.from_arrays(pa.array(np.arange(0, n * k + 1, k, dtype=np.int32)), flat)


def concept_angles_table(cols: dict, good: np.ndarray, shard: str) -> pa.Table:
    n = int(good.sum())
    return pa.table({
        "key": _strings(cols["key"][good]),
        "shard": _const(shard, n),
        "label": pa.array(cols["label"][good].astype(np.int32), pa.int32()),
        "angle_before_deg": _list_column(np.asarray(cols["concept_before"][good], np.float32)),
        "angle_after_deg": _list_column(np.asarray(cols["concept_after"][good], np.float32)),
    }, schema=CONCEPT_ANGLES_SCHEMA)


def long_concepts_table(cols: dict, good: np.ndarray, shard: str, concepts: list[str]) -> pa.Table:
    """The long layout (one row per image and concept), as written before 2026-12-03: kept to
    measure the layouts against each other (`sing bench-layout`) and for old runs' tests."""
    n, k = int(good.sum()), len(concepts)
    before = np.asarray(cols["concept_before"][good], np.float32).reshape(-1)
    after = np.asarray(cols["concept_after"][good], np.float32).reshape(-1)
    return pa.table({
        "key": _strings(np.repeat(cols["key"][good], k)),
        "shard": _const(shard, n * k),
        "label": pa.array(np.repeat(cols["label"][good].astype(np.int32), k), pa.int32()),
        "concept": pa.DictionaryArray.from_arrays(pa.array(np.tile(np.arange(k, dtype=np.int32), n)),
                                                  pa.array(concepts, pa.string())).cast(pa.string()),
        "angle_before_deg": f32_nullable(before),
        "angle_after_deg": f32_nullable(after),
        "as_deg": f32_nullable(before - after),
    }, schema=LONG_CONCEPTS_SCHEMA)


def vocab_table(concepts: list[str]) -> pa.Table:
    return pa.table({"concept_index": pa.array(np.arange(len(concepts), dtype=np.int32)),
                     "concept": pa.array(list(concepts), pa.string())}, schema=CONCEPT_VOCAB_SCHEMA)


def audit_tables(cols: dict, prefix: str, shard: str, class_names, null_dim: int,
                 concepts: bool) -> list[tuple[str, pa.Table]]:
    """One model's tables of one shard, in writing order (the images table, which marks the
    shard done, last). cols: the shard's rows, the model's columns under `prefix/`."""
    status = cols["status"]
    model_err = cols.get(f"{prefix}/error")
    if model_err is None:
        model_err = np.full(len(status), "", dtype=object)
    good = (status == "ok") & (model_err == "")
    own = {**{k: cols[k] for k in ("key", "label")},
           **{k[len(prefix) + 1:]: v for k, v in cols.items() if k.startswith(prefix + "/")}}
    out = [("errors", error_table(cols, shard, model_err))]
    if concepts:
        out.append(("concept_angles", concept_angles_table(own, good, shard)))
    out.append(("images", images_table(own, good, shard, class_names, null_dim)))
    return out


def audit_files(cols: dict, shard: str, out: str, run_id: str, slug: str, prefix: str, class_names: tuple,
                null_dim: int, concepts: bool) -> list[tuple[str, str, pa.Table]]:
    """One model's files of one shard, (table, path, Arrow table) in writing order, the images
    file (the marker) last: what a model actor writes (stages.shard_writer.WriterSpec.build)."""
    from pipelines.io.layout import shard_file

    return [(name, shard_file(out, name, slug, run_id, shard), table)
            for name, table in audit_tables(cols, prefix, shard, class_names, null_dim, concepts)]
