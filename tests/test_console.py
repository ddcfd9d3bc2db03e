"""pipelines.console: Ray's console output only with --verbose, the progress bar's estimate and
its absence off a terminal, and the fit's accumulator that Arrow can hold (no pickling)."""
from __future__ import annotations

import io
import logging

import numpy as np
import pytest
import torch

from pipelines import console


@pytest.fixture
def restore_verbose():
    yield
    console.set_verbose(False)


def test_ray_data_console_and_progress_stream_only_when_verbose(restore_verbose):
    import ray.data
    from ray.data._internal.logging import SessionFileHandler

    ctx = ray.data.DataContext.get_current()
    saved = ctx.enable_progress_bars
    handlers = [h for h in logging.getLogger("ray.data").handlers if not isinstance(h, SessionFileHandler)]
    assert handlers  # Ray Data's console handler, which prints its INFO lines and progress stream
    try:
        console.set_verbose(False)
        console.quiet_ray_data(ctx, progress=True)
        assert ctx.enable_progress_bars is False and all(h.level == logging.WARNING for h in handlers)
        assert console.ray_logging_level() == logging.WARNING
        console.set_verbose(True)
        console.quiet_ray_data(ctx, progress=True)
        assert ctx.enable_progress_bars is True and all(h.level == logging.INFO for h in handlers)
        assert console.ray_logging_level() == logging.INFO
        console.quiet_ray_data(ctx, progress=False)  # -q wins over --verbose for the bars
        assert ctx.enable_progress_bars is False
    finally:
        ctx.enable_progress_bars = saved


def test_cli_sets_verbose(restore_verbose, monkeypatch):
    from pipelines.cli import main

    seen = []
    import pipelines.jobs.cache as cache

    monkeypatch.setattr(cache, "cli_run", lambda a: seen.append(console.verbose()) or 0)
    assert main(["--verbose", "cache", "ls"]) == 0 and main(["cache", "ls"]) == 0
    assert seen == [True, False]


def test_progress_estimate_and_no_bar_off_a_terminal(tmp_path):
    from pipelines.jobs.make_shards import make_shards
    from tests.pipeline_data import photo_folder

    shards = make_shards(str(photo_folder(tmp_path / "p", per_class=3)), str(tmp_path / "s"), per_shard=4)
    assert [console.count_samples(s) for s in shards] == [4, 4, 1]
    assert console.estimate_images(shards) == 12 and console.count_samples("s3://bucket/x.tar") is None
    with console.job_progress("audit", shards, progress=True) as bar:  # pytest's stderr is no terminal
        assert bar.bar is None
        bar.add(3)
        bar.shard_done(4)
    b = console.JobProgress("audit", 12, 3, enabled=True)
    b.bar.fp = io.StringIO()  # draw into a buffer
    b.add(4)
    b.shard_done(4)
    b.add(1)
    b.shard_done(1)  # the mean of the finished shards times their number
    assert b.bar.n == 5 and b.bar.total == round(5 / 2 * 3)
    b.close()


def test_fit_accumulator_is_arrow_binary_and_round_trips():
    import pyarrow as pa
    from ray.data._internal.tensor_extensions.arrow import convert_to_pyarrow_array

    from pipelines.jobs.fit.stats import pack_stats, unpack_stats
    from sing_ops import RidgeStats

    g = torch.Generator().manual_seed(0)
    s = RidgeStats(5, 3).update(torch.randn(40, 5, generator=g, dtype=torch.float64),
                                torch.randn(40, 3, generator=g, dtype=torch.float64))
    blob = pack_stats(s, [["k1", "shard-0", "model", "non-finite"]])
    # what Ray Data does with an accumulator column: native Arrow, not the pickled-object fallback
    assert convert_to_pyarrow_array([blob, blob], "ridge").type == pa.binary()
    back, errors = unpack_stats(blob, 5, 3)
    assert back.n == 40 and errors == [["k1", "shard-0", "model", "non-finite"]]
    for a, b in ((back.sum_ff, s.sum_ff), (back.sum_fz, s.sum_fz), (back.sum_f, s.sum_f), (back.sum_zz, s.sum_zz)):
        assert torch.equal(a, b)
    merged, none = unpack_stats(pack_stats(back.merge(s)), 5, 3)
    assert merged.n == 80 and none == [] and np.allclose(merged.sum_ff.numpy(), 2 * s.sum_ff.numpy())
    with pytest.raises(ValueError, match="expected"):
        unpack_stats(blob, 4, 3)
