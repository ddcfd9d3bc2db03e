"""The driver's side of a shard job: the model actors write each shard's rows where they
computed them (pipelines.stages.shard_writer) and hand on one small record per shard; this
tallies the records into the manifest's counts, stage seconds and stream rate, and logs one
line per shard. The driver never holds a result row, so its cost per image does not grow
with the rows (concepts, models) an image makes (`sing bench-scale`).
"""
from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

# the tables' schemas live with their builders; re-exported for callers of this module
from pipelines.stages.audit_tables import ERRORS_SCHEMA, IMAGES_SCHEMA, LONG_CONCEPTS_SCHEMA  # noqa: F401

log = logging.getLogger("sing.collect")

STAGES = {"t_forward": "forward", "t_ops": "sing_ops", "t_decode": "device_decode", "t_write": "write"}


@dataclass(frozen=True)
class Writer:
    """One writing model actor of the stream: its column prefix and its model's slug."""
    prefix: str
    slug: str


class ShardTally:
    """`batch(records)` for every batch of records, `shard(name, rows, batch, i)` once per
    shard written (spine.run's on_batch and on_shard)."""

    def __init__(self, writers: list[Writer], total: int = 0, what: str = "shard"):
        self.writers, self.total, self.what = writers, total, what
        self.stage_seconds = defaultdict(float)
        self.counts = defaultdict(int)
        self.done_shards: list[str] = []
        self.rows_written = 0  # samples (images + failed) of the shards written this session
        # arrival of the first and the last record: rows after the first over that span is the
        # rate once every stage runs (start-up excluded), see stream_rate()
        self._first = self._last = None
        self._rows_seen = self._rows_first = 0
        self._t0 = time.perf_counter()

    def batch(self, batch: dict) -> None:
        now, n = time.perf_counter(), int(np.sum(batch["n_rows"]))
        if self._first is None:
            self._first, self._rows_first = now, n
        self._last, self._rows_seen = now, self._rows_seen + n
        self.stage_seconds["read_decode"] += float(np.sum(batch["t_read"]))
        for w in self.writers:
            for col, stage in STAGES.items():
                if f"{w.prefix}/{col}" in batch:
                    self.stage_seconds[stage] += float(np.sum(batch[f"{w.prefix}/{col}"]))

    def stream_rate(self) -> float | None:
        """Samples per second from the first record's arrival to the last's (None before two):
        the pipeline's rate without Ray, actor and model start-up."""
        if self._first is None or self._last <= self._first:
            return None
        return (self._rows_seen - self._rows_first) / (self._last - self._first)

    def shard(self, shard: str, rows: int, batch: dict, i: int) -> None:
        for w in self.writers:
            self.counts[f"{w.slug}/images"] += int(batch[f"{w.prefix}/images"][i])
            self.counts[f"{w.slug}/errors"] += int(batch[f"{w.prefix}/errors"][i])
        self.done_shards.append(shard)
        self.rows_written += rows
        rate = self.rows_written / max(time.perf_counter() - self._t0, 1e-9)
        log.info("%s %s written (%d/%d shards, %d images, %.1f img/s)", self.what, shard, len(self.done_shards),
                 self.total, self.rows_written, rate)
