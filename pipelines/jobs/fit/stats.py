"""The fit's sufficient statistics: RidgeStats per model, summed on the workers (a Ray Data
aggregation over the blocks of the feature stream), packed as bytes between them.

One decode pass fits K translators: each block's rows carry every model's features
(`f<i>/emb`) and the CLIP image embeddings, either computed beside them (`z/emb`) or read from a
`sing embed-images` cache by shard and key (jobs.embed_images.ClipCache): one CLIP pass serves
any number of models and fits.
"""
from __future__ import annotations

import json

import numpy as np
import torch

NONFINITE = "non-finite (NaN/Inf) classifier feature or CLIP embedding: left out of the fit"
NOT_CACHED = "no CLIP embedding in the cache for this image (it could not be read when the cache was made)"


def matrix(col, dim: int) -> np.ndarray:
    """(n, dim) float32 from a block column (a tensor column, or one array per row)."""
    a = np.asarray(col)
    if a.dtype == object:
        a = np.stack(list(a)) if len(a) else np.zeros((0, dim), np.float32)
    return a.astype(np.float32, copy=False).reshape(-1, dim)


def left_out(cols: dict, f: np.ndarray, z: np.ndarray, found: np.ndarray | None = None) -> tuple[np.ndarray, list]:
    """(mask of the rows the fit uses, error rows [key, shard, stage, reason] of the samples it
    leaves out): unreadable samples, images the CLIP cache lacks, and non-finite features or
    embeddings, which would poison every sum. A shard's "end" row is a marker, neither."""
    ok, failed = cols["status"] == "ok", cols["status"] == "error"
    found = np.ones(len(ok), bool) if found is None else found
    finite = np.isfinite(f).all(1) & np.isfinite(z).all(1)
    errors = [[str(k), str(s), str(st), str(r)] for k, s, st, r in
              zip(cols["key"][failed], cols["shard"][failed], cols["stage"][failed], cols["reason"][failed])]
    errors += [[str(k), str(s), "model", NOT_CACHED] for k, s in zip(cols["key"][ok & ~found],
                                                                      cols["shard"][ok & ~found])]
    bad = ok & found & ~finite
    errors += [[str(k), str(s), "model", NONFINITE] for k, s in zip(cols["key"][bad], cols["shard"][bad])]
    return ok & found & finite, errors


def pack_stats(stats, errors: list | None = None) -> bytes:
    """RidgeStats (and the samples left out) as one byte string: the count of numbers (int64),
    float64 [n, sum_f, sum_z, sum_ff, sum_fz, sum_zz], then the error rows as JSON. Ray Data keeps an
    aggregation's accumulator in an Arrow column: bytes are Arrow binary, whereas a dict of
    tensors fails the Arrow conversion and is pickled instead (with a warning per task). n is
    exact in float64 up to 2**53 images."""
    parts = [torch.tensor([float(stats.n)], dtype=torch.float64)]
    parts += [t.reshape(-1).to(torch.float64) for t in (stats.sum_f, stats.sum_z, stats.sum_ff, stats.sum_fz,
                                                        stats.sum_zz)]
    v = torch.cat(parts).numpy()
    return np.int64(v.size).tobytes() + v.tobytes() + json.dumps(errors or []).encode()


def unpack_stats(blob: bytes, m: int, d: int):
    """The inverse of pack_stats for an m -> d translator: (RidgeStats, error rows)."""
    from sing_ops import RidgeStats

    sizes = [1, m, d, m * m, m * d, d]
    count = int(np.frombuffer(blob[:8], dtype=np.int64)[0])
    nbytes = 8 + 8 * count
    if count != sum(sizes) or len(blob) < nbytes:
        raise ValueError(f"packed ridge statistics hold {count} numbers, expected {sum(sizes)} for {m}->{d}")
    v = torch.from_numpy(np.frombuffer(blob[8:nbytes], dtype=np.float64).copy())
    n, sf, sz, sff, sfz, szz = torch.split(v, sizes)
    stats = RidgeStats(m, d, int(n.item()), sf, sz, sff.reshape(m, m), sfz.reshape(m, d), szz)
    return stats, json.loads(blob[nbytes:].decode() or "[]")


def pack_many(blobs: list[bytes]) -> bytes:
    """Several models' packed stats as one byte string (each length-prefixed)."""
    return b"".join(np.int64(len(b)).tobytes() + b for b in blobs)


def unpack_many(blob: bytes) -> list[bytes]:
    out, i = [], 0
    while i < len(blob):
        n = int(np.frombuffer(blob[i:i + 8], dtype=np.int64)[0])
        out.append(blob[i + 8:i + 8 + n])
        i += 8 + n
    return out


def targets(cols: dict, d: int, cache=None) -> tuple[np.ndarray, np.ndarray | None]:
    """The CLIP image embeddings of a block's rows: its `z/emb` column, or (cache) read from the
    embeddings cache by shard and key, with the mask of the rows found there."""
    if cache is None:
        return matrix(cols["z/emb"], d), None
    z, found = np.zeros((len(cols["key"]), d), np.float32), np.zeros(len(cols["key"]), bool)
    for shard in np.unique(cols["shard"]):
        sel = np.flatnonzero(cols["shard"] == shard)
        z[sel], found[sel] = cache.lookup(str(shard), cols["key"][sel])
    return z, found


def ridge_aggregation(dims: list[int], d: int, cache_root: str | None = None, counter=None):
    """K models' RidgeStats as one Ray Data aggregation: sums per block on the worker, merged in
    a tree; the samples each model leaves out travel along as error rows; the accumulator
    travels packed (pack_many: each model's pack_stats, then the count of readable images seen).
    dims: each model's feature dimension (columns f<i>/emb). cache_root: a `sing
    embed-images` directory the targets are read from (else the z/emb column). counter: the
    progress bar's actor (the driver never sees these rows), told how many images each block
    held."""
    from ray.data.aggregate import AggregateFnV2
    from ray.data.block import BlockAccessor

    from sing_ops import RidgeStats

    def zero() -> bytes:  # each model's stats, then the readable images seen (int64)
        return pack_many([pack_stats(RidgeStats(m, d)) for m in dims] + [np.int64(0).tobytes()])

    class RidgeAggregation(AggregateFnV2):
        def __init__(self):
            super().__init__(name="ridge", zero_factory=zero, on=None, ignore_nulls=False)

        def aggregate_block(self, block):
            from pipelines.jobs.embed_images import ClipCache

            names = ["key", "shard", "status", "stage", "reason"] + [f"f{i}/emb" for i in range(len(dims))]
            cols = BlockAccessor.for_block(block).to_numpy(names + ([] if cache_root else ["z/emb"]))
            z, found = targets(cols, d, ClipCache(cache_root) if cache_root else None)
            if counter is not None:
                counter.add.remote(int((cols["status"] != "end").sum()))  # end rows mark shard ends
            out = []
            for i, m in enumerate(dims):
                f = matrix(cols[f"f{i}/emb"], m)
                keep, errors = left_out(cols, f, z, found)
                stats = RidgeStats(m, d)
                if keep.any():
                    stats.update(torch.from_numpy(f[keep]), torch.from_numpy(z[keep]))
                out.append(pack_stats(stats, errors))
            return pack_many(out + [np.int64((cols["status"] == "ok").sum()).tobytes()])

        def combine(self, a, b):
            a, b = unpack_many(a), unpack_many(b)
            merged = []
            for m, x, y in zip(dims, a, b):
                (sa, ea), (sb, eb) = unpack_stats(x, m, d), unpack_stats(y, m, d)
                merged.append(pack_stats(sa.merge(sb), ea + eb))
            seen = int(np.frombuffer(a[-1], np.int64)[0]) + int(np.frombuffer(b[-1], np.int64)[0])
            return pack_many(merged + [np.int64(seen).tobytes()])

        def finalize(self, acc):
            return acc

    return RidgeAggregation()
