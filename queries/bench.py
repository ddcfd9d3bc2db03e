"""Scan benchmark of the built-in queries: `python -m queries.bench [--rows 10000000]`.

Generates an images table in the documented layout (a few models, 1000 classes, several
Parquet files per model) in a temporary directory, then times `model_summary` and
`class_leakage` through the runner (what `sing query` does: new DuckDB connection, hive
partitioning, all of the query's aggregates, result to Polars) and prints seconds and
rows/s for each (best of --repeat runs, and the first run). `scan_baseline` is the same
scan with streaming aggregates only: the gap to it is the cost of the exact medians.
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .runner import run_query, sql_frame

# Reference point: the same scan with streaming aggregates only (no exact medians, which are
# holistic: every value is kept per group and selected at the end).
_SCAN_SQL = """
SELECT model, run, count(*) AS n, avg(abs_as_deg::DOUBLE) AS mean_abs_as, avg(is_deg::DOUBLE) AS mean_is,
       stddev_samp(as_deg::DOUBLE) AS std_as, max(logit_drift) AS max_drift
FROM result_rows($images_glob)
GROUP BY model, run
"""

_SCHEMA = pa.schema([
    ("key", pa.string()), ("shard", pa.string()), ("label", pa.int32()), ("class_name", pa.string()),
    ("pred", pa.int32()), ("pred_name", pa.string()), ("as_deg", pa.float32()), ("abs_as_deg", pa.float32()),
    ("is_deg", pa.float32()), ("pred_as_deg", pa.float32()), ("logit_drift", pa.float32()),
    ("null_norm_frac", pa.float32()), ("null_dim", pa.int32()),
])


def _const(value: str, n: int) -> pa.Array:
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([value])).cast(pa.string())


def generate(root: Path, rows: int, models: int = 4, files_per_model: int = 5, classes: int = 1000,
             seed: int = 0) -> int:
    """Write `rows` image rows under root/images; returns the number written."""
    rng = np.random.default_rng(seed)
    names = pa.array([f"class {c:04d}" for c in range(classes)], pa.string())
    per_model = rows // models
    written = 0
    for m in range(models):
        offsets = rng.normal(0.0, 1.0 + m, classes)
        bounds = np.linspace(0, per_model + (rows - per_model * models if m == models - 1 else 0),
                             files_per_model + 1).astype(np.int64)
        for f in range(files_per_model):
            n = int(bounds[f + 1] - bounds[f])
            shard = f"shard-{f:06d}"
            labels = rng.integers(0, classes, n, dtype=np.int32)
            pred = np.where(rng.random(n) < 0.8, labels, rng.integers(0, classes, n, dtype=np.int32)).astype(np.int32)
            as_deg = (offsets[labels] + rng.normal(0.0, 0.7, n)).astype(np.float32)
            t = pa.table({
                "key": pc.cast(pa.array(np.arange(written, written + n)), pa.string()),
                "shard": _const(shard, n),
                "label": pa.array(labels, pa.int32()),
                "class_name": pc.take(names, pa.array(labels)),
                "pred": pa.array(pred, pa.int32()),
                "pred_name": pc.take(names, pa.array(pred)),
                "as_deg": pa.array(as_deg),
                "abs_as_deg": pa.array(np.abs(as_deg)),
                "is_deg": pa.array(np.abs(rng.normal(20.0, 4.0, n)).astype(np.float32)),
                "pred_as_deg": pa.array((as_deg + rng.normal(0, 0.2, n)).astype(np.float32)),
                "logit_drift": pa.array(np.abs(rng.normal(0, 1e-4, n)).astype(np.float32)),
                "null_norm_frac": pa.array(rng.uniform(0.3, 0.9, n).astype(np.float32)),
                "null_dim": pa.array(np.full(n, 1024 + m, np.int32)),
            }, schema=_SCHEMA)
            d = root / "images" / f"model=bench-model-{m}" / "run=bench"
            d.mkdir(parents=True, exist_ok=True)
            pq.write_table(t, d / f"{shard}.parquet", compression="zstd")
            written += n
    return written


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m queries.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--models", type=int, default=4)
    p.add_argument("--files-per-model", type=int, default=5)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--dir", help="generate here and keep it (default: a temporary directory, removed)")
    a = p.parse_args(argv)
    root = Path(a.dir) if a.dir else Path(tempfile.mkdtemp(prefix="sing-qbench-"))
    try:
        t0 = time.perf_counter()
        n = generate(root, a.rows, a.models, a.files_per_model, a.classes)
        size = sum(f.stat().st_size for f in (root / "images").rglob("*.parquet"))
        print(f"generated {n:,} rows ({a.models} models x {a.files_per_model} files, {a.classes} classes, "
              f"{size / 2**20:.0f} MiB zstd Parquet) in {time.perf_counter() - t0:.1f} s; "
              f"{os.cpu_count()} CPU(s)")
        for name in ("scan_baseline", "model_summary", "class_leakage"):
            times = []
            for _ in range(max(1, a.repeat)):
                t = time.perf_counter()
                df = run_query(name, root) if name != "scan_baseline" else sql_frame(root, _SCAN_SQL)
                times.append(time.perf_counter() - t)
            best = min(times)
            print(f"{name:14s} best {best:.3f} s  ({n / best / 1e6:.1f} M rows/s)   first {times[0]:.3f} s  "
                  f"({n / times[0] / 1e6:.1f} M rows/s)   -> {df.height} result rows")
    finally:
        if not a.dir:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
