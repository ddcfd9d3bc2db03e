"""`sing bench`'s view of the fixed cost: what a user waits for besides the images.

    fixed_cost(points)   the line wall = a + n / rate through (images, seconds) points (least
                         squares; with the bench's 1x and 4x runs, the line through both):
                         `a` is the fixed cost, `rate` the steady images/s
    breakdown(manifest, process_wall)   the audit's timeline (pipelines.timeline) as steps
                         along its critical path, each with the seconds since the previous
                         moment, plus the process's exit (Ray shutting down)
"""
from __future__ import annotations

# what happened between the previous moment and each one (pipelines.timeline's names)
STEPS = {
    "imports": "interpreter start, CLI and the command's imports",
    "ray_up": "Ray start (the models load beside it, in a thread)",
    "models_prepared": "models prepared (load, head SVD, text embedding; beside Ray's start)",
    "planned": "run planned (run id, done shards, manifest)",
    "actor_spawned": "the model actor's process started (a worker Ray started ahead)",
    "stream_started": "stream built (prepared models into the object store, Ray Data plan)",
    "actor_entered": "actor start-up: Ray worker, imports (torch, the model library, Ray Data)",
    "actor_ready": "actor set-up: prepared model from the object store, to its device, warm-up",
    "first_result": "first batch: read + decode, forward, SING ops, back to the driver",
    "last_result": "the rest of the stream",
    "finished": "manifest written",
    "exit": "process exit (Ray shuts down)",
}


def fixed_cost(points: list[tuple[float, float]]) -> tuple[float, float]:
    """(intercept seconds, images/s) of the least-squares line wall = a + n / rate."""
    if len(points) < 2 or len({n for n, _ in points}) < 2:
        raise ValueError("need runs of at least two sizes")
    k = len(points)
    mn = sum(n for n, _ in points) / k
    mw = sum(w for _, w in points) / k
    slope = sum((n - mn) * (w - mw) for n, w in points) / sum((n - mn) ** 2 for n, _ in points)
    return mw - slope * mn, (1.0 / slope if slope > 0 else float("inf"))


def breakdown(manifest: dict, process_wall: float | None = None) -> list[tuple[str, float, float]]:
    """[(moment, seconds since process start, seconds since the previous moment)] in time order;
    `exit` last when the process's wall time is known."""
    from pipelines.timeline import in_order

    marks = dict(manifest.get("timeline") or {})
    if process_wall is not None and marks:
        marks["exit"] = max(process_wall, max(marks.values()))
    marks = in_order(marks)
    out, prev = [], 0.0
    for name, t in marks.items():
        out.append((name, t, t - prev))
        prev = t
    return out


def format_breakdown(manifest: dict, process_wall: float | None = None) -> list[str]:
    lines = [f"{t:7.2f} s {'+' + format(d, '.2f'):>7s}  {name:<16s} {STEPS.get(name, '')}"
             for name, t, d in breakdown(manifest, process_wall)]
    s = manifest.get("startup_seconds") or {}
    parts = [f"{label} {s[k]:.2f}" for k, label in (
        ("model_load", "model load"), ("head_svd", "head SVD"), ("text_embed", "text embedding (CLIP load included)"),
        ("actor_setup", "actor set-up"), ("actor_warmup", "of which warm-up (CUDA context, cuDNN, compile)"))
        if k in s]
    if parts:
        lines.append("         spans (s): " + ", ".join(parts))
    return lines


def floor_split(audit_last: float, floor_last: float, images: int, bare_ips: float) -> dict:
    """The audit's seconds to its last row, split: the floor (the same process shape with no
    model work: pipelines.jobs.bench.floor), the model's compute at the bare forward's rate,
    and the rest, sing's own (model load and checks, transfer, scoring, writing, waits)."""
    model = images / bare_ips if bare_ips > 0 else float("nan")
    return {"to_last_row_s": audit_last, "floor_s": floor_last, "model_s": model,
            "sing_s": audit_last - floor_last - model}


def format_floor(floor: dict) -> str:
    tl = floor["timeline"]
    return (f"floor (a fresh process: Ray start, the audit's stream over the 1x shards, a model actor that only "
            f"imports {' + '.join(floor['imports'])}, no model work): last row {tl['last_result']:.1f} s (Ray up "
            f"{tl['ray_up']:.1f}, actor entered {tl['actor_entered']:.1f}, ready {tl['actor_ready']:.1f}), exit "
            f"{tl['exit']:.1f} s")
