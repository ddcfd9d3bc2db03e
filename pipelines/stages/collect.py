"""Driver side of the audit stream: each shard's Parquet files, written the moment the
spine (pipelines.jobs.spine.drain) has all of the shard's rows.

Writing per shard, atomically, is what makes a killed run resumable without losing or
duplicating a row: a shard is either fully on disk or not at all.
"""
from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from pipelines.io.layout import shard_file, write_table_atomic

log = logging.getLogger("sing.collect")

IMAGES_SCHEMA = pa.schema([
    ("key", pa.string()), ("shard", pa.string()), ("label", pa.int32()), ("class_name", pa.string()),
    ("pred", pa.int32()), ("pred_name", pa.string()), ("as_deg", pa.float32()), ("abs_as_deg", pa.float32()),
    ("is_deg", pa.float32()), ("pred_as_deg", pa.float32()), ("logit_drift", pa.float32()),
    ("null_norm_frac", pa.float32()), ("null_dim", pa.int32()),
])
CONCEPTS_SCHEMA = pa.schema([
    ("key", pa.string()), ("shard", pa.string()), ("label", pa.int32()), ("concept", pa.string()),
    ("angle_before_deg", pa.float32()), ("angle_after_deg", pa.float32()), ("as_deg", pa.float32()),
])
ERRORS_SCHEMA = pa.schema([("key", pa.string()), ("shard", pa.string()), ("stage", pa.string()),
                           ("reason", pa.string())])


@dataclass
class ModelTarget:
    """What the collector needs to know about one audited model."""
    prefix: str
    slug: str
    class_names: list[str]
    null_dim: int
    concepts: list[str] = field(default_factory=list)
    skip_shards: set = field(default_factory=set)  # already done for this model


def _f32_nullable(a: np.ndarray) -> pa.Array:
    a = np.asarray(a, dtype=np.float32)
    return pa.array(a, mask=np.isnan(a), type=pa.float32())


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
    return pa.table({
        "key": pa.array(list(cols["key"][bad_read]) + list(cols["key"][bad_model]), pa.string()),
        "shard": pa.array([shard] * int(bad_read.sum() + bad_model.sum()), pa.string()),
        "stage": pa.array(list(cols["stage"][bad_read]) + [_stage(r, stage) for r in reasons], pa.string()),
        "reason": pa.array(list(cols["reason"][bad_read]) + reasons, pa.string()),
    }, schema=ERRORS_SCHEMA)


class ShardCollector:
    """The audit's writer: `timings(batch)` for every batch, `write(shard, cols, t_read)` once
    per complete shard (one images/concepts/errors file each per model)."""

    def __init__(self, out: str, run_id: str, targets: list[ModelTarget], total: int = 0):
        self.out, self.run_id, self.targets, self.total = out, run_id, targets, total
        self.stage_seconds = defaultdict(float)
        self.counts = defaultdict(int)
        self.done_shards: list[str] = []
        self.rows_written = 0  # samples (images + failed) of the shards written this session
        # arrival times of the first and last batch: rows after the first over that span is
        # the rate once every stage is running (start-up excluded), see stream_rate()
        self._first = self._last = None
        self._rows_seen = self._rows_first = 0
        self._t0 = time.perf_counter()

    def timings(self, batch: dict) -> None:
        now, n = time.perf_counter(), int((batch["status"] != "end").sum())  # end rows are markers
        if self._first is None:
            self._first, self._rows_first = now, n
        self._last, self._rows_seen = now, self._rows_seen + n
        for t in self.targets:
            self.stage_seconds["forward"] += float(batch[f"{t.prefix}/t_forward"].sum())
            self.stage_seconds["sing_ops"] += float(batch[f"{t.prefix}/t_ops"].sum())
            if f"{t.prefix}/t_decode" in batch:  # device-decode mode: decoding inside the actor
                self.stage_seconds["device_decode"] += float(batch[f"{t.prefix}/t_decode"].sum())

    def stream_rate(self) -> float | None:
        """Samples per second from the first batch's arrival to the last's (None before two
        batches): the pipeline's rate without Ray, actor and model start-up."""
        if self._first is None or self._last <= self._first:
            return None
        return (self._rows_seen - self._rows_first) / (self._last - self._first)

    def write(self, shard: str, cols: dict, t_read: float) -> None:
        t0 = time.perf_counter()
        for t in self.targets:
            if shard not in t.skip_shards:
                self._write_model(shard, t, cols)
        self.stage_seconds["read_decode"] += t_read
        self.stage_seconds["write"] += time.perf_counter() - t0
        self.done_shards.append(shard)
        self.rows_written += len(cols["key"])
        rate = self.rows_written / max(time.perf_counter() - self._t0, 1e-9)
        log.info("shard %s written (%d/%d shards, %d images, %.1f img/s)", shard, len(self.done_shards), self.total,
                 self.rows_written, rate)

    def _write_model(self, shard: str, t: ModelTarget, cols: dict | None) -> None:
        path = lambda table: shard_file(self.out, table, t.slug, self.run_id, shard)  # noqa: E731
        status = cols["status"]
        model_err = cols.get(f"{t.prefix}/error", np.full(len(status), "", dtype=object))
        good = (status == "ok") & (model_err == "")
        errors = error_table(cols, shard, model_err)
        write_table_atomic(errors, path("errors"))
        n = int(good.sum())
        keys = cols["key"][good]
        labels = cols["label"][good].astype(np.int32) if n else np.array([], np.int32)
        if t.concepts:
            k = len(t.concepts)
            before = cols[f"{t.prefix}/concept_before"][good].reshape(-1)
            after = cols[f"{t.prefix}/concept_after"][good].reshape(-1)
            concepts = pa.table({
                "key": pa.array(np.repeat(keys, k).tolist(), pa.string()),
                "shard": pa.array([shard] * (n * k), pa.string()),
                "label": pa.array(np.repeat(labels, k), pa.int32()),
                "concept": pa.DictionaryArray.from_arrays(pa.array(np.tile(np.arange(k, dtype=np.int32), n)),
                                                          pa.array(t.concepts, pa.string())).cast(pa.string()),
                "angle_before_deg": _f32_nullable(before),
                "angle_after_deg": _f32_nullable(after),
                "as_deg": _f32_nullable(before - after),
            }, schema=CONCEPTS_SCHEMA)
            write_table_atomic(concepts, path("concepts"))
        get = lambda name: cols[f"{t.prefix}/{name}"][good] if n else np.array([], np.float32)  # noqa: E731
        pred = get("pred").astype(np.int32) if n else np.array([], np.int32)
        names = np.asarray(t.class_names, dtype=object)
        as_deg = get("as_deg")
        images = pa.table({
            "key": pa.array(keys.tolist(), pa.string()),
            "shard": pa.array([shard] * n, pa.string()),
            "label": pa.array(labels, pa.int32()),
            "class_name": pa.array(names[labels].tolist() if n else [], pa.string()),
            "pred": pa.array(pred, pa.int32()),
            "pred_name": pa.array(names[pred].tolist() if n else [], pa.string()),
            "as_deg": _f32_nullable(as_deg),
            "abs_as_deg": _f32_nullable(np.abs(as_deg)),
            "is_deg": _f32_nullable(get("is_deg")),
            "pred_as_deg": _f32_nullable(get("pred_as_deg")),
            "logit_drift": _f32_nullable(get("logit_drift")),
            "null_norm_frac": _f32_nullable(get("null_norm_frac")),
            "null_dim": pa.array(np.full(n, t.null_dim, np.int32), pa.int32()),
        }, schema=IMAGES_SCHEMA)
        write_table_atomic(images, path("images"))  # last: its presence marks the shard done
        self.counts[f"{t.slug}/images"] += n
        self.counts[f"{t.slug}/errors"] += errors.num_rows

