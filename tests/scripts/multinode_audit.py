"""Run by tests/test_multinode.py in its own process: a 2-node Ray cluster on one machine
(ray.cluster_utils.Cluster), audits submitted to it as `sing audit` driver processes (as
`ray job submit` would), a worker node killed mid-run, a rerun. Prints one JSON line.

Losing a node can make the first attempt fail, finish (Ray retries the lost tasks) or stall
waiting for objects that lived on the dead node; `--stall-timeout` then ends it with exit 1
(and a scheduler's deadline, the RayJob's activeDeadlineSeconds, would kill it otherwise).
The test accepts all of these, as production must: what matters is that the rerun ends
with every key exactly once.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

STALL_TIMEOUT_S = 20  # `sing audit --stall-timeout`: the run ends itself when stuck
STALL_DEADLINE_S = 90  # the scheduler's deadline, should the watchdog not fire


def _audit(address: str, shards: str, translator: str, model: str, out: str, run_id: str,
           *extra: str) -> subprocess.Popen:
    env = {**os.environ, "RAY_ADDRESS": address}
    return subprocess.Popen([sys.executable, "-m", "pipelines.cli", "-q", "audit", "--model", model,
                             "--translator", translator, "--shards", shards, "--out", out,
                             "--run-id", run_id, "--batch-size", "4", *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def main(shards: str, translator: str, model: str, out: str) -> None:
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    report = {"nodes": len([n for n in ray.nodes() if n["Alive"]])}

    # 1) a clean run across both nodes
    p = _audit(cluster.address, shards, translator, model, out, "two-nodes")
    log, _ = p.communicate(timeout=300)
    report["clean_rc"] = p.returncode
    if p.returncode:
        report["clean_log"] = log[-2000:]

    # 2) kill the worker node as soon as the first shard of a new run is on disk
    p = _audit(cluster.address, shards, translator, model, out, "node-killed", "--stall-timeout", str(STALL_TIMEOUT_S))
    first = Path(out) / "images"
    t_end = time.time() + 300
    while not any(first.glob("model=*/run=node-killed/*.parquet")) and p.poll() is None and time.time() < t_end:
        time.sleep(0.05)
    cluster.remove_node(worker, allow_graceful=False)
    report["killed_while_running"] = p.poll() is None
    try:
        log, _ = p.communicate(timeout=STALL_DEADLINE_S)
        report["first_attempt"] = "completed" if p.returncode == 0 else f"failed rc={p.returncode}"
        report["first_attempt_stalled"] = "no result from the audit stream" in log
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        report["first_attempt"] = f"stalled, killed after {STALL_DEADLINE_S}s"
    report["node_was_killed"] = not any(n["NodeID"] == worker.node_id and n["Alive"] for n in ray.nodes())
    report["written_before_rerun"] = len(list(first.glob("model=*/run=node-killed/*.parquet")))

    # 3) capacity comes back (as an autoscaler would bring it) and the same command reruns
    cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    p = _audit(cluster.address, shards, translator, model, out, "node-killed")
    log, _ = p.communicate(timeout=300)
    report["rerun_rc"] = p.returncode
    if p.returncode:
        report["rerun_log"] = log[-2000:]
    man = json.loads((Path(out) / "runs" / "node-killed.json").read_text())
    report["rerun_skipped"] = man["shards"]["skipped_done"]
    report["rerun_images"] = sum(c["images"] for c in man["counts"].values())
    report["clean_images"] = sum(c["images"] for c in json.loads(
        (Path(out) / "runs" / "two-nodes.json").read_text())["counts"].values())
    print("RESULT " + json.dumps(report), flush=True)
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:5])
