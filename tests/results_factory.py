"""Synthetic result trees in the documented layout (docs/ARCHITECTURE.md, "Results layout").

    OUT/images/model=<slug>/run=<run_id>/<shard>.parquet
    OUT/concept_angles/model=<slug>/run=<run_id>/<shard>.parquet  (with_concepts; lists, as the
    OUT/concept_vocab/model=<slug>/run=<run_id>/vocab.parquet     audit writes since 2026-12-03)
    OUT/concepts/model=<slug>/run=<run_id>/<shard>.parquet        (with_concepts, concept_layout
                                                                  "long": runs written before)
    OUT/steer/model=<slug>/run=<run_id>/<shard>.parquet        (with_steer)
    OUT/errors/model=<slug>/run=<run_id>/<shard>.parquet
    OUT/runs/<run_id>.json

Columns and Arrow types are exactly the documented schemas (float32 angles, int32 labels),
written with pyarrow. A model whose null_dim is 0 gets NULL as_deg / abs_as_deg / is_deg /
pred_as_deg, as the audit writes them. `write_results` returns every row it wrote as Polars
frames (with `model` and `run` columns added) so tests can recompute statistics
independently of the SQL under test.

Per-model parameters (all optional) in `models={slug: params}`:
    as_scale   spread of the per-class AS offsets (deg), default 1.0: larger = more leakage
    as_noise   per-image AS noise sd (deg), default 0.5
    is_mean    mean IS (deg), default 20.0;  is_sd: per-image sd, default 3.0
    null_dim   overrides the `null_dim` argument (0 -> NULL scores)
    acc        top-1 accuracy, default 0.8
    drift      scale of the (tiny) logit drift, default 1e-4
    round_as   round AS to this many decimals (creates ties in class medians), default None
    n_classes  this model sees only classes 0..n_classes-1 (<= the global n_classes)
    steer_as   mean |AS| toward steering targets (deg), default 10.0
    runs       {run_id: {param: value}} per-run overrides (e.g. a worse candidate checkpoint)
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

# The writers' own schemas: generated results are exactly what `sing audit`/`sing steer` write.
from pipelines.stages.audit_tables import (CONCEPT_ANGLES_SCHEMA, ERRORS_SCHEMA, IMAGES_SCHEMA,  # noqa: E402,F401
                                           LONG_CONCEPTS_SCHEMA, concept_angles_table, vocab_table)

CONCEPTS_SCHEMA = LONG_CONCEPTS_SCHEMA  # the long layout (runs before 2026-12-03)
from pipelines.jobs.steer import STEER_SCHEMA  # noqa: E402,F401

# The paper's 16 classes, one name with a quote (SQL-literal hazard), then generated names.
PAPER_CLASSES = ["goldfish", "great white shark", "jellyfish", "sea lion", "starfish", "porcupine", "gazelle",
                 "Arabian camel", "chimpanzee", "anemone fish", "lionfish", "catamaran", "jeep", "minivan",
                 "pirate ship", "sports car", "jack-o'-lantern"]
DEFAULT_CONCEPTS = ["water", "stripes", "grass", "sky", "metal", "fur"]
DEFAULT_TARGETS = ["an image of a jellyfish", "an image of a zebra"]


def class_names(n: int) -> list[str]:
    return (PAPER_CLASSES + [f"class_{i:03d}" for i in range(len(PAPER_CLASSES), n)])[:n]


@dataclass
class WrittenResults:
    root: Path
    images: pl.DataFrame                    # every images row + model, run
    concepts: pl.DataFrame | None = None    # every concepts row + model, run (with_concepts)
    steer: pl.DataFrame | None = None       # every steer row + model, run (with_steer)
    files: list[Path] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)
    concepts_list: list[str] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)


def _f32(a) -> pa.Array:
    a = np.asarray(a, dtype=np.float32)
    return pa.array(a, mask=np.isnan(a), type=pa.float32())


def _write(table: pa.Table, path: Path, files: list[Path]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="zstd")
    files.append(path)


def _frame(table: pa.Table, model: str, run: str) -> pl.DataFrame:
    return pl.from_arrow(table).with_columns(pl.lit(model).alias("model"), pl.lit(run).alias("run"))


def write_results(root, models: dict[str, dict] | None = None, n_per_class: int = 20, n_classes: int = 8,
                  seed: int = 0, null_dim: int = 64, with_concepts: bool = True, with_steer: bool = False,
                  runs: tuple[str, ...] | list[str] = ("run-0",), n_shards: int = 2,
                  concepts: list[str] | None = None, targets: list[str] | None = None,
                  with_errors: bool = True, concept_layout: str = "lists") -> WrittenResults:
    """Write a synthetic results tree under `root`; see the module docstring. concept_layout:
    "lists" (the audit's), "long" (older runs') or "mixed" (a run resumed across the change:
    the first shard long, the others lists)."""
    root = Path(root)
    models = models if models is not None else {"resnet50": {}, "vit_large_patch16_224": {"as_scale": 0.3}}
    names = class_names(n_classes)
    names_arr = np.asarray(names, dtype=object)
    concepts = list(concepts or DEFAULT_CONCEPTS)
    targets = list(targets or DEFAULT_TARGETS)
    files: list[Path] = []
    img_frames, con_frames, steer_frames = [], [], []
    rng0 = np.random.default_rng(seed)
    for mi, (slug, mparams) in enumerate(models.items()):
        # Per-model class effects are shared by all runs of the model (a checkpoint diff
        # then changes them through per-run overrides).
        class_offset = rng0.normal(0.0, 1.0, n_classes)
        concept_effect = rng0.normal(0.0, 1.0, (n_classes, len(concepts)))
        for ri, run in enumerate(runs):
            p = {"as_scale": 1.0, "as_noise": 0.5, "is_mean": 20.0, "is_sd": 3.0, "null_dim": null_dim,
                 "acc": 0.8, "drift": 1e-4, "round_as": None, "steer_as": 10.0}
            p.update({k: v for k, v in mparams.items() if k != "runs"})
            p.update(mparams.get("runs", {}).get(run, {}))
            rng = np.random.default_rng([seed, mi, ri])
            nc = int(p.get("n_classes", n_classes))
            if not 1 <= nc <= n_classes:
                raise ValueError(f"per-model n_classes must be in 1..{n_classes}")
            n = n_per_class * nc
            labels = np.repeat(np.arange(nc, dtype=np.int32), n_per_class)
            rng.shuffle(labels)
            shard_of = np.arange(n) % n_shards
            wrong = rng.random(n) > p["acc"]
            pred = np.where(wrong, (labels + rng.integers(1, max(nc, 2), n)) % nc, labels).astype(np.int32)
            as_deg = class_offset[labels] * p["as_scale"] + rng.normal(0.0, p["as_noise"], n)
            if p["round_as"] is not None:
                as_deg = np.round(as_deg, p["round_as"])
            is_deg = np.abs(rng.normal(p["is_mean"], p["is_sd"], n))
            pred_as = as_deg + rng.normal(0.0, 0.3, n)
            drift = np.abs(rng.normal(0.0, p["drift"], n))
            nnf = rng.uniform(0.3, 0.9, n)
            scored = int(p["null_dim"]) > 0
            if not scored:
                as_deg = np.full(n, np.nan)
                is_deg = np.full(n, np.nan)
                pred_as = np.full(n, np.nan)
                nnf = np.zeros(n)
            as32 = as_deg.astype(np.float32)
            for s in range(n_shards):
                shard = f"shard-{s:06d}"
                sel = shard_of == s
                m = int(sel.sum())
                keys = [f"{shard}/{i:06d}" for i in np.flatnonzero(sel)]
                lab = labels[sel]
                images = pa.table({
                    "key": pa.array(keys, pa.string()),
                    "shard": pa.array([shard] * m, pa.string()),
                    "label": pa.array(lab, pa.int32()),
                    "class_name": pa.array(names_arr[lab].tolist(), pa.string()),
                    "pred": pa.array(pred[sel], pa.int32()),
                    "pred_name": pa.array(names_arr[pred[sel]].tolist(), pa.string()),
                    "as_deg": _f32(as32[sel]),
                    "abs_as_deg": _f32(np.abs(as32[sel])),
                    "is_deg": _f32(is_deg[sel]),
                    "pred_as_deg": _f32(pred_as[sel]),
                    "logit_drift": _f32(drift[sel]),
                    "null_norm_frac": _f32(nnf[sel]),
                    "null_dim": pa.array(np.full(m, int(p["null_dim"]), np.int32), pa.int32()),
                }, schema=IMAGES_SCHEMA)
                _write(images, root / "images" / f"model={slug}" / f"run={run}" / f"{shard}.parquet", files)
                img_frames.append(_frame(images, slug, run))
                if with_errors:
                    errors = pa.table({"key": [f"{shard}/bad"], "shard": [shard], "stage": ["decode"],
                                       "reason": ["truncated JPEG"]}, schema=ERRORS_SCHEMA)
                    _write(errors, root / "errors" / f"model={slug}" / f"run={run}" / f"{shard}.parquet", files)
                if with_concepts:
                    k = len(concepts)
                    before = rng.uniform(60.0, 80.0, (m, k)).astype(np.float32)
                    shift = concept_effect[lab] * p["as_scale"] + rng.normal(0.0, 0.4, (m, k))
                    after = (before - shift).astype(np.float32)
                    if not scored:
                        after = before.copy()
                    ctab = pa.table({
                        "key": pa.array(np.repeat(np.asarray(keys, dtype=object), k).tolist(), pa.string()),
                        "shard": pa.array([shard] * (m * k), pa.string()),
                        "label": pa.array(np.repeat(lab, k), pa.int32()),
                        "concept": pa.array(concepts * m, pa.string()),
                        "angle_before_deg": _f32(before.reshape(-1)),
                        "angle_after_deg": _f32(after.reshape(-1)),
                        "as_deg": _f32((before - after).reshape(-1)),
                    }, schema=CONCEPTS_SCHEMA)
                    con_frames.append(_frame(ctab, slug, run))
                    part = root / "{}" / f"model={slug}" / f"run={run}"
                    if concept_layout == "long" or (concept_layout == "mixed" and s == 0):
                        _write(ctab, Path(str(part).format("concepts")) / f"{shard}.parquet", files)
                    else:
                        cols = {"key": np.asarray(keys, dtype=object), "label": lab, "concept_before": before,
                                "concept_after": after}
                        _write(concept_angles_table(cols, np.ones(m, bool), shard),
                               Path(str(part).format("concept_angles")) / f"{shard}.parquet", files)
                        vocab = Path(str(part).format("concept_vocab")) / "vocab.parquet"
                        if not vocab.exists():
                            _write(vocab_table(concepts), vocab, files)
                if with_steer:
                    t = len(targets)
                    reachable = rng.random((m, t)) < 0.85
                    s_is = np.where(reachable, rng.normal(40.0, 0.05, (m, t)), rng.uniform(10.0, 39.0, (m, t)))
                    s_as = -np.abs(rng.normal(p["steer_as"], 1.0, (m, t)))
                    s_as = s_as.astype(np.float32)
                    stab = pa.table({
                        "key": pa.array(np.repeat(np.asarray(keys, dtype=object), t).tolist(), pa.string()),
                        "shard": pa.array([shard] * (m * t), pa.string()),
                        "label": pa.array(np.repeat(lab, t), pa.int32()),
                        "target": pa.array(targets * m, pa.string()),
                        "eps": _f32(rng.uniform(1.0, 5.0, m * t)),
                        "is_deg": _f32(s_is.reshape(-1)),
                        "as_deg": _f32(s_as.reshape(-1)),
                        "abs_as_deg": _f32(np.abs(s_as).reshape(-1)),
                        "logit_drift": _f32(rng.normal(0.0, 1e-4, m * t)),
                        "reachable": pa.array(reachable.reshape(-1), pa.bool_()),
                    }, schema=STEER_SCHEMA)
                    _write(stab, root / "steer" / f"model={slug}" / f"run={run}" / f"{shard}.parquet", files)
                    steer_frames.append(_frame(stab, slug, run))
    for run in runs:
        man = {"run_id": run, "kind": "audit",
               "models": [{"model_id": s, "slug": s, "null_dim": int(m.get("null_dim", null_dim)),
                           "num_classes": n_classes} for s, m in models.items()],
               "counts": {s: {"images": n_per_class * int(m.get("n_classes", n_classes)),
                              "errors": n_shards if with_errors else 0} for s, m in models.items()},
               "synthetic": True}
        path = root / "runs" / f"{run}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(man, indent=2) + "\n")
    return WrittenResults(
        root=root,
        images=pl.concat(img_frames),
        concepts=pl.concat(con_frames) if con_frames else None,
        steer=pl.concat(steer_frames) if steer_frames else None,
        files=files, class_names=names, concepts_list=concepts, targets=targets)


# ---- leaderboard summary rows (`sing leaderboard`), exactly queries.layouts.SCHEMAS["leaderboard"] ----
LEADERBOARD_FAMILIES = ["resnet", "vit", "convnext", "efficientnet", "regnet", "deit", "swin", "densenet", "vgg",
                        "mobilenetv3", "eva", "beit", "resnext", "levit", "xcit", "coat", "dla", "ghostnet"]
LEADERBOARD_PRETRAINS = ["in1k", "in21k_ft_in1k", "clip", "distilled", "in22k_ft_in1k", "ig1b_ft_in1k"]
LEADERBOARD_CONCEPTS = ["water", "stripes", "grass", "sky", "metal", "fur", "wood", "snow"]
# A small board: several families, a tie on median_ratio (a_tie, b_tie), a quoted name, a model
# whose weights are missing, one without a null space and one whose audit failed.
DEFAULT_BOARD = {
    "timm-resnet50.a1_in1k": {"family": "resnet", "median_abs_as": 1.6, "median_is": 30.0},
    "timm-resnet18.tv_in1k": {"family": "resnet", "median_abs_as": 2.0, "median_is": 24.0},
    "timm-vit_base_patch16_224.augreg_in21k_ft_in1k": {"family": "vit", "pretrain": "in21k_ft_in1k",
                                                       "median_abs_as": 0.5, "median_is": 22.0},
    "timm-convnext_tiny.fb_in1k": {"family": "convnext", "median_abs_as": 0.9, "median_is": 28.0},
    "timm-a_tie.in1k": {"family": "regnet", "median_ratio": 20.0},
    "timm-b_tie.in1k": {"family": "regnet", "median_ratio": 20.0},
    "timm-jack-o'-lantern_net.in1k": {"family": "efficientnet", "pretrain": "distilled"},
    "timm-deit_small_patch16_224.fb_in1k": {"family": "deit", "pretrain": "distilled"},
    "timm-ghost_weights.in1k": {"family": "resnet", "status": "skipped",
                                "reason": "no pretrained weights for resnet_ghost.in1k (not in the hub cache)"},
    "timm-vit_tiny_nonull.in1k": {"family": "vit", "status": "skipped", "num_features": 192,
                                  "reason": "no null space: 192 features, 1000 classes (null_dim 0)"},
    "timm-broken_head.in1k": {"family": "convnext", "status": "failed", "params": None,
                              "reason": "RuntimeError: CUDA out of memory in the audit"},
}


def leaderboard_models(n: int, seed: int = 0, bad_every: int = 40) -> dict[str, dict]:
    """`n` generated model entries for write_leaderboard: families and recipes drawn unevenly
    (as in timm: many resnets, few levits), every `bad_every`-th model skipped or failed."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, len(LEADERBOARD_FAMILIES) + 1)
    fams = rng.choice(LEADERBOARD_FAMILIES, n, p=weights / weights.sum())
    pres = rng.choice(LEADERBOARD_PRETRAINS, n)
    out = {}
    for j in range(n):
        p: dict = {"family": str(fams[j]), "pretrain": str(pres[j])}
        if bad_every and j % bad_every == bad_every - 1:
            p.update(status="skipped" if j % (2 * bad_every) else "failed", reason=f"generated reason {j}")
        out[f"timm-{fams[j]}_{j:04d}.{pres[j]}"] = p
    return out


def _leaderboard_row(slug: str, p: dict, rng: np.random.Generator) -> dict:
    status = p.get("status", "ok")
    fam, pre = p.get("family", "resnet"), p.get("pretrain", "in1k")
    feats = int(p.get("num_features", rng.choice([1024, 1280, 1536, 2048])))
    n_params = p.get("params", int(10 ** rng.uniform(6.3, 8.8)))
    row = {"model_string": f"timm:{slug.removeprefix('timm-')}", "model_id": slug.removeprefix("timm-"),
           "family": fam, "pretrain": pre, "status": status, "reason": p.get("reason"),
           "params": n_params, "num_features": feats,
           "num_classes": 1000, "null_dim": int(p.get("null_dim", max(feats - 1000, 0))),
           "eval_transform": "Resize(256, bicubic) CenterCrop(224) Normalize(imagenet)"}
    if status != "ok":  # a row that says why: what planning knew, NULL numbers
        return row
    abs_as = float(p.get("median_abs_as", rng.lognormal(0.0, 0.5)))
    is_ = float(p.get("median_is", rng.normal(22.0, 5.0)))
    ratio = float(p.get("median_ratio", is_ / abs_as * rng.uniform(0.9, 1.3)))
    rom = float(p.get("ratio_of_means", is_ / abs_as * rng.uniform(0.8, 1.1)))
    k = int(p.get("n_concepts", 5))
    con = rng.choice(LEADERBOARD_CONCEPTS, k, replace=False)
    mean_as = np.sort(rng.normal(0.0, 1.0, k))[::-1]
    return {**row, "n_images": 50000, "n_scored": 49990, "top1": float(p.get("top1", rng.uniform(0.55, 0.9))),
            "median_abs_as": abs_as, "median_is": is_,
            "ratio_of_means": rom, "ratio_of_means_lo": rom * rng.uniform(0.8, 0.95),
            "ratio_of_means_hi": rom * rng.uniform(1.05, 1.2),
            "median_ratio": ratio, "median_ratio_lo": ratio * rng.uniform(0.8, 0.95),
            "median_ratio_hi": ratio * rng.uniform(1.05, 1.2),
            "heldout_cosine": float(rng.uniform(0.8, 0.95)), "heldout_r2": float(rng.uniform(0.5, 0.8)),
            "translator_id": f"tr-{rng.integers(1 << 40):010x}",
            "top_concepts": [{"concept": str(c), "mean_as": float(m)} for c, m in zip(con, mean_as)],
            "seconds": float(rng.uniform(20.0, 90.0)), "audit_run": f"audit-{rng.integers(1 << 32):08x}"}


def write_leaderboard(root, models: dict[str, dict] | None = None, board: str = "b1", seed: int = 0) -> pl.DataFrame:
    """Write one leaderboard summary row per model, as `sing leaderboard` does:
    ROOT/leaderboard/model=<slug>/run=<board>/summary.parquet, in the exact schema. models:
    {slug: params} (DEFAULT_BOARD when None); params override the generated values: family,
    pretrain, status ("ok", "skipped", "failed"), reason, params, num_features, null_dim, top1,
    median_abs_as, median_is, median_ratio, ratio_of_means, n_concepts. Returns every row
    written, with `model` and `run` added (in the written types)."""
    from queries.layouts import SCHEMAS

    schema = SCHEMAS["leaderboard"]
    rng = np.random.default_rng(seed)
    frames = []
    for slug, p in (DEFAULT_BOARD if models is None else models).items():
        row = _leaderboard_row(slug, p, rng)
        table = pa.Table.from_pylist([{f.name: row.get(f.name) for f in schema}], schema=schema)
        _write(table, Path(root) / "leaderboard" / f"model={slug}" / f"run={board}" / "summary.parquet", [])
        frames.append(_frame(table, slug, board))
    return pl.concat(frames)
