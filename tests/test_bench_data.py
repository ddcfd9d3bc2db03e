"""`sing bench`'s shards hold whole batches: Ray Data's batches follow blocks (one per shard),
so a shard smaller than a batch makes short batches that a compiled model pads."""
from __future__ import annotations

import tarfile

from pipelines.jobs.bench.data import bench_shards


def _images(path: str) -> int:
    with tarfile.open(path) as t:
        return sum(m.name.endswith(".jpg") for m in t.getmembers())


def test_bench_shards_hold_whole_batches(tmp_path):
    shards = bench_shards(tmp_path, n_images=40, mult=1, threads=2, batch_size=16)
    sizes = [_images(s) for s in shards]
    assert sum(sizes) == 40
    assert all(n == 16 for n in sizes[:-1]) and sizes[-1] == 8  # only the last shard short
    # a second call reuses them; another batch size makes its own
    assert bench_shards(tmp_path, n_images=40, mult=1, threads=2, batch_size=16) == shards
    assert [_images(s) for s in bench_shards(tmp_path, n_images=40, mult=1, threads=2, batch_size=8)] == [8] * 5
