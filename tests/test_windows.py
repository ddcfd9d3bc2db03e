"""A model's forward batches fixed by the rows' positions in their shard (stages.windows):
whatever Ray's batches, rows [k*B, (k+1)*B) of a shard run together, the shard's last rows
together with its end row, and a row delivered twice counts once."""
from __future__ import annotations

import numpy as np
import pytest

from pipelines.stages.windows import ShardWindows, concat


def _rows(shard: str, seqs, end: int | None = None) -> dict:
    seqs = list(seqs) + ([-1] if end is not None else [])
    status = ["ok"] * (len(seqs) - (end is not None)) + (["end"] if end is not None else [])
    return {"shard": np.array([shard] * len(seqs), dtype=object), "seq": np.array(seqs, dtype=np.int64),
            "status": np.array(status, dtype=object), "n_rows": np.array([end or 0] * len(seqs))}


def _seqs(windows) -> list[tuple[str, list[int]]]:
    return [(str(w["shard"][0]), w["seq"].tolist()) for w in windows]


def test_windows_follow_positions_not_batches():
    w = ShardWindows(4)
    assert w.add(_rows("a", [0, 1, 2])) == []
    mixed = concat([_rows("a", [3, 4, 5]), _rows("b", [0, 1, 2, 3, 4])])
    assert _seqs(w.add(mixed)) == [("a", [0, 1, 2, 3]), ("b", [0, 1, 2, 3])]
    assert _seqs(w.add(_rows("a", [6, 7, 8], end=9))) == [("a", [4, 5, 6, 7]), ("a", [8, -1])]
    assert _seqs(w.add(_rows("b", [5], end=6))) == [("b", [4, 5, -1])]
    assert _seqs(w.add(_rows("c", [], end=0))) == [("c", [-1])]  # an empty shard: its end row alone


@pytest.mark.parametrize("seed", range(5))
def test_any_batching_gives_the_same_windows(seed):
    """Two shards cut into random Ray batches (rows of both interleaved) give the same
    windows as the shards whole."""
    rng = np.random.default_rng(seed)
    whole = ShardWindows(5)
    want = sorted(_seqs(whole.add(_rows("a", range(13), end=13)) + whole.add(_rows("b", range(7), end=7))))
    rows = concat([_rows("a", range(13), end=13), _rows("b", range(7), end=7)])
    cuts = np.sort(rng.choice(np.arange(1, 22), size=6, replace=False))
    w = ShardWindows(5)
    got = [x for part in np.split(np.arange(22), cuts) for x in _seqs(w.add({k: v[part] for k, v in rows.items()}))]
    assert sorted(got) == want


def test_a_row_delivered_twice_counts_once():
    w = ShardWindows(3)
    assert w.add(_rows("a", [0, 1])) == []
    assert _seqs(w.add(_rows("a", [0, 1]))) == []  # a retried task's rows again: not a full window
    assert _seqs(w.add(_rows("a", [2], end=3))) == [("a", [0, 1, 2, -1])]
