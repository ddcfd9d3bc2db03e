"""The floor under the audit's fixed cost: the same process shape with no model work.

`sing bench` runs this as a subprocess over the 1x shards: a fresh process starts Ray with
the audit's settings (pipelines.stages.ray_session), builds the audit's stream (the spine's
read stage and actor pool) with a model actor that only imports torch and the model's
library (on a GPU it also creates its CUDA context), drains it, and exits like `sing` (Ray's shutdown, no interpreter teardown). What
the audit spends on top of this floor and of the model's own compute is sing's: loading and
checking the model on the driver, the prepared model's transfer, scoring, writing Parquet.

Prints one line `FLOOR {json}`: seconds since process start at each moment.
"""
from __future__ import annotations

import json
import sys
import time

from pipelines import timeline


class FloorActor:
    """A model actor that does what a real one must before any model work (import torch and
    the model's library; on a GPU, create the CUDA context) and nothing else: it hands back
    the keys and when it was ready."""

    def __init__(self, imports=(), device=None, threads=None, drop_views=(), window=None):
        import importlib

        t_enter = time.time()
        for name in imports:
            importlib.import_module(name)
        if device is None or str(device).startswith("cuda"):  # any GPU model work needs a CUDA context
            import torch

            if torch.cuda.is_available():
                torch.zeros(1, device=device or "cuda")
        self.ready = (timeline.process_start(), t_enter, time.time())

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        n = len(batch["key"])
        out = {"key": batch["key"], "status": batch["status"]}
        for i, c in enumerate(("t_spawned", "t_entered", "t_ready")):
            out[c] = np.full(n, self.ready[i])
        return out


def library_imports(model_spec: str) -> list[str]:
    """torch, and the library that defines the model's classes (an actor unpickling a model
    imports it)."""
    from pipelines.models.spec import parse_model_spec

    source = parse_model_spec(model_spec).source  # the zoo's Lite0 is a timm model
    return ["torch", {"torchvision": "torchvision", "hf": "transformers"}.get(source, "timm")]


def run_floor(shards: list[str], view: dict, model_spec: str, batch_size: int, device: str | None,
              decode: str) -> dict:
    from pipelines.jobs import spine
    from pipelines.jobs.audit import AuditOptions
    from pipelines.models.preprocess import PreprocessSpec
    from pipelines.options import Decode
    from pipelines.stages.ray_session import ensure_ray
    from pipelines.stages.read import encoded_columns, view_column

    timeline.mark("imports")
    opts = AuditOptions(models=[model_spec], translators=["-"], shards=shards, out="-", batch_size=batch_size,
                        device=device, decode=Decode(decode))
    ensure_ray()
    timeline.mark("ray_up")
    views = [PreprocessSpec(**view)]
    encoded = opts.decode == Decode.DEVICE
    drop = encoded_columns(views) if encoded else [view_column(v) for v in views]
    ap = spine.ActorPlan.resolve(opts, 1)
    ds = spine.stream(spine.expand(shards)[0], opts, views,
                      [spine.ActorSpec(FloorActor, {"imports": library_imports(model_spec)})], ap, drop,
                      {"encoded": encoded, "host_share": 0.0})
    timeline.mark("stream_started")
    n = 0
    for b in spine.batches(ds):
        if n == 0:
            timeline.mark("actor_spawned", float(b["t_spawned"][0]))
            timeline.mark("actor_entered", float(b["t_entered"][0]))
            timeline.mark("actor_ready", float(b["t_ready"][0]))
            timeline.mark("first_result")
        n += int((b["status"] == "ok").sum())
    timeline.mark("last_result")
    return {"rows": n, "timeline": timeline.marks()}


def main(argv: list[str]) -> None:
    """argv: one JSON object with run_floor's arguments."""
    import os

    import ray

    rc = 1
    try:
        res = run_floor(**json.loads(argv[0]))
        if ray.is_initialized():
            ray.shutdown()
        timeline.mark("exit")
        res["timeline"] = timeline.marks()
        print("FLOOR " + json.dumps(res), flush=True)
        rc = 0
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)  # like `sing` (pipelines.cli.entry): no interpreter teardown


if __name__ == "__main__":
    main(sys.argv[1:])
