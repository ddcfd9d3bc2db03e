"""`sing validate`: is the null space really invisible to the classifier? (paper supp. Figs. 9, 13)

For a sample of images: the logit change max_c |W x - W f| when the null part is removed
(x = f~), versus two perturbations of exactly the same norm |P_n f| per image
(sing_ops.matched_perturbations): a random direction, and a random direction inside the
principal (row) space of W. Null removal must leave the logits unchanged (float64 rounding,
~1e-13) while the others move them by O(1). Everything is computed in float64 from the
model's own features; no translator is needed. In process (a sample of a few dozen images).

Outputs in OUT: validate-<slug>.parquet / .csv (one row per image and kind),
validate-<slug>.png (log-x histograms of the three distributions) and
validate-<slug>.json (the summary).
"""
from __future__ import annotations

import logging
import math
import random
import sys
from dataclasses import asdict, dataclass

from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from pipelines.errors import BadInput
from pipelines.options import PrecisionOptions, RankOptions, add_arguments, from_namespace, opt

log = logging.getLogger("sing.validate")

KINDS = ("null", "random", "principal")
PLOT_FLOOR = 1e-20  # exact zeros are drawn here on the log axis


class ValidateError(BadInput):
    """Bad `sing validate` input (exit 2)."""


@dataclass
class ValidateOptions(PrecisionOptions, RankOptions):
    model: str = opt(help="classifier MODEL string")
    shards: list[str] = opt(help="webdataset shards to sample from (globs, brace ranges)")
    out: str = opt(help="output directory (local)")
    n: int = opt(64, "images to sample")
    seed: int = opt(0, "sampling and perturbation seed")
    batch_size: int = opt(32, "images per forward batch")
    device: str | None = opt(None, "cpu or cuda (default: cuda when available)")
    max_pixels: int | None = opt(None, "decompression-bomb guard in pixels (default: PIL's)")


def perturbation_drifts(f, weight, decomposition, bias=None, seed: int = 0) -> dict[str, np.ndarray]:
    """float64 per image: the perturbation norm |P_n f|, the logit scale max_c |W f + b| and
    max_c |W x - W f| for x = f~ (null removed), f + random, f + principal (same norm)."""
    from sing_ops import logit_drift, matched_perturbations

    f = torch.as_tensor(f).to(torch.float64)
    w = torch.as_tensor(weight).to(torch.float64)
    dec = decomposition.to(dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    f_null, f_rand, f_prin = matched_perturbations(f, dec, generator=g)
    logits = f @ w.T + (torch.as_tensor(bias).to(torch.float64) if bias is not None else 0.0)
    out = {"norm": torch.linalg.vector_norm(f - f_null, dim=-1).numpy(),
           "logit_scale": logits.abs().amax(-1).numpy()}
    for kind, x in zip(KINDS, (f_null, f_rand, f_prin)):
        out[kind] = logit_drift(w, f, x).numpy()
    return out


def summarise(table: pa.Table) -> dict:
    """Per kind: n, median, mean, min, max of the logit drift; ratios of medians to null's,
    and whether every random/principal drift exceeds every null drift."""
    kind = np.asarray(table.column("kind").to_pylist(), dtype=object)
    drift = table.column("logit_drift").to_numpy()
    out: dict = {"kinds": {}}
    for k in KINDS:
        d = drift[kind == k]
        out["kinds"][k] = {"n": int(d.size), "median": float(np.median(d)) if d.size else math.nan,
                           "mean": float(d.mean()) if d.size else math.nan,
                           "min": float(d.min()) if d.size else math.nan, "max": float(d.max()) if d.size else math.nan}
    null = out["kinds"]["null"]
    denom = max(null["median"], np.finfo(np.float64).tiny)
    for k in ("random", "principal"):
        out[f"median_ratio_{k}_to_null"] = out["kinds"][k]["median"] / denom
        out[f"{k}_min_over_null_max"] = out["kinds"][k]["min"] / max(null["max"], np.finfo(np.float64).tiny)
    out["separated"] = bool(min(out["kinds"]["random"]["min"], out["kinds"]["principal"]["min"]) > null["max"])
    return out


def format_summary(summary: dict, model: str, null_dim: int) -> str:
    lines = [f"{model}: null_dim {null_dim}, {summary['kinds']['null']['n']} images "
             "(logit drift = max_c |W x - W f|, float64; same perturbation norm |P_n f| for all kinds)",
             f"  {'kind':<10s} {'median':>11s} {'mean':>11s} {'max':>11s}"]
    for k in KINDS:
        s = summary["kinds"][k]
        lines.append(f"  {k:<10s} {s['median']:11.3e} {s['mean']:11.3e} {s['max']:11.3e}")
    lines.append(f"  median ratio random/null {summary['median_ratio_random_to_null']:.3e}, "
                 f"principal/null {summary['median_ratio_principal_to_null']:.3e}; "
                 f"every random/principal drift > every null drift: {summary['separated']}")
    return "\n".join(lines)


def sample_images(shards: list[str], n: int, seed: int, max_pixels=None):
    """Up to n decodable images spread over the shards: shard order shuffled with `seed`,
    ceil(n / #shards) per shard first, then more from each shard if some ran short."""
    from pipelines.io.images import ImageDecodeError, decode_image
    from pipelines.io.shards import Sample, iter_shard, shard_name

    order = list(shards)
    random.Random(seed).shuffle(order)
    quota = max(1, math.ceil(n / len(order)))
    got, seen, bad = [], set(), set()
    for unlimited in (False, True):  # first a fair share per shard, then whatever is left
        for path in order:
            taken = 0
            for item in iter_shard(path, require_label=False):
                if len(got) >= n or (not unlimited and taken >= quota):
                    break
                ident = (item.shard, item.key)
                if ident in seen or ident in bad:
                    continue
                if not isinstance(item, Sample):
                    bad.add(ident)
                    continue
                try:
                    img = decode_image(item.image, **({"max_pixels": max_pixels} if max_pixels else {}))
                except ImageDecodeError:
                    bad.add(ident)
                    continue
                seen.add(ident)
                got.append((item.key, shard_name(path), -1 if item.label is None else int(item.label), img))
                taken += 1
            if len(got) >= n:
                return got, len(bad)
    skipped = len(bad)
    return got, skipped


def run_validate(cfg: ValidateOptions) -> dict:
    from sing_ops import HeadDecomposition

    from pipelines.io.images import to_uint8_view
    from pipelines.models.precision import configure, features_and_logits, model_inputs
    from pipelines.io.layout import slug, write_json_atomic, write_table_atomic
    from pipelines.io.manifest import code_version, utc_now
    from pipelines.stages.actors import pick_device
    from pipelines.models.classifiers import load_classifier
    from pipelines.io.shards import expand_shards

    if cfg.n < 1:
        raise ValidateError(f"--n must be >= 1, got {cfg.n}")
    started = utc_now()
    shards = expand_shards(cfg.shards)
    clf = load_classifier(cfg.model)
    dec = HeadDecomposition.from_weight(clf.head_weight, atol=cfg.rank_atol, rtol=cfg.rank_rtol)
    if dec.null_dim == 0:
        raise ValidateError(f"{clf.model_id} has no null space (null_dim 0: {clf.num_classes} classes, "
                            f"{clf.num_features} features, rank {dec.rank}): there is nothing to validate")
    images, skipped = sample_images(shards, cfg.n, cfg.seed, cfg.max_pixels)
    if not images:
        raise ValidateError(f"no decodable image in {len(shards)} shard(s)")
    if len(images) < cfg.n:
        log.warning("only %d decodable images in the shards (asked for %d)", len(images), cfg.n)
    device = pick_device(cfg.device)
    configure(cfg.precision)
    clf.to(device, channels_last=device.type == "cuda")
    feats = []
    for i in range(0, len(images), cfg.batch_size):
        u8 = np.stack([to_uint8_view(im[3], clf.preprocess) for im in images[i:i + cfg.batch_size]])
        feats.append(features_and_logits(clf, model_inputs(u8, clf.preprocess, cfg.precision, device),
                                         cfg.precision)[0].cpu())
    f = torch.cat(feats)
    finite = torch.isfinite(f).all(-1)
    if not finite.all():
        log.warning("dropping %d images with non-finite features", int((~finite).sum()))
        images = [im for im, ok in zip(images, finite.tolist()) if ok]
        f = f[finite]
    d = perturbation_drifts(f, clf.head_weight, dec, clf.head_bias, cfg.seed)
    n = len(images)
    keys = [im[0] for im in images]
    table = pa.table({
        "key": pa.array(keys * 3, pa.string()),
        "shard": pa.array([im[1] for im in images] * 3, pa.string()),
        "label": pa.array([im[2] for im in images] * 3, pa.int32()),
        "kind": pa.array([k for k in KINDS for _ in range(n)], pa.string()),
        "perturbation_norm": pa.array(np.tile(d["norm"], 3), pa.float64()),
        "logit_scale": pa.array(np.tile(d["logit_scale"], 3), pa.float64()),
        "logit_drift": pa.array(np.concatenate([d[k] for k in KINDS]), pa.float64()),
    })
    table = table.append_column("rel_logit_drift", pa.array(
        table.column("logit_drift").to_numpy() / np.maximum(table.column("logit_scale").to_numpy(), 1e-300),
        pa.float64()))
    summary = summarise(table)
    out = Path(cfg.out)
    stem = f"validate-{slug(clf.model_id)}"
    write_table_atomic(table, out / f"{stem}.parquet")
    csv_tmp = out / f".{stem}.csv.tmp"
    import pyarrow.csv as pacsv

    pacsv.write_csv(table, csv_tmp)
    csv_tmp.replace(out / f"{stem}.csv")
    png = plot_histogram(table, out / f"{stem}.png", f"{clf.model_id} (null_dim {dec.null_dim}, {n} images)")
    report = {"kind": "validate", "model": clf.model_id, "checkpoint_sha256": clf.checkpoint_sha256,
              "precision": cfg.precision,
              **dec.summary(), "n_images": n, "skipped_samples": skipped, "seed": cfg.seed, "summary": summary,
              "files": {"parquet": str(out / f"{stem}.parquet"), "csv": str(out / f"{stem}.csv"), "png": str(png)},
              "started_at": started, "finished_at": utc_now(), "code_version": code_version(),
              "config": {**asdict(cfg), "argv": sys.argv}}
    write_json_atomic(report, out / f"{stem}.json")
    report["text"] = format_summary(summary, clf.model_id, dec.null_dim)
    return report


def plot_histogram(table: pa.Table, path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kind = np.asarray(table.column("kind").to_pylist(), dtype=object)
    drift = np.maximum(table.column("logit_drift").to_numpy(), PLOT_FLOOR)
    lo, hi = math.floor(math.log10(drift.min())), math.ceil(math.log10(drift.max())) + 1
    bins = np.logspace(lo, hi, max(20, 4 * (hi - lo)))
    colours = {"null": "tab:green", "random": "tab:blue", "principal": "tab:red"}
    labels = {"null": "null removal f - P_n f", "random": "random, same norm", "principal": "principal, same norm"}
    fig, ax = plt.subplots(figsize=(7, 4))
    for k in KINDS:
        d = drift[kind == k]
        ax.hist(d, bins=bins, alpha=0.6, color=colours[k], label=f"{labels[k]} (median {np.median(d):.1e})")
    ax.set_xscale("log")
    ax.set_xlabel("logit change  max_c |W x - W f|  (log scale; zeros drawn at 1e-20)")
    ax.set_ylabel("images")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


def cli_args(p) -> None:
    from pipelines.models.spec import MODEL_EPILOG

    add_arguments(p, ValidateOptions)
    p.epilog = MODEL_EPILOG


def cli_run(a) -> int:
    rep = run_validate(from_namespace(ValidateOptions, a))
    print(rep["text"])
    print(f"table: {rep['files']['parquet']} (and .csv)  histogram: {rep['files']['png']}")
    return 0
