"""Run by tests/test_healing.py in its own process: a Ray cluster of a driver-only head and two
2-CPU workers on this machine (ray.cluster_utils.Cluster); each job is submitted as a `sing`
driver process (as `ray job submit` would) and the worker node running its model actors is
killed mid-run. The same process must heal (restart over the shards not yet written) and exit
0. Last, every worker is killed: the head (no CPUs) cannot place the model actors, and the
run must end with exit 1 after --resource-wait, saying so.
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


def _busy() -> bool:
    """Some of the workers' CPUs are taken: the job's stream (read tasks, model actors) runs."""
    import ray

    return ray.available_resources().get("CPU", 0.0) < ray.cluster_resources().get("CPU", 0.0) - 0.25


def _kill_during(cluster, workers: dict, p: subprocess.Popen, ready) -> dict:
    """Kill a worker node while the job's stream runs and ready() holds (e.g. the first shard
    is on disk): the run must notice the node's death and restart."""
    deadline = time.time() + 240
    while not (ready() and _busy()) and p.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    still_running = p.poll() is None
    cluster.remove_node(workers.pop(next(iter(workers))), allow_graceful=False)
    log, _ = p.communicate(timeout=300)
    return {"rc": p.returncode, "killed_while_running": still_running, "log": log[-3000:]}


def main(root: str, shards: str, translator: str, model: str, clip: str) -> None:
    import ray
    from ray.cluster_utils import Cluster

    # fast health checks: the GCS marks a killed node dead within ~2 s (Ray's defaults take
    # 15-30 s, in which Ray Data often recovers by itself and nothing is left to heal)
    fast = {"health_check_initial_delay_ms": 500, "health_check_period_ms": 500, "health_check_timeout_ms": 500,
            "health_check_failure_threshold": 2}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False,
                                                            "_system_config": fast})
    workers = {}

    def add_worker():
        w = cluster.add_node(num_cpus=2)
        workers[w.node_id] = w

    add_worker(), add_worker()
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    out, rep = Path(root) / "out", {}
    common = ["--shards", shards, "--batch-size", "4", "--stall-timeout", "20", "--max-attempts", "3"]

    def first_file(table: str, run: str):
        return lambda: any((out / table).glob(f"model=*/run={run}/*.parquet"))

    # kill a worker as soon as each job's stream runs (its model actors still starting or scoring):
    # the run cannot have finished before the death is noticed, so it must restart
    jobs = {
        "audit": (["-q", "audit", "--model", model, "--translator", translator, "--out", str(out), "--run-id", "heal"],
                  lambda: True),
        "steer": (["-q", "steer", "--model", model, "--translator", translator, "--out", str(out), "--run-id",
                   "heal-steer", "--class", "0", "--prompt", "a photo", "--eps", "1.0"],
                  lambda: True),
        "index": (["-q", "index", "--clip", clip, "--out", str(out / "index")],
                  lambda: True),
        # the fit has no per-shard files: kill once its stream runs
        "fit": (["-q", "fit-translator", "--model", model, "--clip", clip, "--out", str(out / "fit.safetensors")],
                lambda: True),
    }
    for name, (args, ready) in jobs.items():
        t0 = time.time()
        p = _sing(cluster.address, *args, *common)
        rep[name] = _kill_during(cluster, workers, p, ready)
        add_worker()
        cluster.wait_for_nodes()
        rep[name]["seconds"] = round(time.time() - t0, 1)

    # no capacity left at all: exit 1 after --resource-wait, with a clear message (3 attempts: the
    # GCS may see the two workers die one at a time, each ending an attempt)
    p = _sing(cluster.address, "-q", "audit", "--model", model, "--translator", translator, "--out", str(out),
              "--run-id", "all-lost", *common[:4], "--stall-timeout", "30", "--max-attempts", "3",
              "--resource-wait", "3")
    deadline = time.time() + 240
    while not first_file("images", "all-lost")() and p.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    for w in list(workers.values()):
        cluster.remove_node(w, allow_graceful=False)
    log, _ = p.communicate(timeout=300)
    # Ray's own lines (raylet warnings about the dead nodes) may follow ours: keep ours
    rep["all_lost"] = {"rc": p.returncode, "log": "\n".join(ln for ln in log.splitlines() if ln.startswith("sing "))
                       or log[-3000:]}
    print("RESULT " + json.dumps(rep), flush=True)
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:6])
