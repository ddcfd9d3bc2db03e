"""What a run prints: the project's own lines (one per shard, then a summary), one progress bar
per job in a terminal (tqdm: images done, img/s, ETA), and Ray's own console output only with
`sing --verbose`.

    set_verbose(flag)        the CLI's --verbose, for this process
    quiet_ray_data(ctx)      Ray Data's INFO lines and its progress stream off unless verbose
    job_progress(...)        the tqdm bar of one job (a no-op off a terminal, or with --verbose,
                             where Ray Data draws its own bars)
    estimate_images(shards)  the images a job will see, for the bar's ETA (one shard counted)
"""
from __future__ import annotations

import contextlib
import logging
import sys
import tarfile

_verbose = False


def set_verbose(flag: bool) -> None:
    global _verbose
    _verbose = bool(flag)


def verbose() -> bool:
    return _verbose


def ray_logging_level() -> int:
    """The driver's "ray" logger level for ray.init: INFO lines ("Started a local Ray
    instance.") are Ray's, not the project's."""
    return logging.INFO if _verbose else logging.WARNING


def quiet_ray_data(ctx, progress: bool) -> None:
    """Ray Data prints INFO lines (execution plans, tips) and, when stdout is no terminal,
    logs its progress every few seconds (the `logging_progress` stream). Unless verbose, its
    console handler shows warnings and errors only (its log file under the Ray session keeps
    everything) and its progress manager is off: the project draws one bar per job instead."""
    from ray.data._internal.logging import SessionFileHandler

    level = logging.INFO if _verbose else logging.WARNING
    for h in logging.getLogger("ray.data").handlers:
        if not isinstance(h, SessionFileHandler):
            h.setLevel(level)
    ctx.enable_progress_bars = progress and _verbose
    # switching the bars off makes Ray Data warn once how to switch them on again: we chose it
    logging.getLogger("ray.data._internal.progress").setLevel(logging.NOTSET if _verbose else logging.ERROR)


def _bar_wanted(progress: bool) -> bool:
    return progress and not _verbose and sys.stderr.isatty()


def count_samples(path: str) -> int | None:
    """Samples (distinct keys) in one local tar shard, from its headers only (tarfile seeks
    over the member data); None for a URL or an unreadable file."""
    if "://" in str(path) and not str(path).startswith("file://"):
        return None
    try:
        with tarfile.open(str(path).removeprefix("file://"), mode="r:") as tf:
            # a webdataset key: the member path up to the first dot of its basename
            keys = {(d, base.partition(".")[0]) for d, _, base in (m.name.rpartition("/") for m in tf if m.isfile())}
        return len(keys)
    except (OSError, tarfile.TarError):
        return None


def estimate_images(shards: list[str]) -> int | None:
    """The first shard's sample count times the number of shards (shards are written with a
    fixed number of samples each, the last one aside); None when it cannot be counted."""
    if not shards:
        return 0
    n = count_samples(shards[0])
    return None if n is None else n * len(shards)


class JobProgress:
    """One tqdm bar (images, img/s, ETA); project log lines are printed above it."""

    def __init__(self, what: str, total: int | None, n_shards: int, enabled: bool):
        self.n_shards, self.shards_done, self.rows_in_done = n_shards, 0, 0
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=what, unit="img", dynamic_ncols=True, file=sys.stderr, leave=True)

    def add(self, n: int) -> None:
        if self.bar is not None and n:
            self.bar.update(n)

    def shard_done(self, rows: int) -> None:
        """Refine the total from the shards finished so far (their mean size)."""
        self.shards_done += 1
        self.rows_in_done += rows
        if self.bar is not None and self.n_shards:
            est = round(self.rows_in_done / self.shards_done * self.n_shards)
            self.bar.total = max(est, self.bar.n)
            self.bar.refresh()

    def set_done(self, n: int) -> None:
        if self.bar is not None and n > self.bar.n:
            self.bar.update(n - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@contextlib.contextmanager
def job_progress(what: str, shards: list[str], progress: bool):
    """The bar of one job over `shards`, with log lines routed above it while it runs."""
    enabled = _bar_wanted(progress)
    bar = JobProgress(what, estimate_images(shards) if enabled else None, len(shards), enabled)
    if not enabled:
        yield bar
        return
    from tqdm.contrib.logging import logging_redirect_tqdm

    try:
        with logging_redirect_tqdm():
            yield bar
    finally:
        bar.close()


class _Counter:
    """A Ray actor the workers add their image counts to (fire and forget)."""

    def __init__(self):
        self.n = 0

    def add(self, k: int) -> None:
        self.n += int(k)

    def value(self) -> int:
        return self.n


@contextlib.contextmanager
def counted_progress(what: str, shards: list[str], progress: bool):
    """The bar of a pass whose results the driver never iterates (fit's aggregation): yields
    a counter actor handle (None without a bar) that worker code calls `.add.remote(n)` on;
    a driver thread moves the bar to its value twice a second. Ray must be up (ensure_ray)."""
    if not _bar_wanted(progress):
        yield None
        return
    import threading

    import ray

    counter = ray.remote(num_cpus=0)(_Counter).remote()
    stop = threading.Event()
    with job_progress(what, shards, progress) as bar:
        def poll():
            while not stop.wait(0.5):
                bar.set_done(ray.get(counter.value.remote()))

        t = threading.Thread(target=poll, daemon=True)
        t.start()
        try:
            yield counter
        finally:
            stop.set()
            t.join()
            bar.set_done(ray.get(counter.value.remote()))
            ray.kill(counter)
