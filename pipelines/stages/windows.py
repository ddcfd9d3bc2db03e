"""A model's forward batches fixed by the rows' positions in their shard, not by Ray's batches.

float32 kernels round differently for different batch shapes, so a row's features (and so its
scores, a fit's sums, a translator's id) moved by ~1e-6 when Ray Data happened to batch it with
other rows: with shards bundled differently, after a resume that redoes one shard alone, in a
multi-model pass. Here a model actor runs rows [k*B, (k+1)*B) of each shard as one batch, and
the shard's last rows as one, whatever Ray handed it: the same image gets the same numbers in
every run at one --batch-size.

Ray Data hands each shard whole to one actor task, in order (pipelines.stages.shard_writer
checks it), so a window is complete within the task that began it; rows of a window wait here
until the window is full or the shard's end row arrives. The end row rides with its shard's
last window. A row delivered twice (a retried task) counts once (its last copy).
"""
from __future__ import annotations

import threading

import numpy as np


def take(batch: dict, rows) -> dict:
    return {k: v[rows] for k, v in batch.items()}


def concat(parts: list[dict]) -> dict:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


class ShardWindows:
    def __init__(self, size: int):
        if size < 1:
            raise ValueError(f"window size must be at least 1, got {size}")
        self.size = int(size)
        self._pending: dict[str, list[dict]] = {}
        self._lock = threading.Lock()

    def add(self, batch: dict) -> list[dict]:
        """The windows this batch completes (each a batch of one shard's rows in position order,
        the end row last in its shard's final window), in the order they completed."""
        ready = []
        shards = batch["shard"]
        for shard in dict.fromkeys(shards):  # in order of appearance
            part = take(batch, shards == shard)
            with self._lock:
                self._pending.setdefault(str(shard), []).append(part)
                ready += self._complete(str(shard))
        return ready

    def _complete(self, shard: str) -> list[dict]:
        rows = concat(self._pending[shard])
        if len(rows["seq"]) > 1:  # a position delivered twice (a retried task): its last copy
            last = len(rows["seq"]) - 1 - np.unique(rows["seq"][::-1], return_index=True)[1]
            rows = take(rows, np.sort(last))
        seq, end = rows["seq"], rows["status"] == "end"
        window = np.where(end, -1, seq // self.size)
        if end.any():  # the shard is whole: every window, the end row with the last
            del self._pending[shard]
            order = np.lexsort((np.where(end, np.iinfo(np.int64).max, seq),))
            rows, window = take(rows, order), window[order]
            last = window[~end[order]].max(initial=-1)
            window[window == -1] = last
            return [take(rows, window == w) for w in dict.fromkeys(window.tolist())]
        counts = np.bincount(window, minlength=int(window.max()) + 1)
        full = np.flatnonzero(counts >= self.size)
        keep = ~np.isin(window, full)
        self._pending[shard] = [take(rows, keep)] if keep.any() else []
        out = []
        for w in full:
            sel = window == w
            out.append(take(rows, np.flatnonzero(sel)[np.argsort(seq[sel], kind="stable")]))
        return out
