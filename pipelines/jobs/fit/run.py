"""`sing fit-translator` end to end: load the models, run both passes (healing), solve each
model's translator, measure it on the held-out shards, write translators and reports."""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import asdict

import numpy as np
import torch

from pipelines.io.layout import write_json_atomic
from pipelines.io.manifest import code_version, utc_now
from pipelines.io.remote import is_url, url_fs
from pipelines.models.translator_file import save_translator
from pipelines.errors import RunFailed
from pipelines.jobs import spine
from pipelines.jobs.fit.options import FitError, FitOptions, check_fit, split_shards
from pipelines.jobs.fit.passes import Models, both_passes
from pipelines.jobs.fit.stats import NONFINITE, unpack_many, unpack_stats
from pipelines.options import check

log = logging.getLogger("sing.fit")


class _NoClip(Exception):
    """The zero-shot check would need the CLIP model, which a cached fit does not load."""


def _targets(cfg: FitOptions, train, held):
    """(embeddings cache or None, its CLIP identity or None, CLIP MODEL string) of the targets."""
    from pipelines.io.shards import shard_name

    if not cfg.clip_embeddings:
        return None, None, cfg.clip
    from pipelines.jobs.embed_images import ClipCache
    from pipelines.models.clip_source import as_identity, check_same_clip

    cache = ClipCache(cfg.clip_embeddings)
    ident = cache.meta.get("clip_identity")
    if cfg.clip:  # both given: the cache must hold that CLIP's embeddings
        check_same_clip(ident, as_identity(cfg.clip), f"--clip-embeddings {cfg.clip_embeddings}",
                        f"make it again with `sing embed-images --clip {cfg.clip}`")
    missing = cache.missing([shard_name(s) for s in train + held])
    if missing:
        raise FitError(f"--clip-embeddings {cfg.clip_embeddings} has no embeddings for {len(missing)} of the fit's "
                       f"shards ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}): run `sing embed-images "
                       f"--clip {cache.clip_model} --shards ... --out {cfg.clip_embeddings}` over them first")
    return cache, ident, cache.clip_model


def _load(cfg: FitOptions):
    """The classifiers (and the CLIP model when it runs), loaded while Ray starts."""
    from pipelines.models.classifiers import load_classifier
    from pipelines.models.clip import load_clip
    from pipelines.models.weights import require_weights
    from pipelines.stages.ray_session import while_ray_starts

    for spec in cfg.models + ([cfg.clip] if cfg.clip and not cfg.clip_embeddings else []):
        require_weights(spec)  # weights that cannot be had: exit 2 before Ray starts
    for out in cfg.outs:
        if is_url(out):
            url_fs(out)  # an --out URL without its fsspec backend fails now, not after the pass
    live = cfg.clip if not cfg.clip_embeddings else None
    return while_ray_starts(lambda: ([load_classifier(s) for s in cfg.models], load_clip(live) if live else None))


def _class_text(cfg: FitOptions, clf, clip, ident: dict, dim: int):
    """Class prompt embeddings for the zero-shot check, and where they came from: --class-text,
    the CLIP that runs, or (cached fits) the node's derived cache; None when none of them has
    them (a cached fit loads no CLIP model)."""
    from pipelines.models.clip import TEMPLATES
    from pipelines.models.derived_cache import text_embeddings
    from pipelines.models.text import embed_texts, load_class_text

    names = list(clf.class_names)
    if cfg.class_text:
        emb, info = load_class_text(cfg.class_text, ident, names, dim)
        return emb, {"file": info.get("path", cfg.class_text)}
    if clip is not None:
        return embed_texts(clip, names, TEMPLATES[cfg.templates]), {"computed_with": clip.model_id}

    def no_clip():
        raise _NoClip

    try:
        return text_embeddings(ident, names, TEMPLATES[cfg.templates], no_clip), {"derived_cache": True}
    except _NoClip:
        return None, {"skipped": "no class text: give --class-text (a cached fit loads no CLIP model)"}


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


def _solve(cfg: FitOptions, i: int, clf, stats, train_errors: list, held: tuple, clip, ident: dict, clip_model: str,
           common: dict, t0: float) -> dict:
    """Model i's translator (lambda chosen on the held-out shards), saved, and its report
    (seconds: the passes', and the total from the passes' start to this model's report)."""
    from sing_ops import select_lambda

    fh, zh, yh, held_errors = held
    out = cfg.outs[i]
    if stats.n < 2:
        raise FitError(f"{clf.model_id}: only {stats.n} usable training images in {common['train_shards']} shards")
    if len(yh) < 2:
        raise FitError(f"{clf.model_id}: only {len(yh)} usable held-out images in {common['heldout_shards']} shards")
    grid = cfg.lambdas or stats.default_grid()
    sel = select_lambda(stats, (torch.from_numpy(fh), torch.from_numpy(zh)), grid,
                        source_model=clf.model_id, clip_model=clip_model, clip_identity=ident,
                        templates=cfg.templates, checkpoint_sha256=clf.checkpoint_sha256, code_version=code_version(),
                        fit_precision=cfg.precision)
    tr = sel.translator
    text, text_info = _class_text(cfg, clf, clip, ident, zh.shape[1])
    zero_shot = {"classifier": float(np.mean(np.argmax(_logits(clf, fh), axis=1) == yh)), "class_text": text_info}
    if text is not None:
        zero_shot.update(translated=zero_shot_top1(tr(torch.from_numpy(fh)).numpy(), text, yh),
                         clip=zero_shot_top1(zh, text, yh))
    report = {
        "kind": "fit", **common, "finished_at": utc_now(), "model": clf.model_id, "in_dim": clf.num_features,
        "n_train": stats.n, "n_heldout": int(len(yh)),
        "heldout_read_errors": sum(e[3] != NONFINITE for e in held_errors),
        "errors": _errors_summary(train_errors + held_errors, out), "lambda": sel.best_lambda,
        "heldout": dict(sel.table[grid.index(sel.best_lambda)]), "lambda_grid": sel.table,
        "zero_shot_top1": zero_shot,
        "seconds": {**common["seconds"], "total": round(time.perf_counter() - t0, 3)},
    }
    tr.metadata["fit_report"] = {k: report[k] for k in ("n_train", "n_heldout", "heldout", "zero_shot_top1")}
    report["translator_path"] = str(save_translator(tr, out))
    report["translator_id"] = tr.id
    write_json_atomic(report, f"{out}.report.json")  # a str: Path() would mangle a URL
    return report


def run_fits(cfg: FitOptions) -> list[dict]:
    """One translator per --model from one decode pass; their reports, in --model order."""
    from pipelines.console import counted_progress
    from pipelines.io.shards import shard_name

    check(cfg)
    check_fit(cfg)
    started = utc_now()
    clfs, clip = _load(cfg)
    train, held = split_shards(cfg)
    cache, ident, clip_model = _targets(cfg, train, held)
    if clip is not None:
        ident = clip.identity
    t0 = time.perf_counter()
    attempts: list = []
    # the sums are redone whole on a restart: a lost attempt's partial sums are dropped, so no
    # shard is ever counted twice
    models = Models.share(clfs, cfg.models, clip, cfg.clip, cache, cfg)  # held for the whole fit
    with counted_progress("fit", train + held, cfg.progress) as counter:  # a tqdm bar in a terminal only
        try:
            agg, (held_rows, held_seen) = spine.retry(cfg, "the fit's passes",
                                         lambda abort: both_passes(train, held, models, cfg, counter, abort), attempts)
        except RunFailed as exc:  # the sums live in this process: a rerun starts the passes over
            raise RunFailed(f"{exc}; nothing was written: rerun the same command to resume (the fit's passes "
                            "start over)") from exc
    blobs = unpack_many(agg["ridge"])
    rows_seen = int(np.frombuffer(blobs[-1], dtype=np.int64)[0])
    t_passes = time.perf_counter() - t0
    log.info("fit: %d model(s), %d images from %d + %d shards in %.1fs", len(clfs), rows_seen, len(train), len(held),
             t_passes)
    common = {"started_at": started, "code_version": code_version(), "clip_model": clip_model, "clip_identity": ident,
              "out_dim": models.dim, "precision": cfg.precision, "train_shards": len(train), "heldout_shards": len(held),
              "heldout_shard_names": [shard_name(s) for s in held], "models_in_pass": cfg.models,
              # CLIP's image tower ran on every streamed image, or on none (the targets were read)
              "targets": ({"source": "clip", "clip_forwards": rows_seen + held_seen} if cache is None else
                          {"source": "cache", "dir": str(cache.root), "clip_forwards": 0}),
              "seconds": {"passes": round(t_passes, 3)}, "attempts": attempts,
              "config": {**asdict(cfg), "argv": sys.argv}}
    reports = []
    for i, clf in enumerate(clfs):
        stats, train_errors = unpack_stats(blobs[i], clf.num_features, models.dim)
        reports.append(_solve(cfg, i, clf, stats, train_errors, held_rows[i], clip, ident, clip_model, common, t0))
    return reports


def run_fit(cfg: FitOptions) -> dict:
    """run_fits for one --model: its report."""
    if len(cfg.models) != 1:
        raise FitError(f"run_fit fits one model, got {len(cfg.models)}; use run_fits")
    return run_fits(cfg)[0]
