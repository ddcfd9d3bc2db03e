"""Run by tests/test_shrinking.py in its own process: a Ray cluster whose head has a CPU, as
real heads do (ray.cluster_utils.Cluster: a 1-CPU head and one 1-CPU worker on this
machine), and one `sing audit` driver process (as `ray job submit` would start it) in one
of these scenarios:

    larger     --num-actors 2: two half-CPU actors could be spread one per node and leave
               no whole CPU for a read task, so the pool shrinks to one and the run finishes
    lost       the only worker is killed once the first shard is on disk: the head alone
               cannot hold an actor beside a read task, so after --resource-wait the run
               ends with exit 1, saying what is missing; then the same command is rerun on
               a new worker and finishes the remaining shards
    back       the same loss, but a new worker joins within --resource-wait: the run finishes
    cuda       --device cuda on this CPU-only cluster: an input error (exit 2)

    python tests/scripts/shrinking_cluster.py SCENARIO ROOT SHARDS TRANSLATOR MODEL

Prints one JSON line: RESULT {...}."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path


def _sing(address: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "RAY_ADDRESS": address}
    return subprocess.Popen([sys.executable, "-m", "pipelines.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _ours(log: str) -> str:
    """sing's own lines (Ray's raylet warnings about dead nodes may come between them)."""
    return "\n".join(ln for ln in log.splitlines() if "sing" in ln and "raylet" not in ln) or log[-3000:]


def _after_first_shard(out: Path, run: str, p: subprocess.Popen, timeout: float = 120) -> bool:
    deadline = time.time() + timeout
    while not any((out / "images").glob(f"model=*/run={run}/*.parquet")) and p.poll() is None:
        if time.time() > deadline:
            return False
        time.sleep(0.05)
    return p.poll() is None


def main(scenario: str, root: str, shards: str, translator: str, model: str) -> None:
    from ray.cluster_utils import Cluster

    # fast health checks: the GCS marks a killed node dead within ~2 s
    fast = {"health_check_initial_delay_ms": 500, "health_check_period_ms": 500, "health_check_timeout_ms": 500,
            "health_check_failure_threshold": 2}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False,
                                                            "_system_config": fast})
    worker = cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    out = Path(root) / "out"
    run = f"shrink-{scenario}"
    args = ["-q", "audit", "--model", model, "--translator", translator, "--out", str(out), "--run-id", run,
            "--shards", shards, "--batch-size", "4", "--stall-timeout", "60"]
    rep: dict = {}
    if scenario == "larger":
        p = _sing(cluster.address, *args, "--num-actors", "2")
    elif scenario == "cuda":
        p = _sing(cluster.address, *args, "--device", "cuda")
    else:
        wait = "60" if scenario == "back" else "3"
        p = _sing(cluster.address, *args, "--resource-wait", wait, "--max-attempts", "3")
        rep["killed_while_running"] = _after_first_shard(out, run, p)
        cluster.remove_node(worker, allow_graceful=False)
        if scenario == "back":
            time.sleep(3)  # the run is waiting for room now
            cluster.add_node(num_cpus=1)
    log, _ = p.communicate(timeout=300)
    rep.update(rc=p.returncode, log=_ours(log))
    if scenario == "lost":  # the same command again, with a worker back: it resumes
        rep["manifest"] = json.loads((out / "runs" / f"{run}.json").read_text())  # the rerun rewrites it
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        p = _sing(cluster.address, *args, "--resource-wait", "3")
        log, _ = p.communicate(timeout=300)
        rep["rerun"] = {"rc": p.returncode, "log": _ours(log)}
    print("RESULT " + json.dumps(rep), flush=True)
    cluster.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:6])
