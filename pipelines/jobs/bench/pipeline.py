"""`sing bench`: is the pipeline as fast as the model allows, how long does a user wait, and
does it stream?

Measured in one run, on this machine, with the same model, batch size and device throughout,
for each precision asked (default: the default precision and bf16):
  1. bare forward: the classifier on in-memory random tensors, eager and compiled
     (torch.compile, pipelines.models.compiled): the ceiling is the faster of the two, and
     the pipeline runs with the faster one (a compiled model only when it measured >5% ahead);
  2. pipeline: `sing audit` over JPEG shards (read, decode, forward, SING ops, Parquet) as a
     subprocess, for N and 4N images. The time a user waits is the seconds from process start
     to the last row (the audit's timeline); the line through the two runs splits it into a
     fixed cost (the intercept) and the steady rate (3N over the difference: start-up costs
     the same in both runs and cancels out; timing rows as they reach the driver would not,
     Ray Data hands them over in bursts). The 1x run's fixed cost is printed step by step
     (pipelines.jobs.bench.fixed). The stream rate (first result to last) is a one-run estimate;
  3. naive loop: what single-image code does (decode, forward, score, one at a time);
  4. peak memory (PSS, shared pages counted once) of the whole process tree, 1x vs 4x.
Derived caches (head SVD, text embeddings) are warmed first so both runs see the same
(a repeat user's) start; --cold turns them off for both runs (a first run on a node).
Prints ratios last.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from pipelines.jobs.bench.data import bench_shards, bench_translator
from pipelines.jobs.bench.fixed import fixed_cost, floor_split, format_breakdown, format_floor
from pipelines.jobs.bench.forward import bare_forward_rate, naive_loop_rate, peak_pss_of
from pipelines.models.compiled import COMPILE_MODES, torch_mode
from pipelines.models.precision import DEFAULT_PRECISION

COMPILED_AHEAD = 1.05  # a compiled forward must beat eager by this much to run the pipeline


@dataclass
class BenchConfig:
    model: str = "torchvision:resnet50@random"
    images: int | None = None  # the 1x run (default: 192 on CPU, 4096 on CUDA)
    batch_size: int = 32
    out: str | None = None
    device: str | None = None
    decode: str | None = None
    host_decode_share: float = 0.0
    actors_per_gpu: int | None = None
    actor_threads: int | None = None
    buffer_gb: float | None = None
    precisions: tuple = (DEFAULT_PRECISION, "bf16")
    compile: str = "auto"  # the mode raced against eager ("off": eager only)
    cold: bool = False
    naive: bool = True
    floor: bool = True  # the floor run (pipelines.jobs.bench.floor)


@dataclass
class _Ctx:
    cfg: BenchConfig
    clf: object
    device: str
    cuda: bool
    decode: str
    n: int
    threads: int
    work: Path
    tpath: Path
    shards: dict


def _audit_flags(cfg: BenchConfig) -> list[tuple[str, str, object]]:
    """(flag, label, value) of the audit options this bench sets (the rest are the audit's)."""
    return [(flag, label.format(value), value) for flag, label, value in (
        ("--host-decode-share", "host decode share {}", cfg.host_decode_share),
        ("--actors-per-gpu", "{} actors per GPU", cfg.actors_per_gpu),
        ("--actor-threads", "{} threads per actor", cfg.actor_threads),
        ("--buffer-gb", "buffer {} GB", cfg.buffer_gb)) if value]


def _child_env(cfg: BenchConfig) -> dict:
    """The environment of the bench's fresh processes (the audits and the floor)."""
    return {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1",
            **({"SING_DERIVED_CACHE": "0"} if cfg.cold else {})}


def _pipeline_run(ctx: _Ctx, mult: int, precision: str, compile_mode: str) -> dict:
    cfg, res_dir = ctx.cfg, ctx.work / f"results_{precision}_{mult}x"
    cmd = [sys.executable, "-m", "pipelines.cli", "-q", "audit", "--model", cfg.model, "--translator", str(ctx.tpath),
           "--shards", *ctx.shards[mult], "--out", str(res_dir), "--batch-size", str(cfg.batch_size),
           "--run-id", f"bench-{precision}-{mult}x-{int(time.time())}", "--device", ctx.device, "--decode", ctx.decode,
           "--precision", precision, "--compile", compile_mode]
    cmd += [str(x) for flag, _, value in _audit_flags(cfg) for x in (flag, value)]
    env = _child_env(cfg)
    t0 = time.perf_counter()
    peak, rc, tail = peak_pss_of(cmd, env)
    wall = time.perf_counter() - t0
    if rc != 0:
        raise RuntimeError(f"benchmark audit failed (rc {rc}):\n{tail}")
    man = json.loads(sorted((res_dir / "runs").glob("*.json"))[-1].read_text())
    tl = man.get("timeline", {})
    # the process started a little before Popen returned its pid: its own clock wins
    process_wall = max(wall, tl.get("finished", 0.0))
    n = ctx.n * mult
    run = {"images": n, "peak_rss_mb": peak / 2**20, "process_wall_s": process_wall, "manifest": man,
           "to_last_row_s": tl.get("finished", man["wall_seconds"]), "first_result_s": tl.get("first_result")}
    print(f"[bench] {precision} pipeline {mult}x ({n} images): last row {run['to_last_row_s']:.1f} s after process "
          f"start (first result {run['first_result_s'] or float('nan'):.1f} s), process {process_wall:.1f} s, "
          f"{n / run['to_last_row_s']:.2f} img/s end to end, peak PSS {run['peak_rss_mb']:.0f} MiB")
    return run


def _floor(ctx: _Ctx) -> dict:
    """pipelines.jobs.bench.floor over the 1x shards, as a subprocess (a fresh process, like the
    audit's)."""
    import dataclasses
    import subprocess

    from pipelines.jobs.bench.floor import library_imports

    args = {"shards": ctx.shards[1], "view": dataclasses.asdict(ctx.clf.preprocess), "model_spec": ctx.cfg.model,
            "batch_size": ctx.cfg.batch_size, "device": ctx.device, "decode": ctx.decode}
    proc = subprocess.run([sys.executable, "-m", "pipelines.jobs.bench.floor", json.dumps(args)], env=_child_env(ctx.cfg),
                          capture_output=True, text=True, timeout=1800)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("FLOOR ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"benchmark floor failed (rc {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
    floor = {**json.loads(lines[-1][len("FLOOR "):]), "imports": library_imports(ctx.cfg.model)}
    print("[bench] " + format_floor(floor))
    return floor


def _bare(ctx: _Ctx, precision: str, compile_mode: str = "off") -> tuple[float, float]:
    cfg = ctx.cfg
    return bare_forward_rate(ctx.clf, cfg.batch_size, max(ctx.n, 4 * cfg.batch_size), ctx.threads, ctx.device,
                             precision, compile_mode)


def _race(ctx: _Ctx, precision: str) -> dict:
    """Bare eager vs compiled; which one the pipeline runs."""
    eager, _ = _bare(ctx, precision)
    mode = ctx.cfg.compile if torch_mode(ctx.cfg.compile) else None
    compiled, t_compile = _bare(ctx, precision, mode) if mode else (None, 0.0)
    use = mode if compiled and compiled > COMPILED_AHEAD * eager else "off"
    print(f"[bench] {precision} bare forward: eager {eager:.2f} img/s"
          + (f", compiled ({torch_mode(mode)}) {compiled:.2f} img/s after {t_compile:.1f} s compiling" if mode else "")
          + f" -> the pipeline runs {'compiled' if use != 'off' else 'eager'}")
    return {"eager": eager, "compiled": compiled, "compile_seconds": t_compile, "pipeline_compile": use}


def _bench_precision(ctx: _Ctx, precision: str) -> dict:
    race = _race(ctx, precision)
    runs = {mult: _pipeline_run(ctx, mult, precision, race["pipeline_compile"]) for mult in (1, 4)}
    eager_after, _ = _bare(ctx, precision)  # again after the pipeline: a noisy machine shows as two values
    print(f"[bench] {precision} bare forward again: eager {eager_after:.2f} img/s (before: {race['eager']:.2f})")
    eager = (race["eager"] + eager_after) / 2
    fastest = max(eager, race["compiled"] or 0.0)
    fixed, steady = fixed_cost([(r["images"], r["to_last_row_s"]) for r in runs.values()])
    fixed_exit, _ = fixed_cost([(r["images"], r["process_wall_s"]) for r in runs.values()])
    man4 = runs[4]["manifest"]
    stream = man4.get("stream_images_per_second") or float("nan")
    e2e = {m: r["images"] / r["to_last_row_s"] for m, r in runs.items()}
    print(f"[bench] {precision} fixed cost (intercept of the seconds to the last row over the 1x and 4x runs): "
          f"{fixed:.1f} s ({fixed_exit:.1f} s to process exit); steady {steady:.2f} img/s")
    print(f"[bench] {precision} the 1x run's seconds, step by step:")
    for line in format_breakdown(runs[1]["manifest"], runs[1]["process_wall_s"]):
        print("   " + line)
    print(f"[bench] {precision} stage seconds (4x run; summed over workers): "
          + ", ".join(f"{k} {v:.1f}" for k, v in sorted(man4["stage_seconds"].items())))
    print(f"[bench] {precision} ratio pipeline / fastest bare forward ({fastest:.2f} img/s): steady "
          f"{steady / fastest:.3f}, stream {stream / fastest:.3f}, end to end 1x {e2e[1] / fastest:.3f}, "
          f"4x {e2e[4] / fastest:.3f}")
    return {"bare_eager_ips": eager, "bare_compiled_ips": race["compiled"], "compile_seconds": race["compile_seconds"],
            "pipeline_compile": race["pipeline_compile"], "bare_fastest_ips": fastest, "pipeline_steady_ips": steady,
            "pipeline_stream_ips": stream, "pipeline_end_to_end_ips": e2e[4], "end_to_end_1x_ips": e2e[1],
            "fixed_cost_s": fixed, "fixed_cost_to_exit_s": fixed_exit, "first_result_1x_s": runs[1]["first_result_s"],
            "timeline_1x": runs[1]["manifest"].get("timeline"), "startup_1x": runs[1]["manifest"].get("startup_seconds"),
            "peak_rss_mb_1x": runs[1]["peak_rss_mb"], "peak_rss_mb_4x": runs[4]["peak_rss_mb"],
            "stage_seconds": man4["stage_seconds"]}


def _warm_caches(clf, tpath: Path) -> None:
    """What a repeat audit of this model finds cached on the node (pipelines.models.derived_cache):
    its head's SVD at the audit's default tolerance and its class prompts' embeddings."""
    from sing_ops.head import DEFAULT_ATOL

    from pipelines.models.translator_file import load_translator
    from pipelines.models.clip import TEMPLATES, load_clip
    from pipelines.models.clip_source import clip_identity
    from pipelines.models.derived_cache import head_decomposition, text_embeddings

    head_decomposition(clf.head_weight, atol=DEFAULT_ATOL, rtol=None)
    clip_id = load_translator(tpath).metadata["clip_model"]
    text_embeddings(clip_identity(clip_id), list(clf.class_names), TEMPLATES["single"], lambda: load_clip(clip_id))


def _context(cfg: BenchConfig) -> _Ctx:
    import torch

    from pipelines.models.classifiers import load_classifier

    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.startswith("cuda")
    n = cfg.images or (4096 if cuda else 192)  # enough seconds of work to time on each
    work = Path(cfg.out) if cfg.out else Path(tempfile.mkdtemp(prefix="sing-bench-"))
    threads = os.cpu_count() or 1
    clf = load_classifier(cfg.model)
    tpath = bench_translator(clf, work / "translator.safetensors")
    shards = {mult: bench_shards(work, n, mult, threads, cfg.batch_size) for mult in (1, 4)}
    if not cfg.cold:
        _warm_caches(clf, tpath)
    return _Ctx(cfg, clf, device, cuda, cfg.decode or ("device" if cuda else "host"), n, threads, work, tpath, shards)


def run_bench(cfg: BenchConfig) -> dict:
    ctx = _context(cfg)
    print(f"[bench] model {ctx.clf.model_id}, {ctx.n} images, batch {cfg.batch_size}, {ctx.threads} CPU threads, "
          f"device {ctx.device}{' (channels_last)' if ctx.cuda else ''}, decode {ctx.decode}, precisions "
          f"{', '.join(cfg.precisions)}, compile {cfg.compile}, derived caches {'off' if cfg.cold else 'warm'}"
          + "".join(f", {label}" for _, label, _ in _audit_flags(cfg)))
    ctx.clf.to(ctx.device, channels_last=ctx.cuda)
    naive = None
    if cfg.naive:
        naive = naive_loop_rate(ctx.clf, ctx.tpath, ctx.shards[1], min(ctx.n, 256 if ctx.cuda else 24), ctx.threads,
                                ctx.device)
        print(f"[bench] naive per-image loop: {naive:.2f} img/s")
    per = {p: _bench_precision(ctx, p) for p in cfg.precisions}
    floor = _floor(ctx) if cfg.floor else None
    for p, r in per.items() if floor else ():
        r["floor_split_1x"] = floor_split(r["timeline_1x"]["finished"], floor["timeline"]["last_result"], ctx.n,
                                          r["bare_fastest_ips"])
    _summary(per, naive, ctx)
    first = per[cfg.precisions[0]]
    return {**first, "bare_forward_ips": first["bare_fastest_ips"], "naive_ips": naive, "precisions": per,
            "floor": floor}


def _summary(per: dict, naive: float | None, ctx: _Ctx) -> None:
    print(f"{'precision':<9s} {'eager':>9s} {'compiled':>9s} {'pipeline':>9s} {'steady/bare':>11s} "
          f"{'e2e/bare 1x':>11s} {'4x':>6s} {'fixed cost':>10s} {'1st result':>10s}  (img/s, s)")
    for p, r in per.items():
        comp = f"{r['bare_compiled_ips']:9.1f}" if r["bare_compiled_ips"] else f"{'-':>9s}"
        print(f"{p:<9s} {r['bare_eager_ips']:9.1f} {comp} {r['pipeline_steady_ips']:9.1f} "
              f"{r['pipeline_steady_ips'] / r['bare_fastest_ips']:11.3f} "
              f"{r['end_to_end_1x_ips'] / r['bare_fastest_ips']:11.3f} "
              f"{r['pipeline_end_to_end_ips'] / r['bare_fastest_ips']:6.3f} {r['fixed_cost_s']:10.1f} "
              f"{r['first_result_1x_s'] or float('nan'):10.1f}")
    for p, r in per.items():
        if "floor_split_1x" not in r:
            continue
        f = r["floor_split_1x"]
        print(f"{p} 1x run: last row {f['to_last_row_s']:.1f} s = floor {f['floor_s']:.1f} + the model's compute at "
              f"the bare rate {f['model_s']:.1f} + sing's own {f['sing_s']:.1f}")
    r = per[ctx.cfg.precisions[0]]
    print(f"peak PSS 1x {r['peak_rss_mb_1x']:.0f} MiB, 4x {r['peak_rss_mb_4x']:.0f} MiB "
          f"(ratio {r['peak_rss_mb_4x'] / r['peak_rss_mb_1x']:.2f}; streaming keeps it ~1)")
    if naive:
        print(f"speed-up over naive per-image loop: {r['pipeline_steady_ips'] / naive:.1f}x (end-to-end "
              f"{r['pipeline_end_to_end_ips'] / naive:.1f}x)")
    print(f"goal: steady >= {0.9 if ctx.cuda else 0.85} of the fastest bare forward on {ctx.device}")


def cli_args(p) -> None:
    from pipelines.models.compiled import COMPILE_HELP
    from pipelines.models.precision import PRECISIONS

    p.add_argument("--model", default=BenchConfig.model, help="classifier MODEL string")
    p.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(BenchConfig.precisions),
                   help=f"precisions to measure (default: {DEFAULT_PRECISION} and bf16)")
    p.add_argument("--compile", choices=COMPILE_MODES, default=BenchConfig.compile,
                   help="the compiled mode raced against eager (off: eager only). " + COMPILE_HELP)
    p.add_argument("--images", type=int, help="images of the 1x run (default: 192 on CPU, 4096 on CUDA)")
    p.add_argument("--batch-size", type=int, default=32, help="images per model batch")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--decode", choices=["host", "device"], help="default: device on CUDA, host on CPU")
    p.add_argument("--host-decode-share", type=float, default=0.0, metavar="F",
                   help="passed to the audit (--decode device only)")
    p.add_argument("--actors-per-gpu", type=int, help="passed to the audit (default: the audit's)")
    p.add_argument("--actor-threads", type=int, help="passed to the audit (default: the audit's)")
    p.add_argument("--buffer-gb", type=float, help="passed to the audit (default: Ray's budget)")
    p.add_argument("--cold", action="store_true", help="no derived caches in either run (a first run on a node)")
    p.add_argument("--no-naive", dest="naive", action="store_false", help="skip the naive per-image loop")
    p.add_argument("--no-floor", dest="floor", action="store_false",
                   help="skip the floor run (the audit's stream with no model work)")
    p.add_argument("--out", help="keep the benchmark's shards and results here")


def cli_run(args) -> int:
    run_bench(BenchConfig(args.model, args.images, args.batch_size, args.out, args.device, args.decode,
                          args.host_decode_share, args.actors_per_gpu, args.actor_threads, args.buffer_gb,
                          tuple(args.precisions), args.compile, args.cold, args.naive,
                          args.floor))
    return 0
