"""Runs that heal themselves: which failures a restart can cure (a lost node, actor or object),
a monitor that sees a node die in Ray's own node table within seconds, and stopping an
attempt's Ray Data executors so the next attempt gets their resources.

Ray Data retries tasks and restarts actors by itself, but a node's death can leave a stream
waiting for objects that lived on it; the spine then restarts the stream over the shards not
yet written (pipelines.jobs.spine.run) instead of waiting for the stall watchdog.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable

from pipelines.stages.watchdog import NodeLost, ShardWritesFailed, StallError

log = logging.getLogger("sing.healing")

# Ray's errors for failures of the cluster, not of the job's code
_RAY_FAILURES = ("ActorDiedError", "ActorUnavailableError", "NodeDiedError", "ObjectLostError", "OwnerDiedError",
                 "WorkerCrashedError", "ObjectFetchTimedOutError", "ObjectReconstructionFailedError",
                 "RaySystemError", "OutOfMemoryError", "ActorUnschedulableError", "TaskUnschedulableError")


def trigger_of(exc: BaseException) -> str | None:
    """What a restart could cure in `exc` (its chain included), or None for anything else (a
    bug or bad input in the job's own code fails the run at once)."""
    import ray.exceptions as rex

    kinds = tuple(getattr(rex, n) for n in _RAY_FAILURES if hasattr(rex, n))
    seen, e = set(), exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (NodeLost, StallError, ShardWritesFailed)) or isinstance(e, kinds):
            return f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        cause = getattr(e, "cause", None)  # RayTaskError carries the remote exception here
        e = cause if isinstance(cause, BaseException) else (e.__cause__ or e.__context__)
    return None


class NodeMonitor:
    """Watches the nodes alive when it starts (or at rebase()); reason() names the first that
    died."""

    def __init__(self, interval_s: float = 1.0):
        import ray

        self.interval_s = interval_s
        self.alive = {n["NodeID"]: n.get("NodeManagerAddress", "?") for n in ray.nodes() if n["Alive"]}
        self._reason: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sing-node-monitor", daemon=True)

    def start(self) -> "NodeMonitor":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def reason(self) -> str | None:
        return self._reason

    def rebase(self) -> None:
        """Watch the nodes alive now, forgetting deaths seen so far (the attempt has placed its
        pool on the nodes left)."""
        import ray

        self.alive = {n["NodeID"]: n.get("NodeManagerAddress", "?") for n in ray.nodes() if n["Alive"]}
        self._reason = None

    def _run(self) -> None:
        import ray

        while not self._stop.wait(self.interval_s):
            alive = self.alive  # rebase() may replace it meanwhile
            if self._reason is not None:
                continue
            try:
                nodes = {n["NodeID"]: n["Alive"] for n in ray.nodes()}
            except Exception:  # noqa: BLE001 - the GCS may be busy; look again next time
                continue
            dead = [nid for nid in alive if not nodes.get(nid, False)]
            if dead and alive is self.alive:
                self._reason = "node " + ", ".join(f"{alive[d]} ({d[:8]})" for d in dead) + " died"


def executors() -> set:
    """Ray Data's streaming executors running in this process (each is a thread)."""
    try:
        from ray.data._internal.execution.streaming_executor import StreamingExecutor
    except ImportError:  # Ray moved it: restarts still work, an old attempt just winds down alone
        return set()
    return {t for t in threading.enumerate() if isinstance(t, StreamingExecutor)}


def stop_executors(before: set) -> None:
    """Shut down the executors started since `before`, killing their actors, so a new attempt
    does not wait for resources an abandoned one still holds."""
    for ex in executors() - before:
        try:
            ex.shutdown(force=True, exception=RuntimeError("sing: attempt abandoned, restarting"))
        except Exception as exc:  # noqa: BLE001 - best effort: the attempt is over either way
            log.debug("could not shut down an executor: %s", exc)


def call_abortable(fn: Callable, abort: Callable[[], str | None], poll_s: float = 1.0):
    """fn() in a thread; NodeLost as soon as abort() names a reason (a blocking Ray Data call,
    e.g. an aggregation, has no other way out when a node dies under it)."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc

    t = threading.Thread(target=target, name="sing-abortable", daemon=True)
    t.start()
    while t.is_alive():
        t.join(poll_s)
        why = abort()
        if why and t.is_alive():
            raise NodeLost(why)
    if "error" in box:
        raise box["error"]
    return box.get("value")
