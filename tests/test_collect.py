"""The driver's tally of shard records: the stream rate counts samples after the first record
over the first-to-last span; counts and stage seconds are the records' sums."""
from __future__ import annotations

import numpy as np
import pytest

import pipelines.stages.collect as collect


def _records(rows: list[int], images: list[int]) -> dict:
    n = len(rows)
    return {"shard": np.array([f"s{i}" for i in range(n)], dtype=object), "n_rows": np.array(rows),
            "t_read": np.full(n, 0.5), "m0/images": np.array(images), "m0/errors": np.array(rows) - images,
            "m0/t_forward": np.full(n, 2.0), "m0/t_ops": np.full(n, 0.25), "m0/t_write": np.full(n, 0.125)}


def test_stream_rate_counts_samples_after_the_first_record(monkeypatch):
    clock = iter([0.0, 10.0, 11.0, 13.0])  # construction, then one reading per batch of records
    monkeypatch.setattr(collect.time, "perf_counter", lambda: next(clock))
    t = collect.ShardTally([collect.Writer("m0", "a")])
    t.batch(_records([4], [4]))
    assert t.stream_rate() is None  # one batch: no span yet
    t.batch(_records([6], [5]))
    t.batch(_records([10, 2], [9, 2]))
    assert t.stream_rate() == pytest.approx((6 + 12) / (13.0 - 10.0))


def test_counts_and_stage_seconds_sum_the_records():
    t = collect.ShardTally([collect.Writer("m0", "a")], total=3)
    b = _records([4, 6], [3, 6])
    t.batch(b)
    for i, shard in enumerate(b["shard"]):
        t.shard(shard, int(b["n_rows"][i]), b, i)
    assert t.counts == {"a/images": 9, "a/errors": 1}
    assert t.rows_written == 10 and t.done_shards == ["s0", "s1"]
    assert t.stage_seconds == {"read_decode": 1.0, "forward": 4.0, "sing_ops": 0.5, "write": 0.25}
