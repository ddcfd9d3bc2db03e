"""`sing index`: an index of CLIP image embeddings (with thumbnails) for visual examples.

    DIR/index.json              clip model, embedding dim and dtype, thumbnail size, counts
    DIR/parts/<shard>.parquet   key, shard, label, emb (fixed-size list, float16|float32),
                                thumb (JPEG bytes, square centre crop)
    DIR/errors/<shard>.parquet  per-sample read/decode errors (the errors schema)

Built by one Ray Data stream: the shared read/decode stage (one decode gives the CLIP view and
the thumbnail view) feeding a CLIP FeatureActor that also JPEG-encodes the thumbnails. Parts
are written atomically per shard; a shard whose part exists is done, so a rerun resumes.
`ImageIndex` loads the embeddings (not the thumbnails) and answers cosine k-NN queries;
`sing explain --index DIR` uses it to show the real images nearest to T(f) and T(f~).
"""
from __future__ import annotations

import io
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.stages.actors import FeatureActor
from pipelines.stages.watchdog import DEFAULT_STALL_S, with_stall_timeout

log = logging.getLogger("sing.index")

FORMAT = "sing-index/1"
DTYPES = {"float16": pa.float16(), "float32": pa.float32()}


class ImageIndexError(ValueError):
    """Bad index input (user-facing, exit 2)."""


def thumb_spec(size: int):
    from pipelines.models.preprocess import PreprocessSpec

    return PreprocessSpec(size=size, resize=size, interpolation="bilinear", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def _schema(dim: int, dtype: str) -> pa.Schema:
    return pa.schema([("key", pa.string()), ("shard", pa.string()), ("label", pa.int32()),
                      ("emb", pa.list_(DTYPES[dtype], dim)), ("thumb", pa.binary())])


# ----------------------------------------------------------------------------- the actor


class IndexActor(FeatureActor):
    """CLIP image embeddings (FeatureActor kind="clip") plus a JPEG thumbnail per image."""

    def __init__(self, prefix, model_spec, thumb_col, quality=85, device=None, threads=None, precision="fp32"):
        super().__init__(prefix, "clip", model_spec, drop_views=(), device=device, threads=threads,
                         precision=precision)
        self.thumb_col, self.quality = thumb_col, quality

    def __call__(self, batch: dict) -> dict:
        from PIL import Image

        out = super().__call__(batch)
        thumbs = np.empty(len(batch["key"]), dtype=object)
        thumbs[:] = b""
        for i in np.flatnonzero(batch["status"] == "ok"):
            buf = io.BytesIO()
            Image.fromarray(np.asarray(batch[self.thumb_col][i])).save(buf, "JPEG", quality=self.quality)
            thumbs[i] = buf.getvalue()
        out = {k: v for k, v in out.items() if not k.startswith("img:")}
        out[f"{self.prefix}/thumb"] = thumbs
        return out


# ----------------------------------------------------------------------------- building


@dataclass
class IndexConfig:
    clip: str
    shards: list[str]
    out: str
    thumb_size: int = 96
    dtype: str = "float16"
    batch_size: int = 64
    device: str | None = None
    threads: int | None = None
    max_pixels: int | None = None
    progress: bool = True
    precision: str = "fp32"  # of the CLIP image tower (pipelines.models.precision)


def _meta_path(out) -> Path:
    return Path(out) / "index.json"


def part_file(out, shard: str) -> Path:
    return Path(out) / "parts" / f"{shard}.parquet"


def build_index(cfg: IndexConfig) -> dict:
    from pipelines.models.clip import load_clip
    from pipelines.stages.collect import ERRORS_SCHEMA
    from pipelines.io.layout import write_json_atomic, write_table_atomic
    from pipelines.io.manifest import code_version, utc_now
    from pipelines.stages.ray_session import actor_gpus, cluster_cpus, configure_data_context, ensure_ray
    from pipelines.stages.read import read_decode, unique_views, view_column
    from pipelines.io.shards import expand_shards, shard_name
    from pipelines.models.precision import check_precision
    from pipelines.stages.regroup import ShardGrouper

    if cfg.dtype not in DTYPES:
        raise ImageIndexError(f"--dtype must be one of {sorted(DTYPES)}, got {cfg.dtype!r}")
    if not 16 <= cfg.thumb_size <= 512:
        raise ImageIndexError(f"--thumb-size must be in [16, 512], got {cfg.thumb_size}")
    started = utc_now()
    shards = expand_shards(cfg.shards)
    names = [shard_name(s) for s in shards]
    if len(set(names)) != len(names):
        raise ImageIndexError("two shards share a file name; shard names key the index parts")
    clip = load_clip(cfg.clip)
    meta = {"format": FORMAT, "clip_model": clip.model_id, "dim": clip.embed_dim, "dtype": cfg.dtype,
            "thumb_size": cfg.thumb_size, "precision": check_precision(cfg.precision)}
    old = _meta_path(cfg.out)
    if old.is_file():
        prev = json.loads(old.read_text())
        diff = {k: (prev.get(k), v) for k, v in meta.items() if prev.get(k) != v}
        if diff:
            raise ImageIndexError(f"{cfg.out} already holds an index built differently ("
                                  + ", ".join(f"{k}: {a!r} there vs {b!r} now" for k, (a, b) in diff.items())
                                  + "); use another --out")
    todo = [s for s, n in zip(shards, names) if not part_file(cfg.out, n).is_file()]
    manifest = {**meta, "status": "running", "started_at": started, "code_version": code_version(),
                "clip_sha256": clip.weights_sha256(), "preprocess": asdict(clip.preprocess),
                "config": {**asdict(cfg), "argv": sys.argv},
                "shards": {"total": len(shards), "skipped_done": len(shards) - len(todo), "todo": len(todo)}}
    write_json_atomic(manifest, old)
    schema = _schema(clip.embed_dim, cfg.dtype)
    np_dtype = np.float16 if cfg.dtype == "float16" else np.float32
    t0 = time.perf_counter()
    if todo:
        ray = ensure_ray()
        from pipelines.stages.actor_pool import actor_pool

        configure_data_context(cfg.progress)
        tspec = thumb_spec(cfg.thumb_size)
        views = unique_views([clip.preprocess, tspec])
        gpus = actor_gpus(cfg.device)
        n = max(1, int(gpus))
        ds = ray.data.from_items([{"path": s} for s in todo], override_num_blocks=len(todo))
        ds = ds.map_batches(read_decode, batch_size=1, num_cpus=1,
                            fn_kwargs={"views": views, "max_pixels": cfg.max_pixels})
        ds = ds.map_batches(IndexActor, batch_size=cfg.batch_size, compute=actor_pool(n),
                            num_cpus=0.5 if not gpus else 1, num_gpus=1 if gpus else 0,
                            fn_constructor_kwargs=dict(prefix="z", model_spec=cfg.clip, thumb_col=view_column(tspec),
                                                       device=cfg.device, precision=cfg.precision,
                                                       threads=cfg.threads or (None if gpus else
                                                                               max(1, int(cluster_cpus())))))
        grouper = ShardGrouper()
        batches = ds.iter_batches(batch_size=None, batch_format="numpy")
        for batch in with_stall_timeout(batches, DEFAULT_STALL_S, "the index stream"):
            for shard, cols, _t_read in grouper.add(batch):
                ok = cols["status"] == "ok"
                bad = cols["status"] == "error"
                write_table_atomic(pa.table({
                    "key": pa.array(cols["key"][bad].tolist(), pa.string()),
                    "shard": pa.array([shard] * int(bad.sum()), pa.string()),
                    "stage": pa.array(cols["stage"][bad].tolist(), pa.string()),
                    "reason": pa.array(cols["reason"][bad].tolist(), pa.string())}, schema=ERRORS_SCHEMA),
                    Path(cfg.out) / "errors" / f"{shard}.parquet")
                emb = np.asarray(cols["z/emb"][ok], dtype=np.float32).reshape(-1, clip.embed_dim).astype(np_dtype)
                table = pa.table({
                    "key": pa.array(cols["key"][ok].tolist(), pa.string()),
                    "shard": pa.array([shard] * int(ok.sum()), pa.string()),
                    "label": pa.array(cols["label"][ok].astype(np.int32), pa.int32()),
                    "emb": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1), DTYPES[cfg.dtype]),
                                                             clip.embed_dim),
                    "thumb": pa.array(list(cols["z/thumb"][ok]), pa.binary())}, schema=schema)
                write_table_atomic(table, part_file(cfg.out, shard))  # last: marks the shard done
                log.info("index: shard %s (%d images, %d errors)", shard, table.num_rows, int(bad.sum()))
        if grouper.unfinished():
            raise RuntimeError(f"stream ended with incomplete shards {grouper.unfinished()}; rerun to retry them")
    n = sum(pq.ParquetFile(p).metadata.num_rows for p in (Path(cfg.out) / "parts").glob("*.parquet"))
    n_err = sum(pq.ParquetFile(p).metadata.num_rows for p in (Path(cfg.out) / "errors").glob("*.parquet"))
    manifest.update({"status": "complete", "finished_at": utc_now(), "images": n, "errors": n_err,
                     "wall_seconds": round(time.perf_counter() - t0, 3)})
    write_json_atomic(manifest, old)
    return manifest


# ----------------------------------------------------------------------------- querying


@dataclass
class Hit:
    key: str
    shard: str
    label: int
    cosine: float
    row: int

    def to_dict(self) -> dict:
        return {"key": self.key, "shard": self.shard, "label": self.label, "cosine": self.cosine}


class ImageIndex:
    """All embeddings of an index in memory (unit rows, float32); thumbnails read on demand."""

    def __init__(self, root: Path, meta: dict, keys, shards, labels, emb):
        self.root, self.meta = root, meta
        self.keys, self.shards, self.labels, self.emb = keys, shards, labels, emb

    @classmethod
    def open(cls, root) -> "ImageIndex":
        root = Path(root)
        mp = _meta_path(root)
        if not mp.is_file():
            raise FileNotFoundError(f"not an image index: {mp} is missing (build one with `sing index`)")
        meta = json.loads(mp.read_text())
        if meta.get("format") != FORMAT:
            raise ImageIndexError(f"{root}: unsupported index format {meta.get('format')!r}, expected {FORMAT}")
        parts = sorted((root / "parts").glob("*.parquet"))
        d = int(meta["dim"])
        keys, shards, labels, embs = [], [], [], []
        for p in parts:
            t = pq.read_table(p, columns=["key", "shard", "label", "emb"])
            keys += t.column("key").to_pylist()
            shards += t.column("shard").to_pylist()
            labels.append(t.column("label").to_numpy())
            flat = t.column("emb").combine_chunks().flatten().to_numpy(zero_copy_only=False)
            e = np.asarray(flat, dtype=np.float32).reshape(t.num_rows, d)
            norms = np.linalg.norm(e, axis=1, keepdims=True)
            # unit rows, kept in the stored dtype (float16 halves the memory of a large index)
            embs.append((e / np.where(norms > 0, norms, 1.0)).astype(flat.dtype, copy=False))
        if not keys:
            raise ImageIndexError(f"index {root} holds no images (was `sing index` interrupted or were all "
                                  "samples errors?)")
        emb = np.concatenate(embs)
        return cls(root, meta, np.asarray(keys, dtype=object), np.asarray(shards, dtype=object),
                   np.concatenate(labels).astype(np.int64), emb)

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def clip_model(self) -> str:
        return self.meta["clip_model"]

    def check_clip(self, clip_model: str) -> None:
        if clip_model != self.clip_model:
            raise ImageIndexError(f"index {self.root} holds {self.clip_model!r} embeddings, but the translator maps "
                                  f"into {clip_model!r}: rebuild it with `sing index --clip {clip_model}`")

    def search(self, query, k: int, exclude=frozenset()) -> list[list[Hit]]:
        """Cosine k nearest neighbours for each query row (d,) or (B, d); `exclude` is a set of
        (shard, key) pairs never returned (the query image itself)."""
        q = np.asarray(query.detach().cpu().numpy() if hasattr(query, "detach") else query, dtype=np.float64)
        q = q[None] if q.ndim == 1 else q
        if q.shape[1] != self.emb.shape[1]:
            raise ImageIndexError(f"query is {q.shape[1]}-d but the index holds {self.emb.shape[1]}-d embeddings")
        q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
        chunk = 1 << 16
        sims = np.concatenate([q @ self.emb[i:i + chunk].astype(np.float32).T
                               for i in range(0, len(self), chunk)], axis=1)
        kk = min(len(self), k + len(exclude))
        out = []
        for row in sims:
            cand = np.argpartition(-row, kk - 1)[:kk] if kk < len(row) else np.arange(len(row))
            cand = cand[np.argsort(-row[cand], kind="stable")]
            hits = [Hit(str(self.keys[j]), str(self.shards[j]), int(self.labels[j]), float(row[j]), int(j))
                    for j in cand if (self.shards[j], self.keys[j]) not in exclude]
            out.append(hits[:k])
        return out

    def thumbnails(self, pairs) -> list[bytes]:
        """JPEG thumbnails for (shard, key) pairs, read from the shards' part files."""
        want: dict[str, set] = {}
        for shard, key in pairs:
            want.setdefault(shard, set()).add(key)
        found: dict[tuple, bytes] = {}
        for shard, keys in want.items():
            t = pq.read_table(part_file(self.root, shard), columns=["key", "thumb"])
            for key, thumb in zip(t.column("key").to_pylist(), t.column("thumb").to_pylist()):
                if key in keys:
                    found[(shard, key)] = thumb
        return [found.get((s, k), b"") for s, k in pairs]
