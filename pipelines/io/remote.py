"""fsspec URLs (s3://, gs://, memory://, ...) next to local paths.

Inputs (translators, checkpoints, text files) are read through `local_copy`: a URL is
downloaded once into a per-node cache and the local file is used from then on, so every
loader keeps working on plain files (safetensors and torch.load want a path). Results are
written by pipelines/layout.py, which uses `upload` and `url_fs` here for URL outputs.

No heavy imports: fsspec is imported when a URL is actually used.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from pathlib import Path

# A scheme of two or more characters, so a Windows drive ("C:/...") never looks like a URL.
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")
# info() fields that change when an object is replaced (s3fs, gcsfs, local, memory, http).
_VERSION_KEYS = ("size", "ETag", "etag", "LastModified", "last_modified", "mtime", "updated", "generation",
                 "md5Hash", "crc32c", "VersionId", "created")


def is_url(s) -> bool:
    """True for `scheme://...` other than file:// (a file:// URL is a local path)."""
    return isinstance(s, str) and bool(_SCHEME.match(s)) and not s.startswith("file://")


def local_path(s) -> str:
    """A local path as a string, with a leading file:// removed."""
    s = os.fspath(s)
    return s[len("file://"):] if s.startswith("file://") else s


def url_fs(url: str):
    """(filesystem, path inside it) for a URL; a clear error when its fsspec backend is missing."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        raise ValueError(f"cannot open {url}: {exc} (s3:// needs s3fs, gs:// needs gcsfs)") from None


def default_cache_dir() -> Path:
    return Path(os.environ.get("SING_CACHE") or Path.home() / ".cache" / "sing" / "remote")


def local_copy(uri, cache_dir=None) -> str:
    """A local file with the contents of `uri`; a local path comes back unchanged.

    A URL is downloaded to CACHE/<hash>/<basename>, the hash covering the URL and the
    version fields that fsspec's info() reports (size, mtime, etag, ...): a replaced remote
    file gets a new cache entry, an unchanged one is reused without downloading. The
    basename is kept because loaders dispatch on the extension, and a translator's
    `<name>.json` sidecar (written by translator_file.save_translator) is copied next to it when present.
    """
    if not is_url(uri):
        return local_path(uri)
    fs, path = url_fs(uri)
    try:
        info = fs.info(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"remote file not found: {uri}") from None
    if info.get("type") == "directory":
        raise ValueError(f"{uri} is a directory, expected a file")
    version = {k: str(info[k]) for k in _VERSION_KEYS if info.get(k) is not None}
    key = hashlib.sha256(json.dumps([uri, version], sort_keys=True).encode()).hexdigest()[:24]
    dest = Path(cache_dir or default_cache_dir()) / key / (path.rstrip("/").rsplit("/", 1)[-1] or "file")
    if not dest.is_file():
        _download(fs, path, dest, info.get("size"), uri)
        if fs.exists(f"{path}.json"):
            _download(fs, f"{path}.json", Path(f"{dest}.json"), None, f"{uri}.json")
    else:
        _touch(dest.parent)  # last use, for prune_cache (atime is often off on nodes)
    return str(dest)


def _touch(entry: Path) -> None:
    try:
        os.utime(entry)
    except OSError:  # pruned meanwhile, or a read-only cache: nothing to record
        pass


def cache_entries(cache_dir=None) -> list[dict]:
    """Cache entries (one folder per downloaded URL version), least recently used first."""
    root = Path(cache_dir or default_cache_dir())
    out = []
    for entry in root.iterdir() if root.is_dir() else ():
        if not entry.is_dir():
            continue
        files = [f for f in entry.iterdir() if f.is_file() and not f.name.endswith(".tmp")]
        out.append({"path": entry, "files": sorted(f.name for f in files),
                    "bytes": sum(f.stat().st_size for f in files), "last_used": entry.stat().st_mtime})
    return sorted(out, key=lambda e: e["last_used"])


def prune_cache(cache_dir=None, max_bytes: int | None = None, older_than_s: float | None = None,
                dry_run: bool = False, now: float | None = None) -> list[dict]:
    """Remove download-cache entries unused for `older_than_s`, then the least recently used
    ones until the cache holds at most `max_bytes`. Returns the removed (or, dry_run, the
    would-be removed) entries. Run it between jobs: a job that is about to open a file it
    was handed would find it gone (it fails with a clear error; rerunning downloads again)."""
    import shutil
    import time

    if max_bytes is None and older_than_s is None:
        raise ValueError("give a size limit, an age limit or both")
    if (max_bytes is not None and max_bytes < 0) or (older_than_s is not None and older_than_s < 0):
        raise ValueError("cache limits must not be negative")
    now = time.time() if now is None else now
    entries = cache_entries(cache_dir)
    total = sum(e["bytes"] for e in entries)
    removed = []
    for e in entries:  # oldest first
        too_old = older_than_s is not None and now - e["last_used"] > older_than_s
        too_big = max_bytes is not None and total > max_bytes
        if not (too_old or too_big):
            continue
        removed.append(e)
        total -= e["bytes"]
        if not dry_run:
            shutil.rmtree(e["path"], ignore_errors=True)
    return removed


def _download(fs, path: str, dest: Path, size, uri: str) -> None:
    """Download to a unique temp name beside `dest`, then rename: concurrent actors on one
    node never read a partial file, and the last writer wins with identical bytes."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        fs.get_file(path, str(tmp))
        if size is not None and tmp.stat().st_size != int(size):
            raise OSError(f"{uri} changed while downloading ({tmp.stat().st_size} of {size} bytes); retry")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def upload_written(url: str, write) -> None:
    """write(local_tmp) then upload it to `url` (the upload is the atomic step). The temp file
    keeps the URL's base name, so writers that dispatch on the extension work."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="sing-upload-") as d:
        tmp = os.path.join(d, url.rstrip("/").rsplit("/", 1)[-1] or "file")
        write(tmp)
        upload(tmp, url)


def upload(local_file: str, url: str) -> None:
    """Upload a finished local file. On an object store (S3, GCS) the object appears only
    once the upload completes, so readers never see a partial file."""
    fs, path = url_fs(url)
    fs.put_file(local_file, path)
