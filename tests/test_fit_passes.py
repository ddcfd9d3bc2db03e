"""The fit's training aggregation and held-out stream run at once when the cluster has room
for both pools (pipelines.jobs.fit.passes: both_passes, held_out_pool), else one after the other:
both results come back, and either failing stops the other promptly with the cause raised
(not the stop it caused). The Ray Data streams are replaced by stand-ins; the real passes
run in test_pipeline and test_healing."""
from __future__ import annotations

import dataclasses
import threading
import time
from types import SimpleNamespace

import pytest

from pipelines.jobs.fit import passes as fit
from pipelines.stages.watchdog import NodeLost


class _Stream:
    def __init__(self, result=None, error=None, release=None):
        self.result, self.error, self.release = result, error, release

    def aggregate(self, _agg):
        if self.release is not None:
            self.release.wait(30)  # a long training pass
        if self.error is not None:
            raise self.error
        return self.result


@pytest.fixture
def models():
    return SimpleNamespace(dims=[4], dim=3, cache=None, actor=None)


def _cluster(monkeypatch, n_actors=1, cpus=2.0, gpus=0.0, cpus_per_actor=0.5, gpus_per_actor=0.0):
    from pipelines.jobs import spine
    from pipelines.stages import capacity

    ap = spine.ActorPlan(n_actors, 1, gpus_per_actor, cpus_per_actor, None)
    monkeypatch.setattr(spine.ActorPlan, "resolve", classmethod(lambda cls, opts, n_models=1: ap))
    monkeypatch.setattr(capacity, "alive_nodes", lambda: [capacity.Node("n1", cpus, gpus)])
    return ap


@pytest.fixture
def stub(monkeypatch):
    monkeypatch.setattr(fit, "ridge_aggregation", lambda dims, d, cache_root=None, counter=None: ("agg", dims, d))
    _cluster(monkeypatch)  # the 2-core CPU: one training actor and one held-out actor fit


def _held_waiting_for_abort(seen):
    """A held-out pass that runs until told to stop, as with_stall_timeout does."""
    def held(held, models, cfg, ap, abort, counter=None):
        t0 = time.monotonic()
        while time.monotonic() - t0 < 20:
            why = abort()
            if why:
                seen.append(why)
                raise NodeLost(why)
            time.sleep(0.05)
        return "held-out finished"
    return held


def test_both_results_and_the_pool_sizes(monkeypatch, models, stub):
    pools, running = {}, threading.Event()

    def stream(shards, models, cfg, ap):
        pools["train"] = ap
        assert running.wait(10)  # the held-out stream runs meanwhile
        return _Stream({"ridge": b"sums"})

    def held(held, models, cfg, ap, abort, counter=None):
        pools["held"] = ap
        running.set()
        return ("f", "z", "y", [])

    monkeypatch.setattr(fit, "feature_stream", stream)
    monkeypatch.setattr(fit, "held_out", held)
    agg, out = fit.both_passes(["a", "b", "c"], ["d"], models, SimpleNamespace(), None, lambda: None)
    assert agg == {"ridge": b"sums"} and out == ("f", "z", "y", [])
    plan = fit.spine.ActorPlan.resolve(None)
    assert pools["train"] is plan  # the training pool as planned, the held-out one beside it
    assert pools["held"] == dataclasses.replace(plan, n_actors=1)


def test_without_room_the_passes_run_one_after_the_other(monkeypatch, models, stub):
    plan = _cluster(monkeypatch, n_actors=2, cpus=16.0, gpus=1.0, cpus_per_actor=1.0, gpus_per_actor=0.5)
    order = []

    def stream(shards, models, cfg, ap):
        order.append(("train", ap))
        return _Stream({"ridge": b"sums"})

    def held(held, models, cfg, ap, abort, counter=None):
        order.append(("held", ap))
        return ("f", "z", "y", [])

    monkeypatch.setattr(fit, "feature_stream", stream)
    monkeypatch.setattr(fit, "held_out", held)
    agg, out = fit.both_passes(["a"] * 9, ["b"], models, SimpleNamespace(), None, lambda: None)
    assert agg == {"ridge": b"sums"} and out[0] == "f"
    assert order == [("train", plan), ("held", plan)]  # each the plan's pool, one after the other


@pytest.mark.parametrize("n_actors, nodes, cpa, gpa, share, expected", [
    (1, [(2.0, 0.0)], 0.5, 0.0, 0.25, 1),  # the 2-core CPU: 0.5 + 0.5 + one read task
    (1, [(1.0, 0.0)], 0.5, 0.0, 0.25, None),  # no CPU left for the read task
    (2, [(16.0, 1.0)], 1.0, 0.5, 0.1, None),  # one GPU, two actors on it: full
    (16, [(128.0, 8.0)], 1.0, 0.5, 0.1, None),  # every GPU taken by the training pool
    (2, [(64.0, 8.0)], 1.0, 1.0, 0.1, 1),  # --num-actors 2 on eight GPUs: room
    (10, [(64.0, 16.0)], 1.0, 1.0, 0.25, 3),  # a quarter of ten, rounded up
    # per node, as Ray places actors: enough CPUs and GPUs in all, but the CPUs are on one
    # node and the GPUs on the other, whose one CPU holds one actor only
    (1, [(2.0, 0.0), (1.0, 2.0)], 1.0, 1.0, 0.5, None),
    (1, [(2.0, 0.0), (2.0, 2.0)], 1.0, 1.0, 0.5, 1),  # two actors on the GPU node, the read on the other
])
def test_held_out_pool(n_actors, nodes, cpa, gpa, share, expected):
    from pipelines.jobs.spine import ActorPlan
    from pipelines.stages.capacity import Node

    nodes = [Node(f"n{i}", c, g) for i, (c, g) in enumerate(nodes)]
    assert fit.held_out_pool(ActorPlan(n_actors, 1, gpa, cpa, None), share, nodes) == expected


def test_a_failed_held_out_stream_stops_the_training_pass_and_is_the_error(monkeypatch, models, stub):
    release = threading.Event()
    monkeypatch.setattr(fit, "feature_stream", lambda *a, **k: _Stream({"ridge": b""}, release=release))

    def held(*a, **k):
        time.sleep(0.1)
        raise ValueError("corrupt held-out shard")

    monkeypatch.setattr(fit, "held_out", held)
    t0 = time.monotonic()
    try:
        with pytest.raises(ValueError, match="corrupt held-out shard"):
            fit.both_passes(["a"], ["b"], models, SimpleNamespace(), None, lambda: None)
        assert time.monotonic() - t0 < 10  # not the 30 s the training pass would have taken
    finally:
        release.set()


def test_a_failed_training_pass_stops_the_held_out_stream(monkeypatch, models, stub):
    seen = []
    monkeypatch.setattr(fit, "feature_stream", lambda *a, **k: _Stream(error=RuntimeError("bad aggregation")))
    monkeypatch.setattr(fit, "held_out", _held_waiting_for_abort(seen))
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="bad aggregation"):
        fit.both_passes(["a"], ["b"], models, SimpleNamespace(), None, lambda: None)
    assert seen == ["the training pass failed"] and time.monotonic() - t0 < 10


def test_a_lost_node_reaches_both_passes_as_a_restartable_error(monkeypatch, models, stub):
    """The spine's abort (a node died) ends both passes with NodeLost, which spine.retry
    restarts; the held-out's stop must not mask it."""
    seen, lost = [], threading.Event()
    release = threading.Event()
    monkeypatch.setattr(fit, "feature_stream", lambda *a, **k: _Stream({"ridge": b""}, release=release))
    monkeypatch.setattr(fit, "held_out", _held_waiting_for_abort(seen))
    threading.Timer(0.3, lost.set).start()
    try:
        with pytest.raises(NodeLost, match="node n1 died"):
            fit.both_passes(["a"], ["b"], models, SimpleNamespace(), None,
                             lambda: "node n1 died" if lost.is_set() else None)
        assert seen == ["node n1 died"]
    finally:
        release.set()
