"""`sing fit-translator`: one streaming pass computing classifier features and CLIP image
embeddings side by side (one decode feeds both), reduced on the workers to RidgeStats
(Ray Data aggregate: per-block sums, merged), then solved once on the driver. Held-out
shards choose lambda and measure translation quality and zero-shot accuracy.
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from pipelines.console import counted_progress
from pipelines.io.layout import write_json_atomic
from pipelines.io.manifest import code_version, utc_now
from pipelines.io.remote import is_url, url_fs
from pipelines.io.translator_file import save_translator
from pipelines.errors import BadInput, RunFailed
from pipelines.jobs import spine
from pipelines.stages.healing import call_abortable
from pipelines.options import PrecisionOptions, StreamOptions, _templates, add_arguments, check, from_namespace, opt

log = logging.getLogger("sing.fit")


@dataclass
class FitOptions(PrecisionOptions, StreamOptions):
    model: str = opt(help="classifier MODEL string")
    clip: str = opt(help="CLIP model whose image embeddings are the targets (openclip:ARCH@TAG)")
    out: str = opt(help="translator .safetensors path or URL (report goes to OUT.report.json)")
    heldout_shards: list[str] | None = opt(None, "shards held out to choose lambda (default: 10%% of the shards, "
                                                 "evenly spaced)")
    heldout_fraction: float = opt(0.1, "share of the shards held out when --heldout-shards is not given", cli=False)
    lambdas: list[float] | None = opt(None, "ridge penalties to try (default: a grid relative to the data)")
    templates: str = opt("single", "class prompt templates for the zero-shot check: single | ensemble",
                         check=_templates)


class FitError(BadInput):
    pass


NONFINITE = "non-finite (NaN/Inf) classifier feature or CLIP embedding: left out of the fit"


def _matrix(col, dim: int) -> np.ndarray:
    """(n, dim) float32 from a block column (a tensor column, or one array per row)."""
    a = np.asarray(col)
    if a.dtype == object:
        a = np.stack(list(a)) if len(a) else np.zeros((0, dim), np.float32)
    return a.astype(np.float32, copy=False).reshape(-1, dim)


def _left_out(cols: dict, f: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, list]:
    """(mask of the rows the fit uses, error rows [key, shard, stage, reason] of the samples it
    leaves out): unreadable samples, and non-finite features or embeddings, which would poison
    every sum. A shard's "end" row is a marker, neither."""
    ok, failed = cols["status"] == "ok", cols["status"] == "error"
    finite = np.isfinite(f).all(1) & np.isfinite(z).all(1)
    errors = [[str(k), str(s), str(st), str(r)] for k, s, st, r in
              zip(cols["key"][failed], cols["shard"][failed], cols["stage"][failed], cols["reason"][failed])]
    errors += [[str(k), str(s), "model", NONFINITE] for k, s in zip(cols["key"][ok & ~finite], cols["shard"][ok & ~finite])]
    return ok & finite, errors


def pack_stats(stats, errors: list | None = None) -> bytes:
    """RidgeStats (and the samples left out) as one byte string: the count of numbers (int64),
    float64 [n, sum_f, sum_z, sum_ff, sum_fz, sum_zz], then the error rows as JSON. Ray Data keeps an
    aggregation's accumulator in an Arrow column: bytes are Arrow binary, whereas a dict of
    tensors fails the Arrow conversion and is pickled instead (with a warning per task). n is
    exact in float64 up to 2**53 images."""
    import json

    parts = [torch.tensor([float(stats.n)], dtype=torch.float64)]
    parts += [t.reshape(-1).to(torch.float64) for t in (stats.sum_f, stats.sum_z, stats.sum_ff, stats.sum_fz,
                                                        stats.sum_zz)]
    v = torch.cat(parts).numpy()
    return np.int64(v.size).tobytes() + v.tobytes() + json.dumps(errors or []).encode()


def unpack_stats(blob: bytes, m: int, d: int):
    """The inverse of pack_stats for an m -> d translator: (RidgeStats, error rows)."""
    import json

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


def _ridge_aggregation(m: int, d: int, counter=None):
    from ray.data.aggregate import AggregateFnV2
    from ray.data.block import BlockAccessor

    from sing_ops import RidgeStats

    class RidgeAggregation(AggregateFnV2):
        """RidgeStats as a Ray Data aggregation: sums per block on the worker, merged in a tree;
        the samples left out (unreadable, or non-finite features or embeddings, which would
        poison every sum) travel along as error rows; the accumulator travels packed
        (pack_stats). counter: the progress bar's actor (the driver never sees these rows),
        told how many images each block held."""

        def __init__(self):
            super().__init__(name="ridge", zero_factory=lambda: pack_stats(RidgeStats(m, d)), on=None,
                             ignore_nulls=False)

        def aggregate_block(self, block):
            cols = BlockAccessor.for_block(block).to_numpy(["key", "shard", "status", "stage", "reason", "f/emb",
                                                            "z/emb"])
            f, z = _matrix(cols["f/emb"], m), _matrix(cols["z/emb"], d)
            keep, errors = _left_out(cols, f, z)
            stats = RidgeStats(m, d)
            if counter is not None:
                counter.add.remote(int((cols["status"] != "end").sum()))  # end rows mark shard ends
            if keep.any():
                stats.update(torch.from_numpy(f[keep]), torch.from_numpy(z[keep]))
            return pack_stats(stats, errors)

        def combine(self, a, b):
            (sa, ea), (sb, eb) = unpack_stats(a, m, d), unpack_stats(b, m, d)
            return pack_stats(sa.merge(sb), ea + eb)

        def finalize(self, acc):
            return acc

    return RidgeAggregation()


def split_shards(cfg: FitOptions):
    from pipelines.io.shards import expand_shards

    train = expand_shards(cfg.shards)
    if cfg.heldout_shards:
        held = expand_shards(cfg.heldout_shards)
        train = [s for s in train if s not in set(held)]
    else:
        if len(train) < 2:
            raise FitError(f"need at least 2 shards (some are held out to choose lambda), got {len(train)}; "
                           "add shards or pass --heldout-shards")
        # evenly spaced, not the last k: shards are often class-contiguous (`sing shards
        # make` writes them so), and the tail would hold out whole classes instead of a sample
        k = max(1, int(round(len(train) * cfg.heldout_fraction)))
        pick = {min(len(train) - 1, int((i + 0.5) * len(train) / k)) for i in range(k)}
        held = [s for i, s in enumerate(train) if i in pick]
        train = [s for i, s in enumerate(train) if i not in pick]
    if not train:
        raise FitError("no training shards left after holding out")
    return train, held


@dataclass
class _Models:
    """The fit's classifier and CLIP, and the one model actor that runs both (ChainActor: one
    decode, one process) with the driver's models shared through the object store once per
    fit: both passes and every restart reuse the references (stages.prepared)."""
    clf: object
    clip: object
    actor: object  # spine.ActorSpec

    @classmethod
    def share(cls, clf, clip, cfg: FitOptions) -> "_Models":
        from pipelines.stages.actors import ChainActor, FeatureActor
        from pipelines.stages.prepared import share

        parts = [(FeatureActor, dict(prefix=prefix, kind=kind, model_spec=spec, precision=cfg.precision,
                                     prepared=share(model)))
                 for prefix, kind, spec, model in (("f", "classifier", cfg.model, clf), ("z", "clip", cfg.clip, clip))]
        return cls(clf, clip, spine.ActorSpec(ChainActor, dict(parts=parts)))


def _feature_stream(shards, models: _Models, cfg: FitOptions, ap):
    """Classifier features (f/emb) and CLIP image embeddings (z/emb) of every sample, from
    one decode: the spine's stream with the fit's model actor, in a pool sized by `ap`."""
    from pipelines.stages.read import unique_views, view_column

    views = unique_views([models.clf.preprocess, models.clip.preprocess])
    return spine.stream(shards, cfg, views, [models.actor], ap, [view_column(v) for v in views])


def _held_out(held, models: _Models, cfg: FitOptions, ap, abort, counter=None):
    """(features, CLIP embeddings, labels, read errors) of the held-out shards. counter: the
    fit's progress counter (pipelines.console.counted_progress), or None."""
    from pipelines.stages.watchdog import with_stall_timeout

    fh, zh, yh, errors = [], [], [], []
    stream = spine.batches(_feature_stream(held, models, cfg, ap))
    for b in with_stall_timeout(stream, cfg.stall_timeout, "the held-out stream", abort):
        if counter is not None:
            counter.add.remote(int((b["status"] != "end").sum()))
        keep, left_out = _left_out(b, b["f/emb"], b["z/emb"])
        errors += left_out
        fh.append(b["f/emb"][keep]), zh.append(b["z/emb"][keep]), yh.append(b["label"][keep])
    return (*(np.concatenate(x) if x else np.zeros((0,)) for x in (fh, zh, yh)), errors)


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


def _both_passes(train, held, models: _Models, cfg: FitOptions, counter, abort):
    """The training aggregation and the held-out stream, at once when the cluster has room for
    both pools (held_out_pool): two Ray Data executions side by side, so the held-out actors
    start up with the training ones instead of after the whole training pass (a second actor
    start-up on the critical path: the demo's held-out pass of 18 images took 7.8 s). Either
    failing stops the other; the attempt (both passes) is then redone whole. The pools are
    sized per attempt: a restart sizes them for the nodes left."""
    import dataclasses
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from pipelines.stages.capacity import alive_nodes

    m, d = models.clf.num_features, models.clip.embed_dim
    ap = spine.ActorPlan.resolve(cfg, 1)  # placed on the nodes alive now (waited for, or shrunk)
    n_held = held_out_pool(ap, len(held) / (len(train) + len(held)), alive_nodes())

    def training(stop_when):
        return call_abortable(lambda: _feature_stream(train, models, cfg, ap).aggregate(
            _ridge_aggregation(m, d, counter)), stop_when)

    if n_held is None:
        return training(abort), _held_out(held, models, cfg, ap, abort, counter)
    stop = threading.Event()
    with ThreadPoolExecutor(1, thread_name_prefix="sing-heldout") as pool:
        held_job = pool.submit(_held_out, held, models, cfg, dataclasses.replace(ap, n_actors=n_held),
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


def _errors_summary(errors: list, out: str) -> dict:
    """Every sample the fit left out, as rows of the errors schema in OUT.errors.parquet."""
    import pyarrow as pa

    from pipelines.io.layout import write_table_atomic
    from pipelines.stages.collect import ERRORS_SCHEMA

    cols = list(zip(*errors)) if errors else [[], [], [], []]
    write_table_atomic(pa.table({name: pa.array([str(v) for v in col], pa.string())
                                 for name, col in zip(ERRORS_SCHEMA.names, cols)}, schema=ERRORS_SCHEMA),
                       f"{out}.errors.parquet")
    return {"rows": len(errors), "non_finite_left_out": sum(e[3] == NONFINITE for e in errors),
            "file": f"{out}.errors.parquet"}


def zero_shot_top1(emb: np.ndarray, class_text: np.ndarray, labels: np.ndarray) -> float:
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    t = class_text / np.linalg.norm(class_text, axis=1, keepdims=True)
    return float(np.mean(np.argmax(e @ t.T, axis=1) == labels)) if len(labels) else float("nan")


def _logits(clf, f: np.ndarray) -> np.ndarray:
    out = f @ clf.head_weight.numpy().T
    return out + clf.head_bias.numpy() if clf.head_bias is not None else out


def run_fit(cfg: FitOptions) -> dict:
    from sing_ops import select_lambda

    from pipelines.io.shards import shard_name
    from pipelines.models.classifiers import load_classifier
    from pipelines.models.clip import TEMPLATES, load_clip
    from pipelines.models.hub import require_weights
    from pipelines.models.text import embed_texts
    from pipelines.stages.ray_session import while_ray_starts

    check(cfg)
    started = utc_now()
    for spec in (cfg.model, cfg.clip):  # weights that cannot be had: exit 2 before Ray starts
        require_weights(spec)
    if is_url(cfg.out):
        url_fs(cfg.out)  # an --out URL without its fsspec backend fails now, not after the pass
    # the models load while Ray starts (this process's Ray, before the bar's counter actor);
    # an unknown model name is reported once Ray is up, before the shards are looked at
    clf, clip = while_ray_starts(lambda: (load_classifier(cfg.model), load_clip(cfg.clip)))
    train, held = split_shards(cfg)
    m, d = clf.num_features, clip.embed_dim
    t0 = time.perf_counter()
    attempts: list = []
    # the sums are redone whole on a restart: a lost attempt's partial sums are dropped, so no
    # shard is ever counted twice
    models = _Models.share(clf, clip, cfg)  # held for the whole fit: a restarted actor needs them again
    with counted_progress("fit", train + held, cfg.progress) as counter:  # a tqdm bar in a terminal only
        try:
            agg, (fh, zh, yh, held_errors) = spine.retry(
                cfg, "the fit's passes", lambda abort: _both_passes(train, held, models, cfg, counter, abort),
                attempts)
        except RunFailed as exc:  # the sums live in this process: a rerun starts the passes over
            raise RunFailed(f"{exc}; nothing was written: rerun the same command to resume (the fit's passes "
                            "start over)") from exc
    stats, train_errors = unpack_stats(agg["ridge"], m, d)
    t_train = time.perf_counter() - t0
    log.info("fit: %d training and %d held-out images from %d + %d shards in %.1fs", stats.n, len(yh), len(train),
             len(held), t_train)
    if stats.n < 2:
        raise FitError(f"only {stats.n} usable training images in {len(train)} shards")
    if len(yh) < 2:
        raise FitError(f"only {len(yh)} usable held-out images in {len(held)} shards")
    grid = cfg.lambdas or stats.default_grid()
    sel = select_lambda(stats, (torch.from_numpy(fh), torch.from_numpy(zh)), grid,
                        source_model=clf.model_id, clip_model=clip.model_id, clip_identity=clip.identity,
                        templates=cfg.templates,
                        checkpoint_sha256=clf.checkpoint_sha256, code_version=code_version(),
                        fit_precision=cfg.precision)
    tr = sel.translator
    class_text = embed_texts(clip, list(clf.class_names), TEMPLATES[cfg.templates])
    translated = tr(torch.from_numpy(fh)).numpy()
    quality = dict(sel.table[grid.index(sel.best_lambda)])
    report = {
        "kind": "fit", "started_at": started, "finished_at": utc_now(), "code_version": code_version(),
        "model": clf.model_id, "clip_model": clip.model_id, "clip_identity": clip.identity, "in_dim": m, "out_dim": d,
        "precision": cfg.precision,
        "n_train": stats.n, "n_heldout": int(len(yh)), "heldout_read_errors": sum(e[3] != NONFINITE for e in held_errors),
        "errors": _errors_summary(train_errors + held_errors, cfg.out),
        "train_shards": len(train), "heldout_shards": len(held),
        "heldout_shard_names": [shard_name(s) for s in held], "lambda": sel.best_lambda,
        "heldout": quality, "lambda_grid": sel.table,
        "zero_shot_top1": {"translated": zero_shot_top1(translated, class_text, yh),
                           "clip": zero_shot_top1(zh, class_text, yh),
                           "classifier": float(np.mean(np.argmax(_logits(clf, fh), axis=1) == yh))},
        "seconds": {"passes": round(t_train, 3), "total": round(time.perf_counter() - t0, 3)},
        "attempts": attempts,
        "config": {**asdict(cfg), "argv": sys.argv},
    }
    tr.metadata["fit_report"] = {k: report[k] for k in ("n_train", "n_heldout", "heldout", "zero_shot_top1")}
    report["translator_path"] = str(save_translator(tr, cfg.out))
    report["translator_id"] = tr.id
    write_json_atomic(report, f"{cfg.out}.report.json")  # a str: Path() would mangle a URL
    return report


def cli_args(p) -> None:
    from pipelines.models.spec import MODEL_EPILOG

    add_arguments(p, FitOptions)
    p.epilog = MODEL_EPILOG


def cli_run(a) -> int:
    rep = run_fit(from_namespace(FitOptions, a, progress=not a.quiet))
    h, zs = rep["heldout"], rep["zero_shot_top1"]
    print(f"translator {rep['translator_path']} (id {rep['translator_id']}): {rep['n_train']} train / "
          f"{rep['n_heldout']} held-out images, lambda={rep['lambda']:.4g}")
    print(f"held-out MSE {h['mse']:.4g}  R^2 {h['r2']:.3f}  mean cosine {h['mean_cosine']:.3f}")
    print(f"zero-shot top-1: T(f) {zs['translated']:.3f}  CLIP {zs['clip']:.3f}  (classifier {zs['classifier']:.3f})")
    return 0
