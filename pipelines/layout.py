"""Where results live, atomic Parquet writes, and which shards are already done.

    OUT/<table>/model=<slug>/run=<run_id>/<shard>.parquet      table in images|concepts|errors|steer
    OUT/runs/<run_id>.json

A shard is done for a (model, run) when its `images` (or `steer`) file exists: that file
is renamed into place last, after the shard's errors and concepts files.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

TABLES = ("images", "concepts", "errors", "steer")
_RUN_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


def slug(model_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "-", model_id)


def check_run_id(run_id: str) -> str:
    if not _RUN_ID.match(run_id):
        raise ValueError(f"run id {run_id!r} must be 1-128 characters of [A-Za-z0-9._-]")
    return run_id


def derive_run_id(kind: str, config: dict) -> str:
    """Deterministic id: the same command (same models, translator, shards, options)
    maps to the same run directory, which is what makes a rerun resume."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return f"{kind}-{hashlib.sha256(blob).hexdigest()[:12]}"


def table_dir(out, table: str, model_slug: str, run_id: str) -> Path:
    if table not in TABLES:
        raise ValueError(f"unknown table {table!r}")
    return Path(out) / table / f"model={model_slug}" / f"run={run_id}"


def shard_file(out, table: str, model_slug: str, run_id: str, shard: str) -> Path:
    return table_dir(out, table, model_slug, run_id) / f"{shard}.parquet"


def manifest_path(out, run_id: str) -> Path:
    return Path(out) / "runs" / f"{run_id}.json"


def is_done(out, model_slug: str, run_id: str, shard: str, table: str = "images") -> bool:
    return shard_file(out, table, model_slug, run_id, shard).is_file()


def write_table_atomic(table: pa.Table, path: Path) -> None:
    """Write to a hidden temp name in the same directory, fsync, then rename: readers
    (and a resumed run) never see a partial file, and a rerun overwrites, never appends."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_json_atomic(obj: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def count_rows(out, table: str, model_slug: str, run_id: str) -> int:
    d = table_dir(out, table, model_slug, run_id)
    return sum(pq.ParquetFile(p).metadata.num_rows for p in d.glob("*.parquet")) if d.is_dir() else 0
