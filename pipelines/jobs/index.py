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

import functools
import io
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.errors import BadInput
from pipelines.options import PrecisionOptions, StreamOptions, add_arguments, check, from_namespace, opt
from pipelines.stages.actors import FeatureActor
from pipelines.stages.collect import ShardTally, Writer
from pipelines.stages.shard_writer import WriterSpec

log = logging.getLogger("sing.index")

FORMAT = "sing-index/1"
DTYPES = {"float16": pa.float16(), "float32": pa.float32()}


class ImageIndexError(BadInput):
    """Bad index input (exit 2)."""


def thumb_spec(size: int):
    from pipelines.models.preprocess import PreprocessSpec

    return PreprocessSpec(size=size, resize=size, interpolation="bilinear", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def _schema(dim: int, dtype: str) -> pa.Schema:
    return pa.schema([("key", pa.string()), ("shard", pa.string()), ("label", pa.int32()),
                      ("emb", pa.list_(DTYPES[dtype], dim)), ("thumb", pa.binary())])


# ----------------------------------------------------------------------------- the actor


class IndexActor(FeatureActor):
    """CLIP image embeddings (FeatureActor kind="clip") plus a JPEG thumbnail per image."""

    def __init__(self, prefix, model_spec, thumb_col, quality=85, device=None, threads=None, precision="fp32",
                 drop_views=(), writer=None, final=False, window=None):
        self.thumb_col, self.quality = thumb_col, quality
        super().__init__(prefix, "clip", model_spec, drop_views=drop_views, device=device, threads=threads,
                         precision=precision, writer=writer, final=final, window=window)

    def _extra(self, batch: dict, ok: np.ndarray) -> dict:
        from PIL import Image

        thumbs = np.empty(len(batch["key"]), dtype=object)
        thumbs[:] = b""
        for i in np.flatnonzero(ok):
            buf = io.BytesIO()
            Image.fromarray(np.asarray(batch[self.thumb_col][i])).save(buf, "JPEG", quality=self.quality)
            thumbs[i] = buf.getvalue()
        return {"thumb": thumbs}


# ----------------------------------------------------------------------------- building


@dataclass
class IndexOptions(PrecisionOptions, StreamOptions):
    clip: str = opt(help="CLIP model (openclip:ARCH@TAG)")
    out: str = opt(help="index directory (local)", identity=False)
    thumb_size: int = opt(96, "thumbnail side in pixels (16-512)")
    dtype: str = opt("float16", "embedding storage type", choices=tuple(DTYPES))


def _meta_path(out) -> Path:
    return Path(out) / "index.json"


def part_file(out, shard: str) -> Path:
    return Path(out) / "parts" / f"{shard}.parquet"


def index_files(cols: dict, shard: str, out: str, dim: int, dtype: str) -> list[tuple]:
    """One shard's index files (built and written by the index actor: stages.shard_writer): its
    errors, then its part (the marker)."""
    from pipelines.stages.audit_tables import error_table

    ok = cols["status"] == "ok"
    np_dtype = np.float16 if dtype == "float16" else np.float32
    emb = np.asarray(cols["z/emb"][ok], dtype=np.float32).reshape(-1, dim).astype(np_dtype)
    table = pa.table({
        "key": pa.array(cols["key"][ok].tolist(), pa.string()),
        "shard": pa.array([shard] * int(ok.sum()), pa.string()),
        "label": pa.array(cols["label"][ok].astype(np.int32), pa.int32()),
        "emb": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1), DTYPES[dtype]), dim),
        "thumb": pa.array(list(cols["z/thumb"][ok]), pa.binary())}, schema=_schema(dim, dtype))
    return [("errors", str(Path(out) / "errors" / f"{shard}.parquet"), error_table(cols, shard)),
            ("parts", str(part_file(out, shard)), table)]


def build_index(cfg: IndexOptions) -> dict:
    from pipelines.jobs import spine
    from pipelines.models.clip import load_clip
    from pipelines.stages.read import unique_views, view_column

    check(cfg)
    if not 16 <= cfg.thumb_size <= 512:
        raise ImageIndexError(f"--thumb-size must be in [16, 512], got {cfg.thumb_size}")
    shards = spine.expand(cfg.shards)
    clip = load_clip(cfg.clip)
    meta = {"format": FORMAT, "clip_model": clip.model_id, "clip_identity": clip.identity, "dim": clip.embed_dim,
            "dtype": cfg.dtype,
            "thumb_size": cfg.thumb_size, "precision": cfg.precision}
    old = _meta_path(cfg.out)
    if old.is_file():  # one index per directory: refuse to mix two builds
        prev = json.loads(old.read_text())
        diff = {k: (prev.get(k), v) for k, v in meta.items() if prev.get(k) != v}
        if diff:
            raise ImageIndexError(f"{cfg.out} already holds an index built differently ("
                                  + ", ".join(f"{k}: {a!r} there vs {b!r} now" for k, (a, b) in diff.items())
                                  + "); use another --out")
    plan = spine.plan("index", cfg, {}, lambda _run: {p.stem for p in (Path(cfg.out) / "parts").glob("*.parquet")},
                      {**meta, "clip_sha256": clip.weights_sha256(), "preprocess": asdict(clip.preprocess)},
                      shards, run_id="index", manifest_file=str(old))
    if plan.todo:
        tspec = thumb_spec(cfg.thumb_size)
        views = unique_views([clip.preprocess, tspec])
        writer = WriterSpec(functools.partial(index_files, out=cfg.out, dim=clip.embed_dim, dtype=cfg.dtype),
                            frozenset(plan.done))
        actor = spine.ActorSpec(IndexActor, dict(prefix="z", model_spec=cfg.clip, thumb_col=view_column(tspec),
                                                 precision=cfg.precision, writer=writer))
        drop = [view_column(v) for v in views]
        tally = ShardTally([Writer("z", "index")], total=len(plan.todo), what="index: shard")
        spine.run(plan, cfg, "the index stream",
                  lambda todo: spine.stream(todo, cfg, views, [actor], spine.ActorPlan.resolve(cfg), drop), ["z"],
                  tally.batch, tally.shard)
    n = sum(pq.ParquetFile(p).metadata.num_rows for p in (Path(cfg.out) / "parts").glob("*.parquet"))
    n_err = sum(pq.ParquetFile(p).metadata.num_rows for p in (Path(cfg.out) / "errors").glob("*.parquet"))
    return spine.finish(plan, images=n, errors=n_err)


def cli_args(p) -> None:
    add_arguments(p, IndexOptions)


def cli_run(a) -> int:
    man = build_index(from_namespace(IndexOptions, a, progress=not a.quiet))
    print(f"index {a.out}: {man['images']} images ({man['clip_model']}, {man['dim']}-d {man['dtype']}), "
          f"{man['errors']} errors, {man['shards']['skipped_done']} of {man['shards']['total']} shards already done")
    return 0


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

    def check_clip(self, clip) -> None:
        """`clip`: the translator's CLIP, an identity or a MODEL string (clip_source)."""
        from pipelines.models.clip_source import ClipIdentityMismatch, as_identity, check_same_clip, recorded_identity

        used = as_identity(clip)
        what, remedy = f"index {self.root}", f"rebuild it with `sing index --clip {used.get('model')}`"
        try:
            check_same_clip(recorded_identity(self.meta, what, remedy), used, what, remedy)
        except ClipIdentityMismatch as exc:
            raise ImageIndexError(str(exc)) from None

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
