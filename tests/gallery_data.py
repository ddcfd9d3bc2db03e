"""A results tree whose keys are real samples of real shards (no Ray): generated photos into
webdataset shards (`sing shards make`), then images/concepts rows in the audit's schemas for
every sample, with seeded scores, and a run manifest that records the shard paths. The
gallery and browser tests read thumbnails back from these shards."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.io.shards import Sample, iter_shard, shard_name
from pipelines.stages.audit_tables import IMAGES_SCHEMA
from pipelines.stages.audit_tables import LONG_CONCEPTS_SCHEMA as CONCEPTS_SCHEMA  # an older run's layout
from tests.pipeline_data import photo_folder

NAMES = ["tench", "goldfish", "great white shark"]  # ImageNet classes 0, 1, 2 (pipeline_data.SYNSETS)
CONCEPTS = ["water", "stripes", "grass", "sky", "metal"]


@dataclass
class GalleryWorld:
    results: Path
    shards: list[Path]
    images: pl.DataFrame  # every images row + model, run
    concepts: pl.DataFrame
    model: str
    run: str


def gallery_world(root: Path, per_class: int = 8, per_shard: int = 5, model: str = "toy-model",
                  run: str = "run-1", seed: int = 0) -> GalleryWorld:
    from pipelines.jobs.make_shards import make_shards

    shards = [Path(p) for p in make_shards(str(photo_folder(root / "photos", per_class=per_class)),
                                           str(root / "shards"), per_shard=per_shard)]
    res = root / "results"
    rng = np.random.default_rng(seed)
    img_frames, con_frames = [], []
    for sp in shards:
        shard = shard_name(str(sp))
        samples = [s for s in iter_shard(str(sp)) if isinstance(s, Sample)]
        n, keys = len(samples), [s.key for s in samples]
        labels = np.array([s.label for s in samples], np.int32)
        pred = np.where(rng.random(n) < 0.7, labels, (labels + 1) % 3).astype(np.int32)
        as_deg = rng.normal(0, 1 + labels, n).astype(np.float32)  # class 2 leaks most
        is_deg = rng.uniform(5, 40, n).astype(np.float32)
        names = np.asarray(NAMES, dtype=object)
        images = pa.table({
            "key": keys, "shard": [shard] * n, "label": pa.array(labels, pa.int32()),
            "class_name": names[labels].tolist(), "pred": pa.array(pred, pa.int32()),
            "pred_name": names[pred].tolist(), "as_deg": as_deg, "abs_as_deg": np.abs(as_deg), "is_deg": is_deg,
            "pred_as_deg": as_deg, "logit_drift": np.full(n, 1e-6, np.float32),
            "null_norm_frac": np.full(n, 0.5, np.float32), "null_dim": pa.array(np.full(n, 86, np.int32))},
            schema=IMAGES_SCHEMA)
        k = len(CONCEPTS)
        shift = rng.normal(0, 1, (n, k)).astype(np.float32)
        concepts = pa.table({
            "key": np.repeat(np.asarray(keys, dtype=object), k).tolist(), "shard": [shard] * (n * k),
            "label": pa.array(np.repeat(labels, k), pa.int32()), "concept": CONCEPTS * n,
            "angle_before_deg": np.full(n * k, 70, np.float32), "angle_after_deg": (70 - shift).reshape(-1),
            "as_deg": shift.reshape(-1)}, schema=CONCEPTS_SCHEMA)
        for table, t in (("images", images), ("concepts", concepts)):
            d = res / table / f"model={model}" / f"run={run}"
            d.mkdir(parents=True, exist_ok=True)
            pq.write_table(t, d / f"{shard}.parquet")
        img_frames.append(pl.from_arrow(images).with_columns(pl.lit(model).alias("model"), pl.lit(run).alias("run")))
        con_frames.append(pl.from_arrow(concepts))
    (res / "runs").mkdir(parents=True, exist_ok=True)
    (res / "runs" / f"{run}.json").write_text(json.dumps({
        "run_id": run, "kind": "audit", "models": [{"model_id": model, "slug": model, "null_dim": 86}],
        "config": {"shards": [str(root / "shards" / "*.tar")]},
        "shard_paths": {shard_name(str(p)): str(p) for p in shards}}))
    return GalleryWorld(res, shards, pl.concat(img_frames), pl.concat(con_frames), model, run)
