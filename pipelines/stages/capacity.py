"""Can the cluster place a stream's model actors now? Compared per node, as Ray places them:
an actor's CPUs and GPUs must all fit on one node, and wherever the actors land (Ray Data
spreads them) some node must keep a CPU for a read task. A pool that cannot be placed is not started (Ray Data would wait for it forever, "may
hang forever"): the run waits a bounded time (--resource-wait) for nodes to come back, runs
a smaller pool when only that fits, or ends with exit 1 saying what is missing.

    alive_nodes()            each alive node's total CPUs and GPUs, from Ray's node table
    actors_that_fit(...)     how many actors of one shape the nodes surely hold beside a read task
    shortage(plan, nodes)    what a plan needs that the cluster lacks, in words
    RunCapacity              one run's guard: spine.retry makes it; ActorPlan.resolve asks it
                             to place each attempt's plan (wait, shrink, or Unplaceable)
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from typing import Callable

from pipelines.errors import RunFailed

log = logging.getLogger("sing.capacity")

EPS = 1e-6  # Ray keeps resources in units of 1e-4: this only absorbs float error
READ_CPUS = 1.0  # a read task's num_cpus (spine.stream)


class Unplaceable(RunFailed):
    """The model actors could not be placed within --resource-wait: the run ends (exit 1)."""


@dataclass(frozen=True)
class Node:
    address: str
    cpus: float
    gpus: float


def alive_nodes() -> list[Node]:
    import ray

    return [Node(n.get("NodeManagerAddress", "?"), float(n["Resources"].get("CPU", 0.0)),
                 float(n["Resources"].get("GPU", 0.0))) for n in ray.nodes() if n.get("Alive")]


def _on_node(cpus: float, gpus: float, cpa: float, gpa: float) -> int:
    """Actors of cpa CPUs and gpa GPUs one node of `cpus` and `gpus` holds."""
    counts = [math.floor((have + EPS) / need) for have, need in ((cpus, cpa), (gpus, gpa)) if need > 0]
    return max(0, min(counts)) if counts else 1 << 30


def _starved_by(cpus: float, cpa: float, read_cpus: float) -> int:
    """How many actors of cpa CPUs leave a node of `cpus` without `read_cpus` free."""
    if cpus + EPS < read_cpus:
        return 0
    return math.floor((cpus - read_cpus) / cpa + EPS) + 1 if cpa > 0 else 1 << 30


def actors_that_fit(nodes: list[Node], cpus_per_actor: float, gpus_per_actor: float,
                    read_cpus: float = READ_CPUS) -> int:
    """The most actors of one shape the nodes hold such that, wherever Ray puts them, some
    node keeps `read_cpus` free for a read task. Ray Data creates its actors with the SPREAD
    strategy, so the packing cannot be chosen: e.g. two half-CPU actors on two 1-CPU nodes
    go one per node and leave no whole CPU, so only one fits there."""
    held = [_on_node(n.cpus, n.gpus, cpus_per_actor, gpus_per_actor) for n in nodes]
    starved = [_starved_by(n.cpus, cpus_per_actor, read_cpus) for n in nodes]
    if not nodes or not any(starved):
        return 0
    if any(s > h for s, h in zip(starved, held)):  # a node that always keeps a read task's CPU
        return sum(held)
    return min(sum(held), sum(starved) - 1)


def per_model_that_fit(plan, nodes: list[Node]) -> int:
    """Actors per model that fit: every model of a chain has a pool of the same shape."""
    return actors_that_fit(nodes, plan.cpus_per_actor, plan.gpus_per_actor) // max(1, plan.n_models)


def _nodes_in_words(nodes: list[Node]) -> str:
    if not nodes:
        return "no node is alive"
    shown = ", ".join(f"{n.address} {n.cpus:g} CPU {n.gpus:g} GPU" for n in nodes[:4])
    return f"{len(nodes)} alive node{'s' * (len(nodes) != 1)}: {shown}{', ...' if len(nodes) > 4 else ''}"


def shortage(plan, nodes: list[Node]) -> str:
    """What `plan` needs that `nodes` lack, e.g. "needs 8 GPU for the model actors, the
    cluster has 0"."""
    k = plan.n_actors * max(1, plan.n_models)
    cpus, gpus = sum(n.cpus for n in nodes), sum(n.gpus for n in nodes)
    words = []
    if plan.gpus_per_actor > 0 and k * plan.gpus_per_actor > gpus + EPS:
        words.append(f"needs {k * plan.gpus_per_actor:g} GPU for the model actors, the cluster has {gpus:g}")
    if k * plan.cpus_per_actor + READ_CPUS > cpus + EPS:
        words.append(f"needs {k * plan.cpus_per_actor:g} CPU for the model actors and {READ_CPUS:g} for a read "
                     f"task, the cluster has {cpus:g}")
    if not words:  # enough in total, but not on one node
        gpu = f" and {plan.gpus_per_actor:g} GPU" if plan.gpus_per_actor else ""
        words.append(f"each model actor needs {plan.cpus_per_actor:g} CPU{gpu} on one node and a read task "
                     f"{READ_CPUS:g} CPU; the nodes hold {actors_that_fit(nodes, plan.cpus_per_actor, plan.gpus_per_actor)}"
                     f" of the {k} actors")
    return f"{'; '.join(words)} ({_nodes_in_words(nodes)})"


class RunCapacity:
    """One run's guard over its actor pools, across attempts (spine.retry makes it and
    ActorPlan.resolve asks it, through placed()):

    - a plan that fits is returned as is; one of which only fewer actors fit is shrunk to
      those (logged, and recorded in the attempt's record);
    - one of which nothing fits waits up to `wait_s`, looking again every `poll_s`, then
      raises Unplaceable;
    - the first plan pins GPU use: once a run's actors used GPUs, a later attempt waits for
      GPUs instead of falling back to CPUs (or, with --device cuda, reporting an input
      error that is really a lost node);
    - once placed, the attempt's node monitor starts afresh, so a node lost while waiting
      does not end the attempt that the cluster can now run."""

    def __init__(self, what: str, wait_s: float, poll_s: float = 1.0):
        self.what, self.wait_s, self.poll_s = what, wait_s, poll_s
        self.first = None  # the first plan placed
        self.record: dict | None = None
        self.monitor = None

    def attempt(self, record: dict, monitor) -> None:
        self.record, self.monitor = record, monitor

    def _size(self, size: Callable):
        """size(), or None when the run's actors used GPUs and the cluster has none now."""
        pinned = self.first is not None and self.first.gpus_per_actor > 0
        try:
            plan = size()
        except ValueError:  # --device cuda on a cluster without GPUs
            if not pinned:
                raise  # before any actor used a GPU: an input error (exit 2)
            return None
        return None if pinned and plan.gpus_per_actor == 0 else plan

    def place(self, size: Callable):
        t0, said = time.monotonic(), None
        while True:
            plan, nodes = self._size(size), alive_nodes()
            fit = per_model_that_fit(plan, nodes) if plan is not None else 0
            if fit >= 1:
                return self._placed(plan, fit, time.monotonic() - t0)
            missing = shortage(plan or self.first, nodes)
            waited = time.monotonic() - t0
            if waited >= self.wait_s:
                if self.record is not None:
                    self.record["resources"] = {"waited_s": round(waited, 1), "missing": missing}
                raise Unplaceable(f"{self.what}: the cluster cannot place the model actors: {missing}; waited "
                                  f"{waited:.0f} s (--resource-wait) for nodes to come back")
            if missing != said:
                log.warning("%s: the cluster cannot place the model actors: %s; waiting up to %.0f s for nodes "
                            "(--resource-wait)", self.what, missing, self.wait_s - waited)
                said = missing
            time.sleep(min(self.poll_s, max(0.0, self.wait_s - waited)))

    def _placed(self, plan, fit: int, waited: float):
        note = {"waited_s": round(waited, 1)} if waited >= self.poll_s else {}
        if fit < plan.n_actors:
            log.warning("%s: the cluster has room for %d of the %d model actors per model (%s); running the smaller "
                        "pool", self.what, fit, plan.n_actors, shortage(plan, alive_nodes()))
            note.update(actors_planned=plan.n_actors, actors_placed=fit)
            plan = dataclasses.replace(plan, n_actors=fit)
        elif waited >= self.poll_s:
            log.info("%s: the cluster can place the model actors again after %.0f s", self.what, waited)
        if note and self.record is not None:
            self.record["resources"] = note
        self.first = self.first or plan
        if self.monitor is not None:
            self.monitor.rebase()  # nodes lost before the pool was placed end nothing
        return plan


_active: list[RunCapacity] = []


@contextlib.contextmanager
def active(run: RunCapacity):
    """`run` guards the plans resolved inside the block (spine.retry's attempts)."""
    _active.append(run)
    try:
        yield run
    finally:
        _active.remove(run)


def placed(size: Callable):
    """size()'s actor plan, placed by the run in progress (waited for, or shrunk); outside a
    run (a benchmark's single stream) as sized."""
    return _active[-1].place(size) if _active else size()
