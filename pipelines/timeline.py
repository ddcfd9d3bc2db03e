"""Where a run's fixed cost goes: named moments in seconds since this process started, and
named spans (seconds spent), recorded in the run manifest (`timeline`, `startup_seconds`).

A user waits from typing the command to the last row; the steady rate of the stream says
nothing about the seconds before the first row. `sing bench` prints this breakdown.

    mark(name)          the first time `name` happened in this run (later calls keep it)
    span(name)          a `with` block whose seconds add up under `name`
    begin_run()         a job starts: forget the previous job's marks and spans (one
                        process may run several jobs: the demo fits, then audits); the
                        process start and `imports` stay
    ActorStartup        the driver's view of the model actors' start-up (from columns the
                        actors put on their first batch: pipelines.stages.actors)

No heavy imports here: the CLI imports this module before anything else.
"""
from __future__ import annotations

import contextlib
import os
import time

_state: dict = {"start": None, "marks": {}, "spans": {}}
# the audit's moments in critical-path order: how ties (moments within a millisecond) sort
ORDER = ("imports", "ray_up", "models_prepared", "planned", "actor_spawned", "stream_started", "actor_entered",
         "actor_ready", "first_result", "last_result", "finished", "exit")


def in_order(marks: dict) -> dict:
    """Moments sorted by time; ties in ORDER (a JSON round trip sorts keys by name)."""
    rank = {k: i for i, k in enumerate(ORDER)}
    return dict(sorted(marks.items(), key=lambda kv: (kv[1], rank.get(kv[0], len(ORDER)))))


def process_start() -> float:
    """This process's start (epoch seconds): the kernel's record, so the interpreter's own
    start-up and the imports before this module count."""
    try:
        import psutil

        return float(psutil.Process(os.getpid()).create_time())
    except Exception:  # noqa: BLE001 - no psutil or no /proc: the first call is the start
        if _state["start"] is None:
            _state["start"] = time.time()
        return _state["start"]


def since_start(at: float | None = None) -> float:
    if _state["start"] is None:
        _state["start"] = process_start()
    return (time.time() if at is None else at) - _state["start"]


def mark(name: str, at: float | None = None) -> None:
    """Record `name` (at epoch seconds `at`, default now) unless this run already has it."""
    _state["marks"].setdefault(name, round(since_start(at), 3))


@contextlib.contextmanager
def span(name: str):
    t0 = time.perf_counter()
    try:
        yield
    finally:
        _state["spans"][name] = round(_state["spans"].get(name, 0.0) + time.perf_counter() - t0, 3)


def begin_run() -> None:
    keep = {k: v for k, v in _state["marks"].items() if k == "imports"}
    _state["marks"], _state["spans"] = keep, {}


def marks() -> dict[str, float]:
    """The moments of this run, in the order they happened."""
    return in_order(_state["marks"])


def spans() -> dict[str, float]:
    return dict(_state["spans"])


STARTUP_COLUMNS = ("t_ready", "t_setup", "t_warmup", "t_spawned")


class ActorStartup:
    """The driver's side of the model actors' start-up. Each actor puts on its first batch
    `<prefix>/t_ready` (epoch seconds its constructor ended; 0 on other rows), `<prefix>/t_setup`
    (seconds in its constructor, warm-up included), `<prefix>/t_warmup` (seconds of it spent
    warming up) and `<prefix>/t_spawned` (epoch seconds its process started). Called on every
    batch reaching the driver: marks the first result; finish() marks the earliest actor's
    process start (`actor_spawned`), constructor start (`actor_entered`: Ray's worker start-up
    and the imports lie between) and end (`actor_ready`)."""

    def __init__(self, prefixes: list[str]):
        self.prefixes = prefixes
        self.ready: list[tuple[float, ...]] = []  # STARTUP_COLUMNS per actor

    def __call__(self, batch: dict) -> None:
        mark("first_result")
        for p in self.prefixes:
            ready = batch.get(f"{p}/t_ready")
            if ready is None:
                continue
            for i in ready.nonzero()[0]:
                self.ready.append(tuple(float(batch[f"{p}/{c}"][i]) for c in STARTUP_COLUMNS))

    def finish(self) -> dict:
        """Mark the earliest actor's constructor start and end; return the slowest actor's
        seconds (actors start in parallel: the slowest one is the one waited for)."""
        if not self.ready:
            return {}
        first = min(self.ready)
        _state["marks"]["actor_spawned"] = round(since_start(first[3]), 3)
        _state["marks"]["actor_entered"] = round(since_start(first[0] - first[1]), 3)
        _state["marks"]["actor_ready"] = round(since_start(first[0]), 3)
        return {"actor_setup": round(max(r[1] for r in self.ready), 3),
                "actor_warmup": round(max(r[2] for r in self.ready), 3), "actors": len(self.ready)}
