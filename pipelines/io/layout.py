"""Where results live, atomic writes, and which shards are already done.

    OUT/<table>/model=<slug>/run=<run_id>/<shard>.parquet      table in images|concepts|errors|steer
    OUT/runs/<run_id>.json

A shard is done for a (model, run) when its `images` (or `steer`) file exists: that file
is renamed into place last, after the shard's errors and concepts files.

OUT is a local directory or an fsspec URL (s3://bucket/results, memory://...). Every location
is a string, '/'-joined, and every operation goes through the path's fsspec filesystem
(`fs_of`), local paths included. Writes are atomic: a local file is written under a temp
name and renamed; an object store shows an object only once its upload completes, which
keeps "exists = complete" true there too.
"""
from __future__ import annotations

import hashlib
import json
import os
import re

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.io.remote import is_url, local_path, url_fs

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


def fs_of(path):
    """(fsspec filesystem, path in it) of a local path or a URL."""
    if is_url(str(path)):
        return url_fs(str(path))
    import fsspec

    return fsspec.filesystem("file"), os.path.abspath(os.path.expanduser(local_path(str(path))))


def join(base, *parts: str) -> str:
    """`base/parts...` as a string, for a local path and a URL alike."""
    base = str(base)
    return "/".join([base.rstrip("/"), *parts]) if is_url(base) else os.path.join(local_path(base), *parts)


def table_dir(out, table: str, model_slug: str, run_id: str) -> str:
    if table not in TABLES:
        raise ValueError(f"unknown table {table!r}")
    return join(out, table, f"model={model_slug}", f"run={run_id}")


def shard_file(out, table: str, model_slug: str, run_id: str, shard: str) -> str:
    return join(table_dir(out, table, model_slug, run_id), f"{shard}.parquet")


def manifest_path(out, run_id: str) -> str:
    return join(out, "runs", f"{run_id}.json")


def file_exists(path) -> bool:
    fs, p = fs_of(path)
    return fs.isfile(p)


def is_done(out, model_slug: str, run_id: str, shard: str, table: str = "images") -> bool:
    return file_exists(shard_file(out, table, model_slug, run_id, shard))


def write_atomic(path, write) -> None:
    """write(binary file object) into `path`, all or nothing. Local: a hidden temp name in the
    same directory, fsync, rename (readers and a resumed run never see a partial file; a
    rerun overwrites, never appends). URL: the filesystem's own upload, which object stores
    publish only when complete."""
    fs, p = fs_of(path)
    if is_url(str(path)):
        with fs.open(p, "wb") as fh:
            write(fh)
        return
    os.makedirs(os.path.dirname(p), exist_ok=True)
    tmp = os.path.join(os.path.dirname(p), f".{os.path.basename(p)}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, p)


def write_table_atomic(table: pa.Table, path) -> None:
    write_atomic(path, lambda fh: pq.write_table(table, fh, compression="zstd"))


def write_json_atomic(obj: dict, path) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"
    write_atomic(path, lambda fh: fh.write(text.encode()))


def read_json(path) -> dict | None:
    """The JSON object at a local path or URL, None when there is no such file."""
    fs, p = fs_of(path)
    return json.loads(fs.cat_file(p)) if fs.isfile(p) else None


def count_rows(out, table: str, model_slug: str, run_id: str) -> int:
    fs, d = fs_of(table_dir(out, table, model_slug, run_id))
    fs.invalidate_cache(d)  # listings may be cached by s3fs/gcsfs from before this run's writes
    total = 0
    for f in fs.glob(f"{d}/*.parquet"):
        with fs.open(f, "rb") as fh:
            total += pq.ParquetFile(fh).metadata.num_rows
    return total
