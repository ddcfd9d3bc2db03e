"""Where results live, atomic writes, and which shards are already done: THE rule for a
shard's files, wherever they are written (by the model actors since 2026-12-03, on any node).

    OUT/<table>/model=<slug>/run=<run_id>/<shard>.parquet      table in TABLES
    OUT/concept_vocab/model=<slug>/run=<run_id>/vocab.parquet  the run's concept vocabulary
    OUT/runs/<run_id>.json

`commit_shard` writes one shard's files of one model: each file whole (below), in a fixed
order, its marker last (`images`, `steer`, or an index part). A shard is done, for a rerun and
for readers, when its marker exists; the files before it (errors, concept_angles) count only
for done shards (queries/_macros.sql reads them through the marker: `concept_rows`,
`error_rows`). One writer holds all of a shard's rows (the shard travels through the model
actors as one block), so there are no part files to merge, and a shard that several attempts
wrote (a retried task, an abandoned attempt's actor) ends as one copy: the same file names.

OUT is a local directory or an fsspec URL (s3://bucket/results, memory://...). Every location
is a string, '/'-joined, and every operation goes through the path's fsspec filesystem
(`fs_of`), local paths included. Writes are atomic: a local file is written under a temp
name and renamed; an object store shows an object only once its upload completes, which
keeps "exists = complete" true there too.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import threading

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.io.remote import is_url, local_path, url_fs

TABLES = ("images", "concepts", "concept_angles", "concept_vocab", "errors", "steer")
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
    rerun overwrites, never appends). URL: a local temp file, then one upload, which object
    stores publish only when complete (a write that fails uploads nothing)."""
    fs, p = fs_of(path)
    if is_url(str(path)):
        # a local file first, then one upload: writing into fs.open(url) and failing half-way
        # would still publish the half file (closing an fsspec file completes its upload)
        from pipelines.io.remote import upload_written

        def to_local(tmp: str) -> None:
            with open(tmp, "wb") as fh:
                write(fh)

        upload_written(str(path), to_local)
        return
    os.makedirs(os.path.dirname(p), exist_ok=True)
    # pid and thread: several writers (actor threads, processes) never share a temp file
    tmp = os.path.join(os.path.dirname(p), f".{os.path.basename(p)}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)  # a failed write leaves nothing behind
        raise


def write_table_atomic(table: pa.Table, path) -> None:
    write_atomic(path, lambda fh: pq.write_table(table, fh, compression="zstd"))


def write_json_atomic(obj: dict, path) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"
    write_atomic(path, lambda fh: fh.write(text.encode()))


def read_json(path) -> dict | None:
    """The JSON object at a local path or URL, None when there is no such file."""
    fs, p = fs_of(path)
    return json.loads(fs.cat_file(p)) if fs.isfile(p) else None


class ShardWriteError(RuntimeError):
    """A shard's files could not be written (after retries)."""


def commit_shard(files: list[tuple[str, pa.Table]], attempts: int = 3, backoff_s: float = 0.5) -> float:
    """Write a shard's (path, table) files in order, each atomically; the last is the marker
    that makes the shard done. A failure (a full disk, an object store's 5xx) is retried from
    the first file (rewriting is idempotent); after `attempts` it raises ShardWriteError and
    the marker was not written, so the shard is not done and a rerun writes it again.
    Returns the seconds spent."""
    import time

    t0 = time.perf_counter()
    for i in range(attempts):
        try:
            for path, table in files:
                write_table_atomic(table, path)
            return time.perf_counter() - t0
        except OSError as exc:  # fsspec backends raise OSError subclasses for I/O and service errors
            if i == attempts - 1:
                raise ShardWriteError(f"{type(exc).__name__}: {exc}") from exc
            time.sleep(backoff_s * 2**i)
    return time.perf_counter() - t0


def done_shards(out, table: str, model_slug: str, run_id: str) -> set[str]:
    """The shards whose `table` file (a marker) exists, from one listing of its directory (a
    stat per shard would be thousands of requests on an object store)."""
    return parquet_stems(table_dir(out, table, model_slug, run_id))


def parquet_stems(directory) -> set[str]:
    """The names (without .parquet) of the Parquet files in `directory`, a local path or URL,
    hidden temp files aside: one listing."""
    fs, d = fs_of(directory)
    fs.invalidate_cache(d)
    try:
        entries = fs.ls(d, detail=True)
    except FileNotFoundError:
        return set()
    names = [e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e.get("type") == "file"]
    return {n[: -len(".parquet")] for n in names if n.endswith(".parquet") and not n.startswith(".")}


def vocab_file(out, model_slug: str, run_id: str) -> str:
    return join(table_dir(out, "concept_vocab", model_slug, run_id), "vocab.parquet")


def count_rows(out, table: str, model_slug: str, run_id: str) -> int:
    fs, d = fs_of(table_dir(out, table, model_slug, run_id))
    fs.invalidate_cache(d)  # listings may be cached by s3fs/gcsfs from before this run's writes
    total = 0
    for f in fs.glob(f"{d}/*.parquet"):
        with fs.open(f, "rb") as fh:
            total += pq.ParquetFile(fh).metadata.num_rows
    return total
