"""Webdataset shards: glob expansion, robust reading, and `sing shards make`.

A shard is an uncompressed tar; members are grouped into samples by webdataset key (the
member path up to the first dot of its basename; consecutive members with one key form one
sample). Reading never raises on bad data: per-sample problems become SampleError rows and a
truncated/corrupt tar ends with one SampleError(key="<shard>#truncated", stage="read").
"""

from __future__ import annotations

import glob
import io
import json
import logging
import os
import re
import tarfile
from dataclasses import dataclass, field
from typing import Iterator

from pipelines.io.remote import is_url

log = logging.getLogger(__name__)

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")  # preference order when a sample has several


@dataclass
class Sample:
    key: str
    shard: str
    image: bytes
    ext: str
    label: int | None
    meta: dict = field(default_factory=dict)


@dataclass
class SampleError:
    key: str
    shard: str
    stage: str  # read | decode | label | model
    reason: str


class NoShardsError(ValueError):
    """A shard pattern matched no file."""


# ----------------------------------------------------------------------------- expansion

_BRACE_RE = re.compile(r"\{([^{}]*)\}")


def _brace_expand(p: str) -> list[str]:
    """{000..009} zero-padded numeric ranges and {a,b} lists, nested left to right."""
    m = _BRACE_RE.search(p)
    if not m:
        return [p]
    inner = m.group(1)
    r = re.fullmatch(r"(-?\d+)\.\.(-?\d+)", inner)
    if r:
        lo, hi = r.group(1), r.group(2)
        width = len(lo) if lo.startswith("0") and len(lo) > 1 else 0
        a, b = int(lo), int(hi)
        step = 1 if b >= a else -1
        items = [str(i).zfill(width) for i in range(a, b + step, step)]
    elif "," in inner:
        items = inner.split(",")
    else:
        return [p]  # literal braces (no range, no list): leave the rest unexpanded
    out = []
    for it in items:
        out.extend(_brace_expand(p[: m.start()] + it + p[m.end():]))
    return out


def _has_magic(p: str) -> bool:
    return any(c in p for c in "*?[")


def expand_shards(patterns: str | list[str]) -> list[str]:
    """Expand shard patterns to a sorted, de-duplicated list of tar paths/URLs.

    Each pattern may be a local path, a directory (means DIR/*.tar), a glob, a brace range
    (shard-{000000..000009}.tar), or an fsspec URL (s3://bucket/x/*.tar, gs://...). Every
    pattern (and every literal brace-expanded name) must match something, else
    NoShardsError names it: a typo never silently shrinks a run.
    """
    if isinstance(patterns, (str, os.PathLike)):
        patterns = [patterns]
    patterns = [os.fspath(p) for p in patterns]
    if not patterns:
        raise NoShardsError("no shard pattern given")
    found: set[str] = set()
    for pat in patterns:
        hits: list[str] = []
        for p in _brace_expand(pat.strip()):
            if is_url(p):
                import fsspec

                fs, path = fsspec.core.url_to_fs(p)
                if _has_magic(path):
                    got = [fs.unstrip_protocol(x) for x in fs.glob(path)]
                elif fs.isdir(path):
                    got = [fs.unstrip_protocol(x) for x in fs.glob(path.rstrip("/") + "/*.tar")]
                elif fs.exists(path):
                    got = [fs.unstrip_protocol(path)]
                else:
                    got = []
            else:
                lp = os.path.expanduser(p[len("file://"):] if p.startswith("file://") else p)
                if os.path.isdir(lp):
                    got = glob.glob(os.path.join(glob.escape(lp), "*.tar"))
                elif _has_magic(lp):
                    got = [x for x in glob.glob(lp) if os.path.isfile(x)]
                else:
                    got = [lp] if os.path.isfile(lp) else []
                got = [os.path.abspath(x) for x in got]
            if not got and not _has_magic(p) and p != pat.strip():
                raise NoShardsError(f'no shard matched "{p}" (from pattern "{pat}")')
            hits.extend(got)
        if not hits:
            raise NoShardsError(f'no shard matched "{pat}"')
        found.update(hits)
    return sorted(found)


def shard_name(path: str) -> str:
    """File stem without .tar: '/x/shard-000001.tar' -> 'shard-000001'."""
    base = os.path.basename(str(path).rstrip("/"))
    return base[:-4] if base.endswith(".tar") else base


# ----------------------------------------------------------------------------- reading


def _split_key(name: str) -> tuple[str, str]:
    """webdataset convention: key = dir + basename up to the first dot, ext = the rest."""
    d, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    key = f"{d}/{stem}" if d else stem
    return key, ext.lower() if dot else ""


def _make_sample(key: str, shard: str, parts: dict[str, bytes], require_label: bool):
    ext = next((e for e in IMAGE_EXTS if e in parts), None)
    if ext is None:
        return SampleError(key, shard, "read",
                           f"no image member (.{'/.'.join(IMAGE_EXTS)}); members: {sorted(parts) or 'none'}")
    meta: dict = {}
    label = None
    label_err = None
    if "json" in parts:
        try:
            j = json.loads(parts["json"].decode("utf-8"))
            if isinstance(j, dict):
                meta = j
            else:
                meta = {"json": j}
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            label_err = f"invalid json member: {e}"
    if "cls" in parts:
        txt = parts["cls"].decode("utf-8", "replace").strip()
        try:
            label = int(txt)
        except ValueError:
            return SampleError(key, shard, "label", f"cls is not an integer: {txt[:50]!r}")
    elif "label" in meta:
        try:
            label = int(meta["label"])
            if label != meta["label"]:
                raise ValueError
        except (TypeError, ValueError):
            return SampleError(key, shard, "label", f"json label is not an integer: {meta['label']!r}")
    if label is None and require_label:
        why = label_err or "no cls member and no json 'label'"
        return SampleError(key, shard, "label", why)
    return Sample(key=key, shard=shard, image=parts[ext], ext=ext, label=label, meta=meta)


DEFAULT_MAX_SAMPLE_BYTES = 64 << 20


def iter_shard(path: str, require_label: bool = True,
               max_sample_bytes: int = DEFAULT_MAX_SAMPLE_BYTES) -> Iterator[Sample | SampleError]:
    """Yield Samples and SampleErrors of one tar shard (local path or fsspec URL); never raises
    on bad data. A damaged tar yields every sample before the damage and then one
    SampleError(key='<shard>#truncated', stage='read'): a sample whose member data is cut is
    dropped (named in the reason); when the damage is a header (or a missing end of archive),
    the last sample read is still yielded, since all of its members read so far are intact.
    A member larger than max_sample_bytes is never read (the tar reader seeks past it): its
    sample becomes a SampleError."""
    shard = shard_name(path)
    try:
        import fsspec

        fh = fsspec.open(path, "rb").open()
    except Exception as e:  # noqa: BLE001
        yield SampleError(f"{shard}#truncated", shard, "read", f"cannot open {path}: {type(e).__name__}: {e}")
        return
    try:
        yield from _read_tar(fh, shard, require_label, max_sample_bytes)
    finally:
        fh.close()


def _damage(shard: str, reason: str, pending: str | None = None) -> SampleError:
    extra = f"; sample {pending!r} was being read and is dropped" if pending else ""
    return SampleError(f"{shard}#truncated", shard, "read", reason + extra)


def _missing_end(fh, end: int, size: int) -> str | None:
    """tarfile stops silently on a missing/invalid header: require the end-of-archive block."""
    fh.seek(end)
    tail = fh.read(512)
    if len(tail) < 512:
        return f"file ends without the end-of-archive marker at offset {end} of {size} bytes"
    if tail.strip(b"\0"):
        return f"invalid tar header at offset {end} of {size} bytes"
    return None


def _read_tar(fh, shard: str, require_label: bool, max_sample_bytes: int) -> Iterator[Sample | SampleError]:
    oversized: dict[str, str] = {}  # key -> why its sample is refused

    def emit(key, parts):
        if key in oversized:
            return SampleError(key, shard, "read", oversized.pop(key))
        return _make_sample(key, shard, parts, require_label)

    try:
        size = fh.seek(0, io.SEEK_END)
        fh.seek(0)
        tf = tarfile.open(fileobj=fh, mode="r:")
    except Exception as e:  # noqa: BLE001
        yield _damage(shard, f"not a readable tar: {type(e).__name__}: {e}")
        return
    seen: set[str] = set()
    cur_key: str | None = None
    parts: dict[str, bytes] = {}
    it = iter(tf)
    while True:
        try:
            m = next(it)
        except StopIteration:
            break
        except Exception as e:  # noqa: BLE001
            if cur_key is not None:
                yield emit(cur_key, parts)
            yield _damage(shard, f"corrupt tar header after offset {tf.offset}: {e}")
            return
        if not m.isfile():
            continue
        key, ext = _split_key(m.name)
        if key != cur_key:
            if cur_key is not None:
                yield emit(cur_key, parts)
            if key in seen:
                # members of one key must be contiguous (webdataset semantics)
                cur_key, parts = None, {}
                yield SampleError(key, shard, "read", "duplicate key: its members are not contiguous")
                continue
            seen.add(key)
            cur_key, parts = key, {}
        if m.size > max_sample_bytes:
            oversized.setdefault(key, f"member {m.name!r} is {m.size} bytes, above the limit of "
                                      f"{max_sample_bytes} (--max-sample-bytes); not read")
            continue
        try:
            data = tf.extractfile(m).read()
        except Exception as e:  # noqa: BLE001
            yield _damage(shard, f"member {m.name!r} ({m.size} bytes at offset {m.offset_data}) "
                                 f"is cut short: {e}", cur_key)
            return
        if len(data) != m.size:
            yield _damage(shard, f"member {m.name!r} is cut short ({len(data)} of {m.size} bytes)", cur_key)
            return
        if ext in parts:
            log.warning("%s: key %s has two %r members; keeping the first", shard, key, ext)
        else:
            parts[ext] = data
    if cur_key is not None:
        yield emit(cur_key, parts)
    why = _missing_end(fh, tf.offset, size)
    if why:
        yield _damage(shard, why)
