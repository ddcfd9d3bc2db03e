"""ShardCollector's stream rate: samples after the first batch over the first-to-last span."""
from __future__ import annotations

import numpy as np
import pytest

import pipelines.stages.collect as collect


def _batch(n: int, end: bool = False) -> dict:
    status = np.array(["ok"] * n + (["end"] if end else []), dtype=object)
    return {"key": np.array([f"k{i}" for i in range(len(status))], dtype=object),
            "shard": np.array(["s"] * len(status), dtype=object), "status": status,
            "n_rows": np.full(len(status), 10_000), "t_read": np.zeros(len(status))}


def test_stream_rate_counts_samples_after_the_first_batch(monkeypatch, tmp_path):
    clock = iter([0.0, 10.0, 11.0, 13.0])  # construction, then one reading per batch
    monkeypatch.setattr(collect.time, "perf_counter", lambda: next(clock))
    c = collect.ShardCollector(str(tmp_path), "r", [])
    c.timings(_batch(4))
    assert c.stream_rate() is None  # one batch: no span yet
    c.timings(_batch(6, end=True))  # the shard's end marker is not a sample
    c.timings(_batch(10))
    naive = sum(len(b) for b in ([0] * 6, [0] * 10)) / (13.0 - 10.0)
    assert c.stream_rate() == pytest.approx(naive)
