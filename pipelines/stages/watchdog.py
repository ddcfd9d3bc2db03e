"""A stream that ends with an error instead of hanging.

Losing a node mid-run can leave Ray Data waiting forever for objects that lived on it (seen
in tests/test_multinode.py). A run that has produced nothing for `timeout_s` seconds is
better ended: every finished shard is already on disk, and rerunning the same command
resumes. Scheduler deadlines (the RayJob's activeDeadlineSeconds) are hours; this is minutes.
"""
from __future__ import annotations

import queue
import threading
from typing import Iterable, Iterator

from pipelines.errors import RunFailed

DEFAULT_STALL_S = 1800.0  # half an hour without a single result


class StallError(RunFailed):
    """No result arrived for too long; the run stopped so that a rerun can resume it."""


class NodeLost(RunFailed):
    """A node of the cluster died (or no capacity is left) during an attempt."""


class ShardWritesFailed(RunFailed):
    """Model actors could not write some shards' files (after their own retries): those shards
    are not done; another attempt writes them again."""


_END = object()


def with_stall_timeout(items: Iterable, timeout_s: float | None, what: str = "the stream",
                       abort=None) -> Iterator:
    """Yield from `items`; raise StallError when none arrives for `timeout_s` seconds (None or
    0: wait forever). Only waiting counts: time the consumer spends on an item does not.
    abort: called every second while waiting; a reason it returns ends the wait with
    NodeLost (a node died: the healing spine restarts instead of waiting out the timeout)."""
    if not timeout_s and abort is None:
        yield from items
        return
    q: queue.Queue = queue.Queue(maxsize=2)

    def pump():
        try:
            for x in items:
                q.put(x)
            q.put(_END)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            q.put(exc)

    # daemon: a producer stuck inside Ray must not keep the process alive after the error
    threading.Thread(target=pump, name="stall-watchdog", daemon=True).start()
    waited = 0.0
    while True:
        why = abort() if abort else None
        if why:  # checked between items too: a node can die while results still flow
            raise NodeLost(why)
        try:
            x = q.get(timeout=1.0 if abort else timeout_s)
        except queue.Empty:
            waited += 1.0 if abort else timeout_s
            if timeout_s and waited >= timeout_s:
                raise StallError(f"no result from {what} for {timeout_s:.0f} s (a lost node or a stuck worker); "
                                 "finished shards are on disk: rerun the same command to resume") from None
            continue
        waited = 0.0
        if x is _END:
            return
        if isinstance(x, BaseException):
            raise x
        yield x
