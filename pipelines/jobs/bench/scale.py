"""`sing bench-scale`: can one driver feed many GPUs? The audit's real stream, with stand-in
model actors (pipelines.jobs.bench.standin: realistic rows at a chosen rate, no forward pass),
on a multi-node Ray cluster on this machine (ray.cluster_utils.Cluster), no GPU needed.

For each size (default 1x and 10x the images), a fresh driver process joins the cluster,
plans the run, streams tiny-JPEG shards through the read stage and K chained stand-in models
(several models per decode pass), writes every result row as the audit does, and measures
its own process only:
  - driver CPU-seconds per 1,000 images, from its own CPU time between the first and the last
    result reaching it (start-up excluded);
  - the sustained images/s over the same span;
  - the largest images/s the driver could carry (one core fully busy: 1 / CPU per image),
    and what 8 and 64 GPUs would ask of it at --gpu-rate images/s per GPU and model;
  - its peak memory while streaming (RSS), 1x against 10x.
Prints ratios last.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

CHILD_PREFIX = "SCALE "


@dataclass
class ScaleConfig:
    images: int = 20_000  # the 1x run
    sizes: tuple = (1, 10)  # multiples of `images`, each in a fresh driver
    per_shard: int = 1000
    models: int = 2  # stand-in models per decode pass
    concepts: int = 182  # the default vocabulary's size
    rate: float = 0.0  # images/s per stand-in actor (0: as fast as it goes)
    nodes: int = 3  # worker nodes of the local cluster
    cpus_per_node: float = 1.0
    actors: int = 1  # actors per model
    batch_size: int = 256
    shards_per_task: tuple = (1,)  # each value a run of its own (1x and 10x each), compared
    throttled: float = 0.0  # > 0: per K, one more run of the largest size at this rate, to split the CPU
    gpu_rate: float = 12_000.0  # images/s per GPU and model (ResNet50 bf16 on one H100: docs/bench)
    work: str | None = None


# ----------------------------------------------------------------------------- data


def tiny_jpeg() -> bytes:
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def scale_shards(work: Path, n_images: int, per_shard: int) -> list[str]:
    """Shards of one tiny JPEG repeated under new keys (decoding costs microseconds, so the
    stream is as fast as the machinery around the model allows), labels spread over 1000
    classes. Made once per size."""
    from pipelines.jobs.make_shards import _write_tar

    d = work / f"shards_{n_images}_{per_shard}"
    if not (d / ".complete").exists():
        d.mkdir(parents=True, exist_ok=True)
        jpg = tiny_jpeg()
        for s in range(0, n_images, per_shard):
            members = []
            for i in range(s, min(n_images, s + per_shard)):
                members += [(f"img{i:08d}.jpg", jpg), (f"img{i:08d}.cls", str(i * 7919 % 1000).encode())]
            _write_tar(str(d / f"scale-{s // per_shard:06d}.tar"), members)
        (d / ".complete").write_text("")
    return sorted(str(p) for p in d.glob("*.tar"))


# ----------------------------------------------------------------------------- the driver (child)


class DriverProbe:
    """This process's CPU time, wall time and images at the first and the last result; its RSS
    sampled while the stream runs."""

    def __init__(self):
        import psutil

        self.proc = psutil.Process(os.getpid())
        self.first = self.last = None
        self.images = 0
        self.peak_rss = 0
        self._stop = threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    def _cpu(self) -> float:
        t = self.proc.cpu_times()
        return t.user + t.system

    def _sample(self):
        while not self._stop.wait(0.5):  # the probe's own cost stays small
            self.peak_rss = max(self.peak_rss, self.proc.memory_info().rss)

    def add(self, n_images: int) -> None:
        """A result of n_images arrived. The span from the first arrival to the last covers
        the driver's work on every result before the last one."""
        now = (time.perf_counter(), self._cpu(), self.images)
        if self.first is None:
            self.first = now
        self.last = now
        self.images += n_images

    def result(self) -> dict:
        self._stop.set()
        if self.first is None or self.last[2] <= self.first[2]:
            return {"images": self.images}
        n = self.last[2] - self.first[2]
        cpu, wall = self.last[1] - self.first[1], self.last[0] - self.first[0]
        return {"images": self.images, "measured_images": n, "driver_cpu_s": round(cpu, 4),
                "wall_s": round(wall, 4), "cpu_us_per_image": cpu / n * 1e6, "images_per_s": n / wall if wall else None,
                "peak_rss_mb": round(self.peak_rss / 2**20, 1)}


def run_driver(shards: list[str], out: str, models: int, concepts: int, rate: float, actors: int,
               batch_size: int, shards_per_task: int = 1) -> dict:
    """One audit-shaped run with stand-in models, in this process (a driver joining
    RAY_ADDRESS)."""
    from pipelines.jobs import spine
    from pipelines.jobs.bench.standin import StandInActor
    from pipelines.jobs.bench.scale_stream import scale_stream

    probe = DriverProbe()
    stats = scale_stream(shards, out, models, concepts, actors, batch_size, shards_per_task, probe,
                         lambda i, view, writer: spine.ActorSpec(StandInActor, {
                             "prefix": f"m{i}", "view": view, "n_concepts": concepts, "rate": rate, "seed": i,
                             "writer": writer}))
    return {**probe.result(), **stats}


def child_main(argv: list[str]) -> None:
    rc = 1
    try:
        res = run_driver(**json.loads(argv[0]))
        print(CHILD_PREFIX + json.dumps(res), flush=True)
        rc = 0
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)  # like `sing`: no interpreter teardown


# ----------------------------------------------------------------------------- the bench (parent)


def _cluster(cfg: ScaleConfig):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    for _ in range(cfg.nodes):
        cluster.add_node(num_cpus=cfg.cpus_per_node)
    cluster.wait_for_nodes()
    return cluster


def _child(cluster, cfg: ScaleConfig, shards: list[str], out: str, per_task: int, rate: float) -> dict:
    args = {"shards": shards, "out": out, "models": cfg.models, "concepts": cfg.concepts, "rate": rate,
            "actors": cfg.actors, "batch_size": cfg.batch_size, "shards_per_task": per_task}
    env = {**os.environ, "RAY_ADDRESS": cluster.address, "SING_DERIVED_CACHE": "0"}
    proc = subprocess.run([sys.executable, "-m", "pipelines.jobs.bench.scale", json.dumps(args)], env=env,
                          capture_output=True, text=True, timeout=3600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(CHILD_PREFIX)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"bench-scale driver failed (exit {proc.returncode}): {proc.stderr[-3000:]}")
    return json.loads(lines[-1][len(CHILD_PREFIX):])


def split_driver_cpu(free: dict, throttled: dict) -> tuple[float, float]:
    """(a, b) of driver CPU = a * wall + b * images from two runs of the same images, one
    free-running and one with throttled stand-ins (a longer wall): a, the share of a core that
    Ray Data's executor spends whatever flows (polling); b, CPU-seconds per image (per-task
    and per-record work). At r images/s the driver then needs a + r * b cores."""
    dw = throttled["wall_s"] - free["wall_s"]
    if dw <= 0:
        raise ValueError("the throttled run must take longer than the free-running one")
    a = max(0.0, (throttled["driver_cpu_s"] - free["driver_cpu_s"]) / dw)
    b = max(0.0, (free["driver_cpu_s"] - a * free["wall_s"]) / free["measured_images"])
    return a, b


def format_results(cfg: ScaleConfig, runs: dict[tuple[int, int], dict], throttled: dict | None = None) -> list[str]:
    """runs: {(shards per task, size multiple): result}; throttled: {shards per task: result of
    the largest size with throttled stand-ins}, or None."""
    lines = [f"{'images':>9} {'shards':>6} {'per task':>8} {'driver CPU s/1k img':>20} {'us/img':>8} {'ms/task':>8} "
             f"{'img/s':>9} {'driver max img/s':>17} {'peak RSS MB':>12}"]
    for (k, mult), r in runs.items():
        us = r["cpu_us_per_image"]
        lines.append(f"{r['images']:>9,} {r['shards']:>6} {k:>8} {us / 1e3:>20.4f} {us:>8.1f} "
                     f"{us * cfg.per_shard * k / 1e3:>8.1f} {r['images_per_s']:>9,.0f} {1e6 / us:>17,.0f} "
                     f"{r['peak_rss_mb']:>12.1f}")
    lines.append(f"per image: {cfg.models} models x ({cfg.concepts} concepts + 1 image row); "
                 f"GPU rate {cfg.gpu_rate:,.0f} img/s per GPU and model")
    sizes = sorted({m for _, m in runs})
    for k in dict.fromkeys(k for k, _ in runs):
        mine = {m: runs[(k, m)] for m in sizes if (k, m) in runs}
        us = max(r["cpu_us_per_image"] for r in mine.values())  # the costlier size
        for gpus in (8, 64):
            need = gpus * cfg.gpu_rate / cfg.models  # images/s: each image takes one forward per model
            cores = need * us / 1e6
            lines.append(f"{k} shard(s) per task, {gpus:>3} GPUs: {need:,.0f} img/s ask {cores:.3f} driver cores "
                         f"({'within one core' if cores <= 1 else 'more than one driver core: the driver limits'})")
        if throttled and k in throttled:
            a, b = split_driver_cpu(mine[max(mine)], throttled[k])
            lines.append(f"{k} shard(s) per task, split: {100 * a:.1f}% of a core whatever flows + {b * 1e6:.1f} us "
                         f"per image (throttled at {cfg.throttled:g} img/s per actor)")
            for gpus in (8, 64):
                need = gpus * cfg.gpu_rate / cfg.models
                lines.append(f"{k} shard(s) per task, {gpus:>3} GPUs, from the split: {need:,.0f} img/s ask "
                             f"{a + need * b:.3f} driver cores")
        lo, hi = mine[min(mine)], mine[max(mine)]
        lines.append(f"ratio, {k} shard(s) per task: peak driver RSS {max(mine)}x/{min(mine)}x = "
                     f"{hi['peak_rss_mb'] / lo['peak_rss_mb']:.2f}; driver CPU per image {max(mine)}x/{min(mine)}x = "
                     f"{hi['cpu_us_per_image'] / lo['cpu_us_per_image']:.2f}")
    base = [k for k, _ in runs][0]
    for k in dict.fromkeys(k for k, _ in runs):
        if k != base:
            for m in sizes:
                if (k, m) in runs and (base, m) in runs:
                    lines.append(f"ratio: driver CPU per image, {k} vs {base} shard(s) per task at {m}x = "
                                 f"{runs[(k, m)]['cpu_us_per_image'] / runs[(base, m)]['cpu_us_per_image']:.2f}")
    return lines


def bench_scale(cfg: ScaleConfig) -> dict:
    work = Path(cfg.work or tempfile.mkdtemp(prefix="sing-scale-"))
    cluster = _cluster(cfg)
    runs, throttled = {}, {}
    try:
        for k in cfg.shards_per_task:
            for mult in cfg.sizes:
                shards = scale_shards(work, cfg.images * mult, cfg.per_shard)
                out = str(work / f"out_{k}_{mult}_{time.time_ns()}")
                runs[(k, mult)] = {**_child(cluster, cfg, shards, out, k, cfg.rate), "shards": len(shards)}
                print(f"{k} per task, {mult}x: {json.dumps(runs[(k, mult)])}", flush=True)
            if cfg.throttled > 0:
                mult = max(cfg.sizes)
                shards = scale_shards(work, cfg.images * mult, cfg.per_shard)
                out = str(work / f"out_{k}_{mult}_throttled_{time.time_ns()}")
                throttled[k] = {**_child(cluster, cfg, shards, out, k, cfg.throttled), "shards": len(shards)}
                print(f"{k} per task, {mult}x throttled: {json.dumps(throttled[k])}", flush=True)
    finally:
        cluster.shutdown()
    for line in format_results(cfg, runs, throttled):
        print(line)
    return {"config": asdict(cfg), "runs": {f"{k}x{m}": r for (k, m), r in runs.items()},
            "throttled": {str(k): r for k, r in throttled.items()}}


def cli_args(p) -> None:
    d = ScaleConfig()
    p.add_argument("--images", type=int, default=d.images, help="images of the 1x run")
    p.add_argument("--sizes", type=int, nargs="+", default=list(d.sizes), help="multiples of --images to run")
    p.add_argument("--per-shard", type=int, default=d.per_shard, help="images per shard")
    p.add_argument("--models", type=int, default=d.models, help="stand-in models per decode pass")
    p.add_argument("--concepts", type=int, default=d.concepts, help="concept angles per image and model")
    p.add_argument("--rate", type=float, default=d.rate, help="images/s per stand-in actor (0: no wait)")
    p.add_argument("--nodes", type=int, default=d.nodes, help="worker nodes of the local cluster")
    p.add_argument("--cpus-per-node", type=float, default=d.cpus_per_node, help="CPUs of each worker node")
    p.add_argument("--actors", type=int, default=d.actors, help="stand-in actors per model")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="images per actor batch")
    p.add_argument("--shards-per-task", type=int, nargs="+", default=list(d.shards_per_task),
                   help="shards per read/actor task (the audit's --shards-per-task); several values: a run each, "
                        "compared")
    p.add_argument("--throttled", type=float, default=d.throttled,
                   help="images/s per stand-in actor of one more run per K at the largest size: splits the driver's "
                        "CPU into a time-based part and a per-image part, and extrapolates from the split")
    p.add_argument("--gpu-rate", type=float, default=d.gpu_rate, help="images/s one GPU scores per model, for "
                                                                       "the 8- and 64-GPU extrapolation")
    p.add_argument("--work", help="keep shards and outputs here (default: a temporary directory)")


def cli_run(a) -> int:
    cfg = ScaleConfig(images=a.images, sizes=tuple(a.sizes), per_shard=a.per_shard, models=a.models,
                      concepts=a.concepts, rate=a.rate, nodes=a.nodes, cpus_per_node=a.cpus_per_node,
                      actors=a.actors, batch_size=a.batch_size, shards_per_task=tuple(a.shards_per_task), throttled=a.throttled,
                      gpu_rate=a.gpu_rate, work=a.work)
    bench_scale(cfg)
    return 0


if __name__ == "__main__":
    child_main(sys.argv[1:])
