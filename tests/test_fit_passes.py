"""The fit's training aggregation and held-out stream run at once (pipelines.jobs.fit
._both_passes): both results come back, each pass gets its shards' share of the actors, and
either failing stops the other promptly with the cause raised (not the stop it caused).
The Ray Data streams are replaced by stand-ins; the real passes run in test_pipeline and
test_healing."""
from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from pipelines.jobs import fit
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
    return SimpleNamespace(num_features=4), SimpleNamespace(embed_dim=3)


@pytest.fixture
def stub(monkeypatch):
    calls = {}
    monkeypatch.setattr(fit, "_ridge_aggregation", lambda m, d, counter=None: ("agg", m, d))
    return calls


def _held_waiting_for_abort(seen):
    """A held-out pass that runs until told to stop, as with_stall_timeout does."""
    def held(held, clf, clip, cfg, abort, counter=None, share_of_pool=1.0):
        t0 = time.monotonic()
        while time.monotonic() - t0 < 20:
            why = abort()
            if why:
                seen.append(why)
                raise NodeLost(why)
            time.sleep(0.05)
        return "held-out finished"
    return held


def test_both_results_and_the_actor_shares(monkeypatch, models, stub):
    shares = {}

    def stream(shards, clf, clip, cfg, share_of_pool=1.0):
        shares["train"] = share_of_pool
        return _Stream({"ridge": b"sums"})

    def held(held, clf, clip, cfg, abort, counter=None, share_of_pool=1.0):
        shares["held"] = share_of_pool
        return ("f", "z", "y", [])

    monkeypatch.setattr(fit, "_feature_stream", stream)
    monkeypatch.setattr(fit, "_held_out", held)
    agg, out = fit._both_passes(["a", "b", "c"], ["d"], *models, SimpleNamespace(), None, lambda: None)
    assert agg == {"ridge": b"sums"} and out == ("f", "z", "y", [])
    assert shares == {"train": 0.75, "held": 0.25}


def test_a_failed_held_out_stream_stops_the_training_pass_and_is_the_error(monkeypatch, models, stub):
    release = threading.Event()
    monkeypatch.setattr(fit, "_feature_stream", lambda *a, **k: _Stream({"ridge": b""}, release=release))

    def held(*a, **k):
        time.sleep(0.1)
        raise ValueError("corrupt held-out shard")

    monkeypatch.setattr(fit, "_held_out", held)
    t0 = time.monotonic()
    try:
        with pytest.raises(ValueError, match="corrupt held-out shard"):
            fit._both_passes(["a"], ["b"], *models, SimpleNamespace(), None, lambda: None)
        assert time.monotonic() - t0 < 10  # not the 30 s the training pass would have taken
    finally:
        release.set()


def test_a_failed_training_pass_stops_the_held_out_stream(monkeypatch, models, stub):
    seen = []
    monkeypatch.setattr(fit, "_feature_stream", lambda *a, **k: _Stream(error=RuntimeError("bad aggregation")))
    monkeypatch.setattr(fit, "_held_out", _held_waiting_for_abort(seen))
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="bad aggregation"):
        fit._both_passes(["a"], ["b"], *models, SimpleNamespace(), None, lambda: None)
    assert seen == ["the training pass failed"] and time.monotonic() - t0 < 10


def test_a_lost_node_reaches_both_passes_as_a_restartable_error(monkeypatch, models, stub):
    """The spine's abort (a node died) ends both passes with NodeLost, which spine.retry
    restarts; the held-out's stop must not mask it."""
    seen, lost = [], threading.Event()
    release = threading.Event()
    monkeypatch.setattr(fit, "_feature_stream", lambda *a, **k: _Stream({"ridge": b""}, release=release))
    monkeypatch.setattr(fit, "_held_out", _held_waiting_for_abort(seen))
    threading.Timer(0.3, lost.set).start()
    try:
        with pytest.raises(NodeLost, match="node n1 died"):
            fit._both_passes(["a"], ["b"], *models, SimpleNamespace(), None,
                             lambda: "node n1 died" if lost.is_set() else None)
        assert seen == ["node n1 died"]
    finally:
        release.set()
