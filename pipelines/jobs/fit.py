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

from pipelines.io.layout import write_json_atomic
from pipelines.io.manifest import code_version, utc_now
from pipelines.models.precision import DEFAULT_PRECISION, check_precision
from pipelines.io.remote import is_url, url_fs
from pipelines.io.translator_file import save_translator
from pipelines.stages.watchdog import DEFAULT_STALL_S, with_stall_timeout

log = logging.getLogger("sing.fit")


@dataclass
class FitConfig:
    model: str
    clip: str
    shards: list[str]
    out: str
    heldout_shards: list[str] | None = None
    heldout_fraction: float = 0.1
    lambdas: list[float] | None = None  # absolute values; default: a grid relative to the data
    templates: str = "single"
    batch_size: int = 64
    device: str | None = None
    threads: int | None = None
    progress: bool = True
    precision: str = DEFAULT_PRECISION  # of both forwards (classifier and CLIP image tower)


class FitError(ValueError):
    pass


def _ridge_aggregation(m: int, d: int):
    from ray.data.aggregate import AggregateFnV2
    from ray.data.block import BlockAccessor

    from sing_ops import RidgeStats

    class RidgeAggregation(AggregateFnV2):
        """RidgeStats as a Ray Data aggregation: sums per block on the worker, merged in a tree."""

        def __init__(self):
            super().__init__(name="ridge", zero_factory=lambda: RidgeStats(m, d).state_dict(), on=None,
                             ignore_nulls=False)

        def aggregate_block(self, block):
            cols = BlockAccessor.for_block(block).to_numpy(["status", "f/emb", "z/emb"])
            ok = cols["status"] == "ok"
            stats = RidgeStats(m, d)
            if ok.any():
                stats.update(torch.from_numpy(np.asarray(cols["f/emb"][ok])),
                             torch.from_numpy(np.asarray(cols["z/emb"][ok])))
            return stats.state_dict()

        def combine(self, a, b):
            return RidgeStats.from_state_dict(a).merge(RidgeStats.from_state_dict(b)).state_dict()

        def finalize(self, acc):
            return acc

    return RidgeAggregation()


def split_shards(cfg: FitConfig):
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


def _feature_stream(ray, shards, clf, clip, cfg):
    from pipelines.stages.actor_pool import actor_pool
    from pipelines.stages.actors import FeatureActor
    from pipelines.stages.read import read_decode, unique_views, view_column
    from pipelines.stages.ray_session import actor_gpus, cluster_cpus

    views = unique_views([clf.preprocess, clip.preprocess])
    gpus = actor_gpus(cfg.device)
    n = max(1, int(gpus))  # one classifier and one CLIP actor per GPU, sharing it
    threads = cfg.threads or (None if gpus else max(1, int(cluster_cpus())))
    ds = ray.data.from_items([{"path": s} for s in shards], override_num_blocks=len(shards))
    ds = ds.map_batches(read_decode, batch_size=1, fn_kwargs={"views": views}, num_cpus=1)
    for prefix, kind, spec, last in (("f", "classifier", cfg.model, False), ("z", "clip", cfg.clip, True)):
        ds = ds.map_batches(FeatureActor, batch_size=cfg.batch_size, compute=actor_pool(n),
                            num_cpus=0.5 if not gpus else 1, num_gpus=0.5 if gpus else 0,
                            fn_constructor_kwargs=dict(prefix=prefix, kind=kind, model_spec=spec, device=cfg.device,
                                                       threads=threads, precision=cfg.precision,
                                                       drop_views=[view_column(v) for v in views] if last else ()))
    return ds


def zero_shot_top1(emb: np.ndarray, class_text: np.ndarray, labels: np.ndarray) -> float:
    e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    t = class_text / np.linalg.norm(class_text, axis=1, keepdims=True)
    return float(np.mean(np.argmax(e @ t.T, axis=1) == labels)) if len(labels) else float("nan")


def _logits(clf, f: np.ndarray) -> np.ndarray:
    out = f @ clf.head_weight.numpy().T
    return out + clf.head_bias.numpy() if clf.head_bias is not None else out


def run_fit(cfg: FitConfig) -> dict:
    from sing_ops import select_lambda

    from pipelines.models.clip import TEMPLATES, load_clip
    from pipelines.models.classifiers import load_classifier
    from pipelines.stages.ray_session import configure_data_context, ensure_ray
    from pipelines.io.shards import shard_name
    from pipelines.models.text import embed_texts

    started = utc_now()
    if cfg.templates not in TEMPLATES:
        raise FitError(f"unknown prompt templates {cfg.templates!r}; choose from {sorted(TEMPLATES)}")
    check_precision(cfg.precision)
    clf, clip = load_classifier(cfg.model), load_clip(cfg.clip)  # unknown names fail first
    if is_url(cfg.out):
        url_fs(cfg.out)  # an --out URL without its fsspec backend fails now, not after the pass
    train, held = split_shards(cfg)
    m, d = clf.num_features, clip.embed_dim
    ray = ensure_ray()
    configure_data_context(cfg.progress)
    t0 = time.perf_counter()
    agg = _feature_stream(ray, train, clf, clip, cfg).aggregate(_ridge_aggregation(m, d))
    from sing_ops import RidgeStats

    stats = RidgeStats.from_state_dict(agg["ridge"])
    t_train = time.perf_counter() - t0
    log.info("fit: %d training images from %d shards in %.1fs", stats.n, len(train), t_train)
    if stats.n < 2:
        raise FitError(f"only {stats.n} usable training images in {len(train)} shards")

    fh, zh, yh, n_err = [], [], [], 0
    held_stream = _feature_stream(ray, held, clf, clip, cfg).iter_batches(batch_size=None, batch_format="numpy")
    for b in with_stall_timeout(held_stream, DEFAULT_STALL_S, "the held-out stream"):
        ok = b["status"] == "ok"
        n_err += int((b["status"] == "error").sum())
        fh.append(b["f/emb"][ok]), zh.append(b["z/emb"][ok]), yh.append(b["label"][ok])
    fh, zh, yh = (np.concatenate(x) if x else np.zeros((0,)) for x in (fh, zh, yh))
    if len(yh) < 2:
        raise FitError(f"only {len(yh)} usable held-out images in {len(held)} shards")
    grid = cfg.lambdas or stats.default_grid()
    sel = select_lambda(stats, (torch.from_numpy(fh), torch.from_numpy(zh)), grid,
                        source_model=clf.model_id, clip_model=clip.model_id, templates=cfg.templates,
                        checkpoint_sha256=clf.checkpoint_sha256, code_version=code_version(),
                        fit_precision=cfg.precision)
    tr = sel.translator
    class_text = embed_texts(clip, list(clf.class_names), TEMPLATES[cfg.templates])
    translated = tr(torch.from_numpy(fh)).numpy()
    quality = dict(sel.table[grid.index(sel.best_lambda)])
    report = {
        "kind": "fit", "started_at": started, "finished_at": utc_now(), "code_version": code_version(),
        "model": clf.model_id, "clip_model": clip.model_id, "in_dim": m, "out_dim": d, "precision": cfg.precision,
        "n_train": stats.n, "n_heldout": int(len(yh)), "heldout_read_errors": n_err,
        "train_shards": len(train), "heldout_shards": len(held),
        "heldout_shard_names": [shard_name(s) for s in held], "lambda": sel.best_lambda,
        "heldout": quality, "lambda_grid": sel.table,
        "zero_shot_top1": {"translated": zero_shot_top1(translated, class_text, yh),
                           "clip": zero_shot_top1(zh, class_text, yh),
                           "classifier": float(np.mean(np.argmax(_logits(clf, fh), axis=1) == yh))},
        "seconds": {"train_pass": round(t_train, 3), "total": round(time.perf_counter() - t0, 3)},
        "config": {**asdict(cfg), "argv": sys.argv},
    }
    tr.metadata["fit_report"] = {k: report[k] for k in ("n_train", "n_heldout", "heldout", "zero_shot_top1")}
    report["translator_path"] = str(save_translator(tr, cfg.out))
    report["translator_id"] = tr.id
    write_json_atomic(report, f"{cfg.out}.report.json")  # a str: Path() would mangle a URL
    return report
