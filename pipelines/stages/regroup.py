"""Regroup the stream by shard: Ray Data delivers rows of many shards interleaved, and a
shard's results may be written only when every one of its rows has arrived."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np


@dataclass
class _Pending:
    batches: list = field(default_factory=list)
    rows: int = 0
    expected: int | None = None
    t_read: float = 0.0


class ShardGrouper:
    """`add(batch)` returns (shard, columns, t_read) for every shard whose "end" row (from
    read_stage: n_rows, t_read) and all of its rows have now arrived; columns exclude the end
    row and are zero-length arrays when the shard had no rows."""

    def __init__(self):
        self.pending: dict[str, _Pending] = defaultdict(_Pending)

    def add(self, batch: dict) -> list[tuple[str, dict, float]]:
        status = batch["status"]
        done = []
        for shard in np.unique(batch["shard"]):
            sel = batch["shard"] == shard
            p = self.pending[shard]
            end, body = sel & (status == "end"), sel & (status != "end")
            p.batches.append({k: v[body] for k, v in batch.items()})
            p.rows += int(body.sum())
            if end.any():
                p.expected = int(batch["n_rows"][end][0])
                p.t_read = float(batch["t_read"][end][0])
            if p.expected is not None and p.rows == p.expected:
                p = self.pending.pop(shard)
                cols = {k: np.concatenate([b[k] for b in p.batches]) for k in p.batches[0]}
                done.append((str(shard), cols, p.t_read))
        return done

    def unfinished(self) -> list[str]:
        return sorted(self.pending)
