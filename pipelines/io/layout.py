"""Where results live, atomic Parquet writes, and which shards are already done.

    OUT/<table>/model=<slug>/run=<run_id>/<shard>.parquet      table in images|concepts|errors|steer
    OUT/runs/<run_id>.json

A shard is done for a (model, run) when its `images` (or `steer`) file exists: that file
is renamed into place last, after the shard's errors and concepts files.

OUT is a local directory or an fsspec URL (s3://bucket/results, memory://...). Locations
are `Path`s under a local OUT (as they always were) and '/'-joined strings under a URL;
every function here dispatches on `is_url`, so callers never check. A URL file is written
to a local temp file and uploaded with put_file: an object store shows the object only
once the upload completes, which keeps "exists = complete" true there too.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.io.remote import is_url, local_path, upload_written, url_fs

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


def join(base, *parts: str) -> Path | str:
    """`base/parts...`: a Path for a local base, a string for a URL (Path would turn
    's3://b' into 's3:/b')."""
    if is_url(base):
        return "/".join([base.rstrip("/"), *parts])
    return Path(local_path(base)).joinpath(*parts)


def table_dir(out, table: str, model_slug: str, run_id: str) -> Path | str:
    if table not in TABLES:
        raise ValueError(f"unknown table {table!r}")
    return join(out, table, f"model={model_slug}", f"run={run_id}")


def shard_file(out, table: str, model_slug: str, run_id: str, shard: str) -> Path | str:
    return join(table_dir(out, table, model_slug, run_id), f"{shard}.parquet")


def manifest_path(out, run_id: str) -> Path | str:
    return join(out, "runs", f"{run_id}.json")


def file_exists(path) -> bool:
    if is_url(path):
        fs, p = url_fs(path)
        return fs.isfile(p)
    return Path(path).is_file()


def is_done(out, model_slug: str, run_id: str, shard: str, table: str = "images") -> bool:
    return file_exists(shard_file(out, table, model_slug, run_id, shard))


def write_table_atomic(table: pa.Table, path) -> None:
    """Write to a hidden temp name in the same directory, fsync, then rename: readers
    (and a resumed run) never see a partial file, and a rerun overwrites, never appends.
    A URL is written locally and uploaded whole."""
    if is_url(path):
        return upload_written(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))
    path = Path(local_path(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_json_atomic(obj: dict, path) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"
    if is_url(path):
        return upload_written(path, lambda tmp: Path(tmp).write_text(text))
    path = Path(local_path(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_json(path) -> dict | None:
    """The JSON object at a local path or URL, None when there is no such file."""
    if is_url(path):
        fs, p = url_fs(path)
        return json.loads(fs.cat_file(p)) if fs.isfile(p) else None
    p = Path(path)
    return json.loads(p.read_text()) if p.is_file() else None


def count_rows(out, table: str, model_slug: str, run_id: str) -> int:
    d = table_dir(out, table, model_slug, run_id)
    if is_url(d):
        fs, p = url_fs(d)
        fs.invalidate_cache(p)  # listings may be cached by s3fs/gcsfs from before this run's writes
        total = 0
        for f in fs.glob(f"{p}/*.parquet"):
            with fs.open(f, "rb") as fh:
                total += pq.ParquetFile(fh).metadata.num_rows
        return total
    return sum(pq.ParquetFile(p).metadata.num_rows for p in d.glob("*.parquet")) if d.is_dir() else 0
