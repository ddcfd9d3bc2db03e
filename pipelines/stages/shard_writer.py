"""Rows are written where they are computed: a model actor keeps its model's result columns of
each shard (not the images) until the shard's end row, writes the shard's files
(pipelines.io.layout.commit_shard: the one rule), and hands on one small record per shard.
The driver sees records only (pipelines.jobs.spine.drain).

Why this works: the read stage emits each shard as one block and Ray Data hands a block whole
to one actor task, whose batches run in order (pipelines.stages.ray_session sets no block
splitting), so one writer sees every row of a shard and its end row last. That is checked,
not assumed: the rows are kept by their position in the shard (`seq`), a row seen twice (a
retried task) counts once, and an end row whose rows are not all here is an error.

A record (columns `<prefix>/<name>`, set on the shard's end row, zero elsewhere):
    rows        rows the shard had (= the end row's n_rows) when written or skipped
    written     1 when this actor wrote the files, 0 when the shard was done before
    images      rows of the marker table (scored images, steered images, index entries)
    errors      rows of the errors table
    t_write     seconds writing
    write_error why the files could not be written ("" when they were): the shard is not done
    t_forward, t_ops, t_decode   seconds of model work since this actor's previous record
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

KEEP = ("key", "label", "status", "stage", "reason")  # the read stage's columns a writer needs
RECORD = ("rows", "written", "images", "errors", "t_write")


class ShardIncomplete(RuntimeError):
    """An end row arrived before all of its shard's rows: a shard was split across actors."""


@dataclass(frozen=True)
class WriterSpec:
    """What a model actor writes, pickled into it: build(cols, shard) -> [(table name, path,
    Arrow table)] in writing order, marker last (cols: the shard's rows in order, read columns
    plus this model's `<prefix>/` columns); the shards an earlier run finished for this model."""
    build: Callable
    skip: frozenset = field(default_factory=frozenset)


@dataclass
class _Pending:
    seqs: list = field(default_factory=list)
    parts: list = field(default_factory=list)


class ShardWriter:
    def __init__(self, prefix: str, spec: WriterSpec):
        self.prefix, self.spec = prefix, spec
        self._pending: dict[str, _Pending] = {}
        self._lock = threading.Lock()
        self._timings: dict[str, float] = {}  # the kinds this actor reports (t_decode: device decode only)

    def add_timings(self, **seconds: float) -> None:
        with self._lock:
            for k, v in seconds.items():
                self._timings[k] = self._timings.get(k, 0.0) + v

    def add(self, batch: dict, own: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Keep this batch's rows (own: this model's per-row columns, unprefixed); write every
        shard whose end row is in it. Returns the record columns over the batch's rows and the
        mask of the end rows."""
        status = batch["status"]
        end = status == "end"
        n, p = len(status), self.prefix
        with self._lock:
            kinds = list(self._timings)
        rec = {f"{p}/{k}": np.zeros(n, np.float64) for k in (*RECORD, *kinds)}
        rec[f"{p}/write_error"] = np.full(n, "", dtype=object)
        body = ~end
        cols = {k: batch[k][body] for k in KEEP if k in batch}
        cols.update({f"{p}/{k}": v[body] for k, v in own.items()})
        empty = {k: v[:0] for k, v in cols.items()}  # an empty shard's columns
        if body.any():
            seq = batch["seq"][body]
            shards = batch["shard"][body]
            with self._lock:
                for shard in np.unique(shards):
                    sel = shards == shard
                    pend = self._pending.setdefault(str(shard), _Pending())
                    pend.seqs.append(seq[sel])
                    pend.parts.append({k: v[sel] for k, v in cols.items()})
        for i in np.flatnonzero(end):
            self._finish(str(batch["shard"][i]), int(batch["n_rows"][i]), rec, i, empty)
        if end.any():
            with self._lock:
                first = int(np.flatnonzero(end)[0])
                for k in kinds:
                    rec[f"{p}/{k}"][first], self._timings[k] = self._timings[k], 0.0
        return rec, end

    def _finish(self, shard: str, n_rows: int, rec: dict, i: int, empty: dict) -> None:
        p = self.prefix
        with self._lock:
            pend = self._pending.pop(shard, _Pending())
        rec[f"{p}/rows"][i] = n_rows
        if shard in self.spec.skip:
            return
        cols = _in_order(shard, pend, n_rows) if pend.parts or n_rows else empty
        files = self.spec.build(cols, shard)
        from pipelines.io.layout import ShardWriteError, commit_shard

        try:
            rec[f"{p}/t_write"][i] = commit_shard([(path, table) for _, path, table in files])
        except ShardWriteError as exc:
            rec[f"{p}/write_error"][i] = f"shard {shard}: {exc}"
            return
        rec[f"{p}/written"][i] = 1
        rec[f"{p}/images"][i] = files[-1][2].num_rows
        rec[f"{p}/errors"][i] = sum(t.num_rows for name, _, t in files if name == "errors")


def _in_order(shard: str, pend: _Pending, n_rows: int) -> dict[str, np.ndarray]:
    """The shard's rows by position, each once (a retried task may have delivered rows twice:
    the later copy wins); ShardIncomplete when positions are missing."""
    if not pend.parts:
        raise ShardIncomplete(f"shard {shard}: its end row says {n_rows} rows, none reached this actor")
    seq = np.concatenate(pend.seqs)
    cols = {k: np.concatenate([part[k] for part in pend.parts]) for k in pend.parts[0]}
    last = len(seq) - 1 - np.unique(seq[::-1], return_index=True)[1]  # the last copy of each position
    order = last[np.argsort(seq[last], kind="stable")]
    if len(order) != n_rows or (n_rows and (seq[order[0]] != 0 or seq[order[-1]] != n_rows - 1)):
        raise ShardIncomplete(f"shard {shard}: {len(order)} of its {n_rows} rows reached this actor (a shard must "
                              "travel through the model actors as one block)")
    return {k: v[order] for k, v in cols.items()}
