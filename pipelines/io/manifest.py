"""The run manifest: everything needed to reproduce or audit a run, one JSON per run."""
from __future__ import annotations

import datetime as _dt
import hashlib
import subprocess
import sys
from pathlib import Path

from pipelines.io.layout import manifest_path, read_json, write_json_atomic


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def code_version() -> str:
    """Package version plus the git commit when running from a checkout."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("sing")
    except PackageNotFoundError:
        v = "unknown"
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    return f"{v}+g{sha}" if sha else v


def file_sha256(path) -> str:
    """Streaming sha256 of a file (checkpoints can be GBs)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def load_manifest(out, run_id: str) -> dict | None:
    return read_json(manifest_path(out, run_id))


def write_manifest(out, run_id: str, manifest: dict) -> Path | str:
    p = manifest_path(out, run_id)
    write_json_atomic({**manifest, "run_id": run_id, "python": sys.version.split()[0]}, p)
    return p
