"""`sing embed-images`: the CLIP image embeddings of a set of shards, computed once and kept, so
that any number of translator fits (`sing fit-translator --clip-embeddings DIR`, the
leaderboard's every model) read them instead of running CLIP again.

    DIR/embeddings.json             the CLIP's full identity (clip_source), dim, precision, counts;
                                    `clip_forwards`: images CLIP embedded over every run
    DIR/embeddings/<shard>.parquet  key, shard, label, emb (fixed-size list float32): one row per
                                    readable image, as the fit's CLIP actor embeds it
    DIR/errors/<shard>.parquet      the samples that could not be read or decoded

The audit's spine: the read stage, a CLIP FeatureActor that writes each shard where it embedded
it (stages.shard_writer), resumable (a shard whose embeddings file exists is done).
"""
from __future__ import annotations

import functools
import json
import logging
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.errors import BadInput
from pipelines.io.layout import fs_of, join, parquet_stems, read_json
from pipelines.options import PrecisionOptions, StreamOptions, add_arguments, check, from_namespace, opt

log = logging.getLogger("sing.embed_images")

FORMAT = "sing-clip-embeddings/1"


class EmbeddingsError(BadInput):
    """Bad `sing embed-images` input, or a cache that does not fit its use (exit 2)."""


@dataclass
class EmbedImagesOptions(PrecisionOptions, StreamOptions):
    clip: str = opt(help="CLIP model (openclip:ARCH@TAG) whose image embeddings are computed")
    out: str = opt(help="the embeddings directory (local path or fsspec URL)", identity=False)


def manifest_path(out) -> str:
    return join(out, "embeddings.json")


def shard_path(out, shard: str) -> str:
    return join(out, "embeddings", f"{shard}.parquet")


def embedding_files(cols: dict, shard: str, out: str, dim: int, prefix: str = "z") -> list[tuple]:
    """One shard's files (built and written by the CLIP actor): errors, then the embeddings."""
    from pipelines.stages.audit_tables import error_table

    ok = cols["status"] == "ok"
    emb = np.asarray(cols[f"{prefix}/emb"][ok], dtype=np.float32).reshape(-1, dim)
    table = pa.table({"key": pa.array(cols["key"][ok].tolist(), pa.string()),
                      "shard": pa.array([shard] * int(ok.sum()), pa.string()),
                      "label": pa.array(cols["label"][ok].astype(np.int32), pa.int32()),
                      "emb": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1), pa.float32()), dim)})
    return [("errors", join(out, "errors", f"{shard}.parquet"), error_table(cols, shard)),
            ("embeddings", shard_path(out, shard), table)]


def done(out) -> set[str]:
    return parquet_stems(join(out, "embeddings"))


def _meta(cfg: EmbedImagesOptions, clip) -> dict:
    return {"format": FORMAT, "clip_model": clip.model_id, "clip_identity": clip.identity, "dim": clip.embed_dim,
            "precision": cfg.precision, "preprocess": asdict(clip.preprocess)}


def _check_same(out, meta: dict) -> dict | None:
    """The manifest already in `out`; refused when it was built differently (one cache per CLIP,
    precision and transform)."""
    prev = read_json(manifest_path(out))
    if prev is None:
        return None
    meta = json.loads(json.dumps(meta, default=str))  # as the manifest holds it (tuples are lists there)
    diff = {k: (prev.get(k), v) for k, v in meta.items() if prev.get(k) != v}
    if diff:
        raise EmbeddingsError(f"{out} already holds CLIP embeddings made differently ("
                              + ", ".join(f"{k}: {a!r} there vs {b!r} now" for k, (a, b) in diff.items())
                              + "); use another --out")
    return prev


def embed_images(cfg: EmbedImagesOptions) -> dict:
    from pipelines.jobs import spine
    from pipelines.models.clip import load_clip
    from pipelines.stages.actors import FeatureActor
    from pipelines.stages.collect import ShardTally, Writer
    from pipelines.stages.read import view_column
    from pipelines.stages.shard_writer import WriterSpec

    check(cfg)
    shards = spine.expand(cfg.shards)
    clip = load_clip(cfg.clip)
    meta = _meta(cfg, clip)
    prev = _check_same(cfg.out, meta) or {}
    plan = spine.plan("embed-images", cfg, {}, lambda _run: done(cfg.out), meta, shards, run_id="embeddings",
                      manifest_file=manifest_path(cfg.out))
    forwards = int(prev.get("clip_forwards", 0))
    tally = ShardTally([Writer("z", "clip")], total=len(plan.todo), what="embed-images: shard")
    if plan.todo:
        writer = WriterSpec(functools.partial(embedding_files, out=cfg.out, dim=clip.embed_dim), frozenset(plan.done))
        actor = spine.ActorSpec(FeatureActor, dict(prefix="z", kind="clip", model_spec=cfg.clip,
                                                   precision=cfg.precision, writer=writer))
        spine.run(plan, cfg, "the embed-images stream",
                  lambda todo: spine.stream(todo, cfg, [clip.preprocess], [actor], spine.ActorPlan.resolve(cfg),
                                            [view_column(clip.preprocess)]), ["z"], tally.batch, tally.shard)
    n = _rows(join(cfg.out, "embeddings"))
    # every image the CLIP actors embedded and wrote, over every run of this cache (a shard
    # written twice, by an attempt whose record was lost, would count twice: it never is)
    return spine.finish(plan, images=n, clip_forwards=forwards + tally.counts.get("clip/images", 0),
                        clip_forwards_this_run=tally.counts.get("clip/images", 0))


def _rows(directory) -> int:
    fs, d = fs_of(directory)
    total = 0
    for name in parquet_stems(directory):
        with fs.open(f"{d}/{name}.parquet", "rb") as fh:
            total += pq.ParquetFile(fh).metadata.num_rows
    return total


class ClipCache:
    """A `sing embed-images` directory (a local path or URL), read: its identity and each shard's
    embeddings by key."""

    def __init__(self, root):
        self.root = str(root)
        meta = read_json(manifest_path(self.root))
        if meta is None:
            raise EmbeddingsError(f"{self.root} holds no CLIP embeddings ({manifest_path(self.root)} is missing): "
                                  "make them with `sing embed-images --clip CLIP --shards ... --out DIR`")
        self.meta = meta
        if self.meta.get("format") != FORMAT:
            raise EmbeddingsError(f"{self.root}: unsupported embeddings format {self.meta.get('format')!r}")
        self.dim = int(self.meta["dim"])

    @property
    def clip_model(self) -> str:
        return self.meta["clip_model"]

    def missing(self, shard_names) -> list[str]:
        have = done(self.root)
        return [s for s in shard_names if s not in have]

    def lookup(self, shard: str, keys) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings (n, d) float32, found mask) of `keys` of one shard; rows not in the cache
        (unreadable when it was made) are zeros with found False."""
        fs, path = fs_of(shard_path(self.root, shard))
        with fs.open(path, "rb") as fh:
            t = pq.read_table(fh, columns=["key", "emb"])
        where = {k: i for i, k in enumerate(t.column("key").to_pylist())}
        flat = t.column("emb").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        emb = np.asarray(flat, dtype=np.float32).reshape(t.num_rows, self.dim)
        idx = np.array([where.get(str(k), -1) for k in keys], dtype=np.int64)
        out = np.zeros((len(idx), self.dim), dtype=np.float32)
        found = idx >= 0
        out[found] = emb[idx[found]]
        return out, found


def cli_args(p) -> None:
    add_arguments(p, EmbedImagesOptions)


def cli_run(a) -> int:
    man = embed_images(from_namespace(EmbedImagesOptions, a, progress=not a.quiet))
    print(f"CLIP embeddings {a.out}: {man['images']} images ({man['clip_model']}, {man['dim']}-d), "
          f"{man['shards']['skipped_done']} of {man['shards']['total']} shards already done; "
          f"CLIP ran on {man['clip_forwards_this_run']} images this run")
    return 0
