"""The images behind a gallery: where each shard is, its thumbnails read by key in one bounded
pass, and the explain views that exist for an image.

Where a shard is, first match wins:
  1. `--shards` globs given to `sing report` (shards that moved since the run);
  2. the run manifest's `shard_paths` (OUT/runs/<run_id>.json, written by every shard job);
  3. the run manifest's `config.shards` globs, expanded now (manifests older than shard_paths).
Reading: only the shards that hold a wanted key, each read from its start until its last
wanted key is found (webdataset keys are contiguous), never a full scan of the dataset.

Explain views (`sing report --explain-dir DIR`): every `sing explain --json DIR/NAME.json`
result lists its images by shard and key; the view of an image is the contact sheet the run
wrote (`--sheet`, recorded in the JSON, or DIR/NAME.html beside it) at the image's row anchor
(pipelines.models.thumbnails.explain_anchor), else the JSON itself. A sheet without a JSON
beside it is found by its row anchors.
"""
from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

from .errors import QueryError

log = logging.getLogger("sing.report")

THUMB_SIZE = 160  # pixels, square (centre crop)


def _expand(globs) -> dict[str, str]:
    from pipelines.io.shards import NoShardsError, expand_shards, shard_name

    try:
        return {shard_name(p): p for p in expand_shards(list(globs))}
    except NoShardsError as exc:
        raise QueryError(f"--shards: {exc}") from None


def shard_locations(root: Path, runs: list[str], shard_globs: list[str] | None) -> dict[str, dict[str, str]]:
    """run id -> {shard name: path or URL}, by the rules in the module docstring. Bad
    `--shards` globs raise QueryError; a manifest whose globs no longer match gives none."""
    given = _expand(shard_globs) if shard_globs else {}
    out = {}
    for run in runs:
        found: dict[str, str] = {}
        try:
            man = json.loads((root / "runs" / f"{run}.json").read_text())
        except (OSError, ValueError):
            man = {}
        found.update(man.get("shard_paths") or {})
        if not found and (man.get("config") or {}).get("shards"):
            try:
                found.update(_expand(man["config"]["shards"]))
            except QueryError:
                pass  # moved: --shards says where
        out[run] = {**found, **given}
    return out


def read_thumbnails(wanted: dict[str, set[str]],
                    size: int = THUMB_SIZE) -> tuple[dict[tuple[str, str], bytes], dict[tuple[str, str], str]]:
    """wanted: shard path -> keys. One pass per shard file, stopped at its last wanted key.
    Returns ((path, key) -> JPEG bytes, (path, key) -> why it has no thumbnail)."""
    from pipelines.io.images import ImageDecodeError, decode_image
    from pipelines.io.shards import Sample, iter_shard
    from pipelines.models.thumbnails import thumbnail_jpeg

    thumbs, missing = {}, {}
    for path in sorted(wanted):
        keys = set(wanted[path])
        it = iter_shard(path, require_label=False)
        try:
            for item in it:
                if item.key not in keys:
                    continue
                keys.discard(item.key)
                if not isinstance(item, Sample):
                    missing[(path, item.key)] = f"{item.stage}: {item.reason}"
                else:
                    try:
                        thumbs[(path, item.key)] = thumbnail_jpeg(decode_image(item.image), size)
                    except ImageDecodeError as exc:
                        missing[(path, item.key)] = str(exc)
                if not keys:
                    break  # the rest of the shard holds nothing wanted
        finally:
            it.close()
        missing.update({(path, k): f"not in {path}" for k in keys})
    return thumbs, missing


_ANCHOR = re.compile(r"""id=['"](img-[^'"]+)['"]""")


def explain_views(explain_dir: str | None, out: Path) -> dict[str, str]:
    """explain_anchor(shard, key) -> href relative to the report directory `out`."""
    from pipelines.models.thumbnails import explain_anchor

    if not explain_dir:
        return {}
    d = Path(explain_dir).expanduser()
    if not d.is_dir():
        raise QueryError(f"--explain-dir {explain_dir}: not a directory")
    views: dict[str, str] = {}

    def href(p: Path, anchor: str | None = None) -> str:
        rel = os.path.relpath(p.resolve(), out.resolve()).replace(os.sep, "/")
        return rel + (f"#{anchor}" if anchor else "")

    for sheet in sorted(d.glob("*.htm*")):
        for anchor in _ANCHOR.findall(sheet.read_text(errors="replace")):
            views.setdefault(anchor, href(sheet, anchor))
    for js in sorted(d.glob("*.json")):
        try:
            doc = json.loads(js.read_text())
            images, meta = doc["images"], doc["meta"]
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not an explain result
        sheet = Path(meta["sheet"]) if meta.get("sheet") else js.with_suffix(".html")
        for r in images:
            if not (isinstance(r, dict) and r.get("shard") and r.get("key")):
                continue
            a = explain_anchor(r["shard"], r["key"])
            if sheet.suffix.lower() in (".html", ".htm") and sheet.is_file():
                views[a] = href(sheet, a)
            else:
                views.setdefault(a, href(js))
    log.info("explain views: %d images in %s", len(views), d)
    return views
