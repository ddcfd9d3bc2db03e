"""Rows written where they are computed (pipelines.stages.shard_writer) under the one rule of
pipelines.io.layout.commit_shard: a shard is written by the actor that saw all of its rows,
whole and once, its marker last; a failed write leaves no marker and says why."""
from __future__ import annotations

import functools

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.io import layout
from pipelines.models.imagenet_classes import imagenet_class_names
from pipelines.stages.audit_tables import audit_files
from pipelines.stages.shard_writer import ShardIncomplete, ShardWriter, WriterSpec

K = 4  # concepts


def _rows(shard: str, seqs, n_rows: int | None = None, bad=()) -> tuple[dict, dict]:
    """A batch of the read stage's rows (and, when n_rows is given, the shard's end row) with a
    model's own columns; row i's numbers are functions of its position, so order is checkable."""
    seqs = list(seqs)
    n = len(seqs) + (n_rows is not None)
    status = np.array(["error" if s in bad else "ok" for s in seqs] + (["end"] if n_rows is not None else []),
                      dtype=object)
    seq = np.array(seqs + ([-1] if n_rows is not None else []), dtype=np.int64)
    batch = {"key": np.array([f"k{s:04d}" for s in seq], dtype=object), "shard": np.full(n, shard, dtype=object),
             "label": np.where(seq >= 0, seq % 7, -1), "status": status,
             "stage": np.where(status == "error", "decode", "").astype(object),
             "reason": np.where(status == "error", "broken", "").astype(object),
             "n_rows": np.full(n, n_rows or 0), "t_read": np.zeros(n), "seq": seq}
    f = seq.astype(np.float32)
    own = {"as_deg": f / 10, "is_deg": f + 20, "pred_as_deg": f / 20, "logit_drift": np.zeros(n, np.float32),
           "null_norm_frac": np.full(n, 0.5, np.float32), "pred": (seq % 7).astype(np.int64),
           "error": np.full(n, "", dtype=object), "concept_before": np.repeat(f[:, None], K, 1) + 70,
           "concept_after": np.repeat(f[:, None], K, 1) + 69}
    return batch, own


def _writer(tmp_path, skip=()) -> ShardWriter:
    build = functools.partial(audit_files, out=str(tmp_path), run_id="r", slug="m", prefix="m0",
                              class_names=tuple(imagenet_class_names()), null_dim=8, concepts=True)
    return ShardWriter("m0", WriterSpec(build, frozenset(skip)))


def _table(tmp_path, table: str, shard: str = "s1"):
    return pq.read_table(layout.shard_file(str(tmp_path), table, "m", "r", shard))


def test_a_shard_is_written_at_its_end_row_in_position_order(tmp_path):
    w = _writer(tmp_path)
    rec, end = w.add(*_rows("s1", [3, 4, 5]))  # rows arrive out of order across batches
    assert not end.any() and not (tmp_path / "images").exists()
    w.add_timings(t_forward=1.5)
    rec, end = w.add(*_rows("s1", [0, 1, 2, 6], n_rows=7, bad={1}))
    assert end.tolist() == [False] * 4 + [True]
    i = 4
    assert (rec["m0/rows"][i], rec["m0/written"][i], rec["m0/images"][i], rec["m0/errors"][i]) == (7, 1, 6, 1)
    assert rec["m0/t_forward"][i] == 1.5 and rec["m0/write_error"][i] == ""
    images = _table(tmp_path, "images")
    assert images["key"].to_pylist() == [f"k{s:04d}" for s in (0, 2, 3, 4, 5, 6)]
    np.testing.assert_allclose(images["is_deg"].to_numpy(), [20, 22, 23, 24, 25, 26])
    angles = _table(tmp_path, "concept_angles")
    assert angles["key"].to_pylist() == images["key"].to_pylist()
    assert angles["angle_before_deg"].to_pylist()[1] == [72.0] * K
    assert _table(tmp_path, "errors")["key"].to_pylist() == ["k0001"]


def test_rows_delivered_twice_count_once(tmp_path):
    """A task retried by Ray Data delivers its rows again: each position is written once."""
    w = _writer(tmp_path)
    w.add(*_rows("s1", [0, 1, 2]))
    w.add(*_rows("s1", [0, 1, 2]))
    rec, _ = w.add(*_rows("s1", [3], n_rows=4))
    assert rec["m0/images"][-1] == 4 and _table(tmp_path, "images").num_rows == 4


def test_an_end_row_before_all_rows_is_an_error_not_a_short_shard(tmp_path):
    w = _writer(tmp_path)
    w.add(*_rows("s1", [0, 2]))
    with pytest.raises(ShardIncomplete, match="2 of its 3 rows"):
        w.add(*_rows("s1", [], n_rows=3))
    assert not (tmp_path / "images").exists()


def test_shards_interleaved_in_batches_and_empty_shards(tmp_path):
    w = _writer(tmp_path)
    a, own_a = _rows("s1", [0, 1], n_rows=2)
    b, own_b = _rows("s2", [], n_rows=0)  # an empty tar
    batch = {k: np.concatenate([a[k], b[k]]) for k in a}
    own = {k: np.concatenate([own_a[k], own_b[k]]) for k in own_a}
    rec, end = w.add(batch, own)
    assert end.sum() == 2 and rec["m0/rows"][end].tolist() == [2, 0]
    assert _table(tmp_path, "images", "s1").num_rows == 2 and _table(tmp_path, "images", "s2").num_rows == 0


def test_a_shard_done_before_is_not_written_again(tmp_path):
    w = _writer(tmp_path, skip={"s1"})
    rec, _ = w.add(*_rows("s1", [0, 1], n_rows=2))
    assert rec["m0/rows"][-1] == 2 and rec["m0/written"][-1] == 0
    assert not (tmp_path / "images").exists()


def test_a_failed_write_leaves_no_marker_and_says_why(tmp_path):
    """The images file cannot be written (a directory stands in its place, as a full disk or
    an object store's error would): the record names the shard and the cause; the files
    before the marker may exist, the marker does not, so the shard is not done."""
    blocker = tmp_path / "images" / "model=m" / "run=r" / "s1.parquet"
    blocker.mkdir(parents=True)
    w = _writer(tmp_path)
    rec, _ = w.add(*_rows("s1", [0, 1], n_rows=2))
    assert rec["m0/written"][-1] == 0 and rec["m0/write_error"][-1].startswith("shard s1: ")
    assert layout.done_shards(str(tmp_path), "images", "m", "r") == set()
    assert not [p for p in tmp_path.rglob("*.tmp")]  # no temp file left behind


def test_commit_retries_transient_failures_then_gives_up(tmp_path, monkeypatch):
    calls = []
    real = layout.write_table_atomic

    def flaky(table, path):
        calls.append(path)
        if len(calls) <= 2:
            raise OSError("503 Slow Down")
        real(table, path)

    monkeypatch.setattr(layout, "write_table_atomic", flaky)
    t = pa.table({"x": [1]})
    files = [(str(tmp_path / "a.parquet"), t), (str(tmp_path / "marker.parquet"), t)]
    layout.commit_shard(files, attempts=3, backoff_s=0.0)
    assert (tmp_path / "marker.parquet").is_file() and calls[-1].endswith("marker.parquet")
    calls.clear()
    monkeypatch.setattr(layout, "write_table_atomic", lambda table, path: (_ for _ in ()).throw(OSError("gone")))
    with pytest.raises(layout.ShardWriteError, match="gone"):
        layout.commit_shard([(str(tmp_path / "b.parquet"), t)], attempts=2, backoff_s=0.0)


def test_an_object_store_shows_a_file_only_once_complete():
    """fsspec's memory filesystem publishes a file when it is closed, as S3 and GCS publish an
    object when its upload completes: a write that fails half-way leaves nothing, and the
    marker appears after the files before it."""
    import fsspec

    fs = fsspec.filesystem("memory")
    base = "memory://sing-test-objstore"
    t = pa.table({"x": list(range(1000))})
    seen = []
    real_open = fs.open

    def watching_open(path, mode="rb", **kw):
        seen.append(sorted(p for p in fs.find("/sing-test-objstore")))
        return real_open(path, mode, **kw)

    fs.open = watching_open
    try:
        layout.commit_shard([(f"{base}/errors/s1.parquet", t), (f"{base}/images/s1.parquet", t)])
    finally:
        del fs.open
    assert seen[-1] == ["/sing-test-objstore/errors/s1.parquet"]  # the marker's upload began after it
    assert layout.done_shards(base, "images", "m", "r") == set()

    class Boom(Exception):
        pass

    def half(fh):
        fh.write(b"PAR1 half a file")
        raise Boom

    with pytest.raises(Boom):
        layout.write_atomic(f"{base}/images/s2.parquet", half)
    assert not fs.exists("/sing-test-objstore/images/s2.parquet")
