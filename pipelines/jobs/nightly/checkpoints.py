"""The checkpoints of a training run for `sing nightly`: listed (a directory or files, local or
fsspec URLs), keyed by the sha256 of their weights, the ones not judged before picked, and
those that do not load (half-written, a pickle carrying code) set aside with the reason."""
from __future__ import annotations

import fnmatch
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from pipelines.io.manifest import file_sha256
from pipelines.io.remote import is_url, local_copy, local_path
from pipelines.jobs.nightly.config import NightlyConfig, NightlyConfigError

log = logging.getLogger("sing.nightly")

CHECKPOINT_EXTS = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
STATE_VERSION = 1


@dataclass
class Checkpoint:
    uri: str  # as listed (local path or fsspec URL)
    name: str  # basename
    mtime: float
    size: int
    sha256: str | None = None
    local: str | None = None  # local copy (the file itself when local)

    def order_key(self, order: str):
        return (self.name,) if order == "name" else (self.mtime, self.name)


def nightly_dir(cfg: NightlyConfig) -> Path:
    return Path(cfg.out) / "nightly" / cfg.name


# ------------------------------------------------------------------------ listing

def _mtime(info: dict) -> float:
    """fsspec backends name the modification time differently (local: mtime; s3: LastModified)."""
    for k in ("mtime", "LastModified", "last_modified", "updated", "created"):
        v = info.get(k)
        if v is None:
            continue
        if hasattr(v, "timestamp"):
            return float(v.timestamp())
        try:
            return float(v)
        except (TypeError, ValueError):
            import datetime as dt

            try:
                return dt.datetime.fromisoformat(str(v).replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return 0.0


def list_checkpoints(cfg: NightlyConfig) -> list[Checkpoint]:
    """Every checkpoint file the config names, with size and mtime (no content read yet)."""
    import fsspec

    src = cfg.checkpoints.source
    found: list[Checkpoint] = []
    if isinstance(src, str):
        fs, root = fsspec.core.url_to_fs(local_path(os.path.expanduser(src)))
        if not fs.isdir(root):
            raise NightlyConfigError(f"checkpoints.source {src!r} is not a directory (or give a list of files)")
        pattern = cfg.checkpoints.pattern
        for info in fs.ls(root, detail=True):
            name = info["name"].rstrip("/").rsplit("/", 1)[-1]
            if info.get("type") == "directory" or name.startswith("."):
                continue
            if pattern and not fnmatch.fnmatch(name, pattern):
                continue
            if not pattern and not name.lower().endswith(CHECKPOINT_EXTS):
                continue
            uri = fs.unstrip_protocol(info["name"]) if is_url(src) else info["name"]
            found.append(Checkpoint(uri, name, _mtime(info), int(info.get("size") or 0)))
        if not found:
            raise NightlyConfigError(f"checkpoints.source {src!r} holds no file matching "
                                     f"{pattern or ', '.join(CHECKPOINT_EXTS)}")
    else:
        for item in src:
            fs, path = fsspec.core.url_to_fs(local_path(os.path.expanduser(item)))
            if not fs.isfile(path):
                raise NightlyConfigError(f"checkpoint not found: {item}")
            info = fs.info(path)
            uri = item if is_url(item) else os.path.abspath(path)
            found.append(Checkpoint(uri, os.path.basename(path), _mtime(info), int(info.get("size") or 0)))
    for ck in found:
        if not ck.name.lower().endswith(CHECKPOINT_EXTS):
            raise NightlyConfigError(f"checkpoint {ck.uri} must end with one of {', '.join(CHECKPOINT_EXTS)}")
    return found


def hash_checkpoints(cks: list[Checkpoint], state: dict) -> None:
    """sha256 of each file; reuses the hash recorded for an unchanged (uri, size, mtime)."""
    seen = state.setdefault("files", {})
    for ck in cks:
        rec = seen.get(ck.uri)
        if rec and rec.get("size") == ck.size and rec.get("mtime") == ck.mtime:
            ck.sha256 = rec["sha256"]
            continue
        ck.local = local_copy(ck.uri)
        ck.sha256 = file_sha256(ck.local)
        seen[ck.uri] = {"size": ck.size, "mtime": ck.mtime, "sha256": ck.sha256}


def pick(cfg: NightlyConfig, cks: list[Checkpoint], state: dict) -> list[Checkpoint]:
    """The checkpoints to audit tonight, oldest first (so each can be the next one's baseline)."""
    order = cfg.checkpoints.order
    by_sha: dict[str, Checkpoint] = {}
    for ck in sorted(cks, key=lambda c: c.order_key(order)):
        by_sha.setdefault(ck.sha256, ck)  # the same weights under two names: audit once
    newest_first = sorted(by_sha.values(), key=lambda c: c.order_key(order), reverse=True)
    judged = state.get("checkpoints", {})
    if cfg.checkpoints.select == "latest":
        newest_first = newest_first[:1]
    todo = [c for c in newest_first if c.sha256 not in judged]
    if cfg.checkpoints.max_per_run:
        todo = todo[: cfg.checkpoints.max_per_run]
    return sorted(todo, key=lambda c: c.order_key(order))


# -------------------------------------------------------------------------- state

def load_state(cfg: NightlyConfig) -> dict:
    import json

    p = nightly_dir(cfg) / "state.json"
    if not p.is_file():
        return {"version": STATE_VERSION, "name": cfg.name, "checkpoints": {}, "files": {}}
    state = json.loads(p.read_text())
    if state.get("version") != STATE_VERSION:
        raise NightlyConfigError(f"{p}: state version {state.get('version')!r} is not {STATE_VERSION}")
    return state


def _loadable(cfg: NightlyConfig, picked: list[Checkpoint]) -> tuple[list[Checkpoint], list[dict]]:
    """Split off checkpoints that do not load (a file still being written, a pickle with code,
    the wrong architecture): each is reported, the others are still audited, and since state
    records only judged checkpoints, a fixed file is picked up again the next night."""
    from pipelines.models.classifiers import load_classifier

    ok, bad = [], []
    for ck in picked:
        try:
            load_classifier(f"{cfg.checkpoints.arch}@{ck.local or ck.uri}")
            ok.append(ck)
        except Exception as exc:  # noqa: BLE001 - one bad file must not stop the others
            log.error("checkpoint %s does not load: %s", ck.name, exc)
            bad.append({"name": ck.name, "uri": ck.uri, "sha256": ck.sha256,
                        "error": f"{type(exc).__name__}: {' '.join(str(exc).split())[:500]}"})
    return ok, bad


