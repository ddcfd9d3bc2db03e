"""Run by tests/test_multinode.py in its own process: a 2-node Ray cluster on one machine
(ray.cluster_utils.Cluster), an audit across both nodes, a worker node killed mid-run, a
rerun. Prints one JSON line with what happened."""
from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path


def main(shards: str, translator: str, model: str, out: str) -> None:
    import ray
    from ray.cluster_utils import Cluster

    from pipelines.audit import AuditConfig, run_audit

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    worker = cluster.add_node(num_cpus=2)
    ray.init(address=cluster.address, log_to_driver=False)
    cluster.wait_for_nodes()
    report = {"nodes": len([n for n in ray.nodes() if n["Alive"]])}
    cfg = lambda run_id: AuditConfig(models=[model], translators=[translator], shards=[shards],  # noqa: E731
                                     out=out, run_id=run_id, batch_size=4, progress=False)

    # 1) a clean run across both nodes
    man = run_audit(cfg("two-nodes"))
    report["clean_images"] = sum(c["images"] for c in man["counts"].values())

    # 2) kill the worker node as soon as the first shard of a new run is on disk
    killed = threading.Event()

    def killer():
        first = Path(out) / "images"
        while not killed.is_set():
            if any(first.glob("model=*/run=node-killed/*.parquet")):
                cluster.remove_node(worker, allow_graceful=False)
                killed.set()
                return
            time.sleep(0.05)

    th = threading.Thread(target=killer, daemon=True)
    th.start()
    try:
        run_audit(cfg("node-killed"))
        report["first_attempt"] = "completed"
    except Exception as exc:  # noqa: BLE001 - a lost node may fail the attempt; the rerun must mend it
        report["first_attempt"] = f"failed: {type(exc).__name__}"
    killed.set()
    th.join(timeout=5)
    report["node_was_killed"] = not any(n["NodeID"] == worker.node_id and n["Alive"] for n in ray.nodes())
    cluster.add_node(num_cpus=2)  # capacity comes back, as an autoscaler would bring it
    cluster.wait_for_nodes()
    man = run_audit(cfg("node-killed"))
    report["rerun_skipped"] = man["shards"]["skipped_done"]
    report["rerun_images"] = sum(c["images"] for c in man["counts"].values())
    print("RESULT " + json.dumps(report), flush=True)
    ray.shutdown()
    cluster.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:5])
