"""Placing a run's actor pool on the nodes alive now (pipelines.stages.capacity): per node, as
Ray places actors; a plan that does not fit is waited for (bounded), then ends the run with
what is missing in words; one with room for fewer actors shrinks; GPU use is pinned after
the first attempt. The node table is a stand-in here; tests/test_shrinking.py runs the same
on a real multi-node Ray cluster."""
from __future__ import annotations

import threading
import time

import pytest

from pipelines.jobs.spine import ActorPlan
from pipelines.stages import capacity
from pipelines.stages.capacity import Node, RunCapacity, Unplaceable, actors_that_fit, shortage


def _gpu_plan(n=16, share=0.5, models=1):
    return ActorPlan(n, 4, share, 1.0, None, models)


def _cpu_plan(n=1, models=1):
    return ActorPlan(n, 1, 0.0, 0.5, 2, models)


@pytest.mark.parametrize("nodes, cpa, gpa, expected", [
    ([(2, 0)], 0.5, 0, 2),  # the 2-core CPU: two half-CPU actors and a read task
    ([(1, 0)], 0.5, 0, 0),  # a 1-CPU head alone: the read task takes its CPU
    # two 1-CPU nodes: two actors might be spread one per node, leaving no whole CPU to read
    ([(1, 0), (1, 0)], 0.5, 0, 1),
    ([(1, 0), (2, 0)], 0.5, 0, 3),  # a fourth could leave 0.5 + 0.5 free
    ([(2, 0), (2, 0)], 0.5, 0, 5),
    ([(0, 0), (96, 8)], 1, 0.5, 16),  # a 0-CPU head and one 8-GPU node: 16 actors at 1/2 GPU
    ([(2, 0), (1, 2)], 1, 1, 1),  # CPUs on one node, GPUs on the other: one actor only
    ([(0, 0)], 0.5, 0, 0),  # nothing to run on
    ([], 0.5, 0, 0),
])
def test_actors_that_fit_per_node(nodes, cpa, gpa, expected):
    assert actors_that_fit([Node(f"n{i}", c, g) for i, (c, g) in enumerate(nodes)], cpa, gpa) == expected


def test_shortage_in_words():
    head = [Node("10.0.0.1", 1, 0)]
    assert shortage(_gpu_plan(), head).startswith("needs 8 GPU for the model actors, the cluster has 0; "
                                                  "needs 16 CPU for the model actors and 1 for a read task, "
                                                  "the cluster has 1 (1 alive node: 10.0.0.1 1 CPU 0 GPU)")
    assert shortage(_cpu_plan(models=2), head).startswith(
        "needs 1 CPU for the model actors and 1 for a read task, the cluster has 1")
    split = [Node("a", 2, 0), Node("b", 1, 2)]  # enough in total, not on one node
    assert "each model actor needs 1 CPU and 1 GPU on one node" in shortage(_gpu_plan(2, 1.0), split)
    assert "the nodes hold 1 of the 2 actors" in shortage(_gpu_plan(2, 1.0), split)


class _Table:
    """A stand-in for Ray's node table that a test changes while a run waits."""

    def __init__(self, *nodes):
        self.nodes = list(nodes)

    def __call__(self):
        return list(self.nodes)


class _Monitor:
    rebased = 0

    def rebase(self):
        self.rebased += 1


def _guard(monkeypatch, table, wait_s=5.0):
    monkeypatch.setattr(capacity, "alive_nodes", table)
    guard, rec, mon = RunCapacity("the audit stream", wait_s, poll_s=0.05), {}, _Monitor()
    guard.attempt(rec, mon)
    return guard, rec, mon


def test_a_plan_that_fits_is_placed_as_is(monkeypatch):
    guard, rec, mon = _guard(monkeypatch, _Table(Node("h", 0, 0), Node("w", 96, 8)))
    assert guard.place(_gpu_plan) == _gpu_plan() and rec == {} and mon.rebased == 1


def test_room_for_fewer_actors_shrinks_the_pool(monkeypatch, caplog):
    # --num-actors 3 with two models on a 1-CPU head and a 2-CPU worker: 3 actors at most
    # (4 could leave 0.5 + 0.5 CPUs free), so one per model
    guard, rec, _ = _guard(monkeypatch, _Table(Node("w", 2, 0), Node("h", 1, 0)))
    placed = guard.place(lambda: _cpu_plan(3, models=2))
    assert placed == _cpu_plan(1, models=2)
    assert rec["resources"] == {"actors_planned": 3, "actors_placed": 1}
    assert "room for 1 of the 3 model actors per model" in caplog.text


def test_nothing_placeable_waits_then_ends_the_run_saying_what_is_missing(monkeypatch, caplog):
    guard, rec, mon = _guard(monkeypatch, _Table(Node("10.0.0.1", 1, 0)), wait_s=0.3)
    t0 = time.monotonic()
    with pytest.raises(Unplaceable) as exc:
        guard.place(_cpu_plan)
    assert 0.3 <= time.monotonic() - t0 < 3
    msg = str(exc.value)
    assert msg.startswith("the audit stream: the cluster cannot place the model actors: needs 0.5 CPU for the "
                          "model actors and 1 for a read task, the cluster has 1") and "--resource-wait" in msg
    assert rec["resources"]["missing"].startswith("needs 0.5 CPU") and mon.rebased == 0
    assert "waiting up to" in caplog.text
    assert exc.value.exit_code == 1


def test_a_node_that_comes_back_within_the_wait_is_used(monkeypatch):
    table = _Table(Node("h", 1, 0))
    guard, rec, mon = _guard(monkeypatch, table, wait_s=20)
    threading.Timer(0.4, lambda: table.nodes.append(Node("w", 2, 0))).start()
    t0 = time.monotonic()
    assert guard.place(_cpu_plan) == _cpu_plan()
    assert 0.3 < time.monotonic() - t0 < 10 and rec["resources"]["waited_s"] >= 0.3 and mon.rebased == 1


def test_gpu_use_is_pinned_after_the_first_attempt(monkeypatch):
    """A run whose actors used GPUs waits for GPUs once they are gone: with no --device, the
    sizing would otherwise fall back to CPU actors; with --device cuda it raises the input
    error of a GPU plan on a CPU cluster, which before the first attempt it is (exit 2)."""
    table = _Table(Node("h", 0, 0), Node("gpu", 96, 8))
    guard, rec, _ = _guard(monkeypatch, table, wait_s=0.2)
    gpus = lambda: sum(n.gpus for n in capacity.alive_nodes())  # noqa: E731
    auto = lambda: _gpu_plan() if gpus() else _cpu_plan()  # noqa: E731

    def cuda():
        if not gpus():
            raise ValueError("--device cuda but the Ray cluster has no GPUs")
        return _gpu_plan()

    fresh = RunCapacity("x", 0.2)
    monkeypatch.setattr(capacity, "alive_nodes", _Table(Node("h", 4, 0)))
    with pytest.raises(ValueError, match="no GPUs"):
        fresh.place(cuda)  # nothing ran yet: stays an input error
    monkeypatch.setattr(capacity, "alive_nodes", table)
    assert guard.place(auto) == _gpu_plan()
    table.nodes = [Node("h", 0, 0), Node("cpu", 4, 0)]  # the GPU node was lost, a CPU node is left
    for size in (auto, cuda):
        with pytest.raises(Unplaceable, match="needs 8 GPU for the model actors, the cluster has 0"):
            guard.place(size)


def test_placed_outside_a_run_is_the_plan_as_sized(monkeypatch):
    monkeypatch.setattr(capacity, "alive_nodes", _Table())  # not even looked at
    assert capacity.placed(_cpu_plan) == _cpu_plan()
    guard = RunCapacity("x", 0.0)
    with capacity.active(guard):
        with pytest.raises(Unplaceable):
            capacity.placed(_cpu_plan)
    assert capacity.placed(_cpu_plan) == _cpu_plan()


# ------------------------------------------------------------------------- every job, in-process

@pytest.fixture(scope="module")
def job_data(tmp_path_factory):
    from pipelines.jobs.make_shards import make_shards
    from tests.pipeline_data import CLASSIFIER, photo_folder
    from tests.test_multimodel import random_translator

    root = tmp_path_factory.mktemp("capacity")
    make_shards(str(photo_folder(root / "photos", per_class=2)), str(root / "shards"), per_shard=3)
    return root, str(root / "shards" / "*.tar"), str(random_translator(CLASSIFIER, root / "t.safetensors"))


def _job_args(name: str, root, shards: str, tr: str) -> list[str]:
    from tests.pipeline_data import CLASSIFIER, CLIP

    out = str(root / name)
    return {
        "audit": ["audit", "--model", CLASSIFIER, "--translator", tr, "--out", out],
        "steer": ["steer", "--model", CLASSIFIER, "--translator", tr, "--out", out, "--class", "0", "--prompt",
                  "a photo", "--eps", "1.0"],
        "index": ["index", "--clip", CLIP, "--out", out],
        "fit-translator": ["fit-translator", "--model", CLASSIFIER, "--clip", CLIP, "--out", f"{out}.safetensors"],
    }[name] + ["--shards", shards, "--resource-wait", "0"]


@pytest.mark.parametrize("job", ["audit", "steer", "index", "fit-translator", "nightly"])
def test_every_job_ends_clearly_when_the_cluster_cannot_place_its_actors(job, job_data, ray_session, monkeypatch,
                                                                         capsys, tmp_path):
    """Every shard job resolves its actor plan through the run's capacity guard: on a node
    table of one 1-CPU node (a head whose worker was lost) each ends at once with exit 1, the
    shortage in words and how to resume; the nightly YAML takes `resource_wait` too."""
    from pipelines.cli import main

    root, shards, tr = job_data
    if job == "nightly":
        args = ["nightly", "--config", str(_nightly_config(tmp_path, shards))]
    else:
        args = _job_args(job, root, shards, tr)
    monkeypatch.setattr(capacity, "alive_nodes", _Table(Node("10.0.0.9", 1, 0)))
    assert main(["-q", *args]) == 1
    err = capsys.readouterr().err
    assert "the cluster cannot place the model actors: needs 0.5 CPU for the model actors and 1 for a read task, " \
           "the cluster has 1 (1 alive node: 10.0.0.9 1 CPU 0 GPU)" in err, err
    assert "rerun the same command to resume" in err and err.count("rerun the same command") == 1, err


def _nightly_config(tmp, shards: str):
    import yaml

    from tests.test_nightly import _bases, _checkpoint, _config, _translator

    (tmp / "ckpts").mkdir()
    _translator(tmp / "t.safetensors")
    _checkpoint(tmp / "ckpts" / "e1.safetensors", _bases()[0], 100, seed=1)
    path = _config(tmp, audit={"shards": shards, "batch_size": 8, "resource_wait": 0})
    assert yaml.safe_load(path.read_text())["audit"]["resource_wait"] == 0
    return path


@pytest.mark.parametrize("cpus, models, per_actor", [(2, 1, 0.5), (2, 2, 0.5), (2, 3, 0.3333), (2, 8, 0.125),
                                                     (16, 8, 0.5), (1, 2, 0.5)])
def test_cpu_pools_of_many_models_share_what_the_read_task_leaves(monkeypatch, cpus, models, per_actor):
    """Several models' CPU pools on a small machine: each actor asks for less than half a CPU
    so every model's pool is placed beside a read task (a 3-model audit on 2 cores runs
    instead of waiting for a CPU that never comes)."""
    from types import SimpleNamespace

    from pipelines.stages import ray_session

    monkeypatch.setattr(ray_session, "cluster_cpus", lambda: float(cpus))
    monkeypatch.setattr(ray_session, "actor_gpus", lambda device: 0.0)
    opts = SimpleNamespace(device=None, actors_per_gpu=2, num_actors=None, actor_threads=None, threads=None)
    plan = ActorPlan.sized(opts, models)
    assert plan.cpus_per_actor == per_actor
    fits = capacity.per_model_that_fit(plan, [Node("n", cpus, 0)])
    assert fits >= 1 if cpus >= 2 else fits == 0  # one core alone is the read task's
