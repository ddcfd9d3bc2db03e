"""The fit's two passes over the shards: the training aggregation (sums on the workers) and the
held-out stream (features and targets to the driver, to choose lambda and measure quality),
side by side when the cluster has room for both pools."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.jobs import spine
from pipelines.jobs.fit.stats import left_out, matrix, ridge_aggregation, targets
from pipelines.stages.healing import call_abortable


@dataclass
class Models:
    """The fit's classifiers and its CLIP targets, and the one model actor that runs them all
    (ChainActor: one decode, one process), the driver's models shared through the object store
    once per fit: both passes and every restart reuse the references (stages.prepared).
    clip: the CLIP model (its image tower runs beside the classifiers), or None when the
    targets come from `cache` (a jobs.embed_images.ClipCache)."""
    clfs: list
    clip: object | None
    cache: object | None
    dim: int  # the CLIP embedding's
    actor: object  # spine.ActorSpec

    @classmethod
    def share(cls, clfs: list, specs: list[str], clip, clip_spec, cache, cfg) -> "Models":
        from pipelines.stages.actors import ChainActor, FeatureActor
        from pipelines.stages.prepared import share

        parts = [(FeatureActor, dict(prefix=f"f{i}", kind="classifier", model_spec=spec, precision=cfg.precision,
                                     prepared=share(clf))) for i, (spec, clf) in enumerate(zip(specs, clfs))]
        if clip is not None:
            parts.append((FeatureActor, dict(prefix="z", kind="clip", model_spec=clip_spec, precision=cfg.precision,
                                             prepared=share(clip))))
        dim = clip.embed_dim if clip is not None else cache.dim
        return cls(clfs, clip, cache, dim, spine.ActorSpec(ChainActor, dict(parts=parts)))

    @property
    def dims(self) -> list[int]:
        return [c.num_features for c in self.clfs]

    def views(self):
        from pipelines.stages.read import unique_views

        return unique_views([c.preprocess for c in self.clfs] + ([self.clip.preprocess] if self.clip else []))


def feature_stream(shards, models: Models, cfg, ap):
    """Every model's features (f<i>/emb) and, with a live CLIP, its image embeddings (z/emb) of
    every sample, from one decode: the spine's stream with the fit's model actor."""
    from pipelines.stages.read import view_column

    views = models.views()
    return spine.stream(shards, cfg, views, [models.actor], ap, [view_column(v) for v in views])


def held_out(held, models: Models, cfg, ap, abort, counter=None) -> tuple[list[tuple], int]:
    """Per model: (features, CLIP embeddings, labels, error rows) of the held-out shards, rows in
    (shard, key) order whatever order they streamed in, so every number computed from them is
    the same in every run; and the readable images seen. counter: the fit's progress counter,
    or None."""
    from pipelines.stages.watchdog import with_stall_timeout

    parts = []
    stream = spine.batches(feature_stream(held, models, cfg, ap))
    for b in with_stall_timeout(stream, cfg.stall_timeout, "the held-out stream", abort):
        if counter is not None:
            counter.add.remote(int((b["status"] != "end").sum()))
        z, found = targets(b, models.dim, models.cache)
        parts.append((b, z, found))
    out = []
    for i, m in enumerate(models.dims):
        rows, errors = [], []
        for b, z, found in parts:
            f = matrix(b[f"f{i}/emb"], m)
            keep, lost = left_out(b, f, z, found)
            errors += lost
            rows += [(str(b["shard"][j]), str(b["key"][j]), f[j], z[j], int(b["label"][j])) for j in np.flatnonzero(keep)]
        rows.sort(key=lambda r: (r[0], r[1]))
        fh = np.stack([r[2] for r in rows]) if rows else np.zeros((0, m), np.float32)
        zh = np.stack([r[3] for r in rows]) if rows else np.zeros((0, models.dim), np.float32)
        out.append((fh, zh, np.array([r[4] for r in rows], dtype=np.int64), errors))
    return out, sum(int((b["status"] == "ok").sum()) for b, _, _ in parts)


def held_out_pool(ap, share_held: float, nodes) -> int | None:
    """Actors for a held-out stream running beside the training pass (its shards' share of
    the plan's, at least one), or None when they would not fit beside the training pool and
    one read task on the alive `nodes` (stages.capacity: per node, as Ray places actors):
    then the passes run one after the other. Never waiting for room matters: a held-out
    actor queued behind the training pool would wait the whole pass, and its stall watchdog
    would end the fit (on GPUs the plan's actors fill every GPU)."""
    import math

    from pipelines.stages.capacity import actors_that_fit

    n_held = max(1, math.ceil(ap.n_actors * share_held - 1e-9))
    fits = ap.n_actors + n_held <= actors_that_fit(nodes, ap.cpus_per_actor, ap.gpus_per_actor)
    return n_held if fits else None


def both_passes(train, held, models: Models, cfg, counter, abort):
    """The training aggregation and the held-out stream, at once when the cluster has room for
    both pools (held_out_pool): two Ray Data executions side by side, so the held-out actors
    start up with the training ones instead of after the whole training pass. Either failing
    stops the other; the attempt (both passes) is then redone whole. The pools are sized per
    attempt: a restart sizes them for the nodes left."""
    import dataclasses
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from pipelines.stages.capacity import alive_nodes

    ap = spine.ActorPlan.resolve(cfg, 1)  # placed on the nodes alive now (waited for, or shrunk)
    n_held = held_out_pool(ap, len(held) / (len(train) + len(held)), alive_nodes())
    cache_root = str(models.cache.root) if models.cache is not None else None

    def training(stop_when):
        return call_abortable(lambda: feature_stream(train, models, cfg, ap).aggregate(
            ridge_aggregation(models.dims, models.dim, cache_root, counter)), stop_when)

    if n_held is None:
        return training(abort), held_out(held, models, cfg, ap, abort, counter)
    stop = threading.Event()
    with ThreadPoolExecutor(1, thread_name_prefix="sing-heldout") as pool:
        held_job = pool.submit(held_out, held, models, cfg, dataclasses.replace(ap, n_actors=n_held),
                               lambda: abort() or ("the training pass failed" if stop.is_set() else None), counter)
        try:
            agg = training(lambda: abort() or (
                "the held-out stream failed" if held_job.done() and held_job.exception() else None))
        except BaseException:
            stop.set()
            if held_job.done() and held_job.exception() is not None and not abort():
                raise held_job.exception() from None  # the cause, not the training pass's stop
            raise
        return agg, held_job.result()
