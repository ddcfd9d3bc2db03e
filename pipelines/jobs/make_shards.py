"""`sing shards make`: an ImageFolder tree -> webdataset shards (offline, once per dataset;
the read path is pipelines.io.shards)."""
from __future__ import annotations

import glob
import io
import json
import logging
import os
import re
import tarfile

from pipelines.io.shards import IMAGE_EXTS

log = logging.getLogger("sing.shards")

_SYNSET_RE = re.compile(r"^n\d{8}$")
_KEY_BAD = re.compile(r"[^A-Za-z0-9_-]")


def _class_index(classes: list[str], class_index) -> tuple[dict[str, int], bool]:
    """-> ({class folder: index}, is_imagenet)."""
    if class_index is not None:
        if isinstance(class_index, (str, os.PathLike)):
            with open(class_index) as fh:
                class_index = json.load(fh)
        if not isinstance(class_index, dict):
            raise ValueError("class_index must be a JSON object {class_name: index}")
        missing = [c for c in classes if c not in class_index]
        if missing:
            raise ValueError(f"class_index has no entry for {len(missing)} folders, e.g. {missing[:5]}")
        return {c: int(class_index[c]) for c in classes}, False
    from pipelines.models.imagenet_classes import synset_to_index

    s2i = synset_to_index()
    if all(c in s2i for c in classes):
        return {c: s2i[c] for c in classes}, True
    looks = [c for c in classes if _SYNSET_RE.match(c) and c not in s2i]
    if looks:
        log.warning("folders look like synsets but are not ImageNet-1k (%s); using sorted order", looks[:3])
    return {c: i for i, c in enumerate(classes)}, False


def _write_tar(path: str, members: list[tuple[str, bytes]]) -> None:
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp")
    with open(tmp, "wb") as fh:
        with tarfile.open(fileobj=fh, mode="w", format=tarfile.GNU_FORMAT) as tf:
            for name, data in members:
                ti = tarfile.TarInfo(name)
                ti.size = len(data)
                ti.mtime = 0
                ti.mode = 0o644
                ti.uname = ti.gname = ""
                tf.addfile(ti, io.BytesIO(data))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def make_shards(src: str, out: str, per_shard: int = 1000, class_index=None, prefix: str = "shard",
                overwrite: bool = False) -> list[str]:
    """ImageFolder (SRC/<class>/<image>) -> webdataset tars OUT/<prefix>-000000.tar ...

    Each sample: <key>.<ext> (original bytes, lower-case original extension), <key>.cls
    (index as text), <key>.json {"class_name", "synset", "source_path" (relative to SRC)}.
    key = <class folder>/<file stem> with chars outside [A-Za-z0-9_-] -> '_' (suffix -1, -2
    on a clash). Class index: ImageNet-1k synset folders (n01440764 ...) get their standard
    index, any other set of folders gets sorted order, or class_index ({name: idx} dict or
    JSON file) decides. Order is deterministic: classes sorted, files sorted within a class
    (not interleaved: shards are class-contiguous; Ray reads shards in parallel anyway).
    Tars are byte-reproducible (mtime 0, no owner). Writes OUT/class_index.json.
    """
    if per_shard < 1:
        raise ValueError("per_shard must be >= 1")
    src = os.path.abspath(os.path.expanduser(src))
    if not os.path.isdir(src):
        raise ValueError(f"source {src} is not a directory (expected SRC/<class>/<image files>)")
    classes = sorted(e.name for e in os.scandir(src) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise ValueError(f"source {src} has no class folders (expected SRC/<class>/<image files>)")
    idx, is_imagenet = _class_index(classes, class_index)
    if is_imagenet:
        from pipelines.models.imagenet_classes import imagenet_class_names

        names = imagenet_class_names()
    skipped = sum(1 for e in os.scandir(src) if e.is_file())
    samples: list[tuple[str, str, str, str]] = []  # key, class, abs path, ext
    used: set[str] = set()
    for c in classes:
        cdir = os.path.join(src, c)
        for fn in sorted(os.listdir(cdir)):
            fp = os.path.join(cdir, fn)
            stem, dot, ext = fn.rpartition(".")
            if not os.path.isfile(fp) or not dot or ext.lower() not in IMAGE_EXTS or fn.startswith("."):
                skipped += 1
                continue
            key = f"{_KEY_BAD.sub('_', c)}/{_KEY_BAD.sub('_', stem)}"
            k, n = key, 0
            while k in used:
                n += 1
                k = f"{key}-{n}"
            used.add(k)
            samples.append((k, c, fp, ext.lower()))
    if skipped:
        log.warning("make_shards: skipped %d non-image files (accepted: %s)", skipped, ", ".join(IMAGE_EXTS))
    if not samples:
        raise ValueError(f"source {src} has class folders but no images ({', '.join(IMAGE_EXTS)})")
    os.makedirs(out, exist_ok=True)
    old = sorted(glob.glob(os.path.join(glob.escape(out), f"{glob.escape(prefix)}-*.tar")))
    if old and not overwrite:
        raise FileExistsError(f"{out} already has {len(old)} {prefix}-*.tar shards; use overwrite=True")
    for p in old:
        os.remove(p)
    paths = []
    for s in range(0, len(samples), per_shard):
        members = []
        for key, c, fp, ext in samples[s: s + per_shard]:
            with open(fp, "rb") as fh:
                data = fh.read()
            meta = {"class_name": names[idx[c]] if is_imagenet else c,
                    "synset": c if is_imagenet else None,
                    "source_path": os.path.relpath(fp, src)}
            members += [(f"{key}.{ext}", data), (f"{key}.cls", str(idx[c]).encode()),
                        (f"{key}.json", json.dumps(meta, sort_keys=True).encode())]
        path = os.path.join(out, f"{prefix}-{s // per_shard:06d}.tar")
        _write_tar(path, members)
        paths.append(path)
    tmp = os.path.join(out, ".class_index.json.tmp")
    with open(tmp, "w") as fh:
        json.dump(idx, fh, indent=1, sort_keys=True)
    os.replace(tmp, os.path.join(out, "class_index.json"))
    log.info("make_shards: %d images, %d classes -> %d shards in %s", len(samples), len(classes), len(paths), out)
    return paths


def cli_args(p) -> None:
    sub = p.add_subparsers(dest="shards_cmd", required=True, metavar="WHAT")
    mk = sub.add_parser("make", help="ImageFolder tree (SRC/<class>/*.jpg) -> webdataset shards (jpg+cls+json)")
    mk.add_argument("src", help="folder with one sub-folder per class")
    mk.add_argument("--out", required=True, help="folder for the shards (OUT/<prefix>-000000.tar ...)")
    mk.add_argument("--per-shard", type=int, default=1000, help="images per shard")
    mk.add_argument("--class-index", help="JSON {folder name: class index}; default: ImageNet synsets, else sorted")
    mk.add_argument("--prefix", default="shard", help="shard file name prefix")


def cli_run(a) -> int:
    paths = make_shards(a.src, a.out, per_shard=a.per_shard, class_index=a.class_index, prefix=a.prefix)
    print(f"wrote {len(paths)} shards to {a.out}")
    return 0
