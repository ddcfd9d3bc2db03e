"""`sing report`: PNG figures (matplotlib, Agg canvas, no pyplot state) and a self-contained
index.html over a results directory.

Figures (angles in degrees):
  * as_is_<model>_<run>.png      joint (AS, IS) scatter per model and run (a deterministic
    sample of at most `max_points` images) with the 1- and 2-sigma ellipses of the 2x2
    covariance of ALL scored images (Mahalanobis radius 1 and 2: ~39% and ~86% of a
    bivariate normal), paper Fig. 3a;
  * ratio_bars.png               IS/|AS| per model and run, both definitions
    (mean(IS)/mean(|AS|) and the median of per-image IS/|AS|), paper Fig. 3b;
  * class_as_<model>_<run>.png   per-class |AS| violins, the `top_classes` classes with the
    largest median |AS| (all classes when there are fewer), paper Fig. 4;
  * concepts_<model>_<run>.png   mean AS per concept for one class (`concept_class`, or the
    class with the most concept rows), top 30 concepts by |mean AS|, paper Fig. 5; skipped
    with a note when there is no concepts table.
index.html shows them with the model_summary table, the top of class_leakage and (when a
steer table exists) steer_summary. It loads nothing from the network.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import html
import math
import re
import sys
from pathlib import Path

import numpy as np
import polars as pl

from .runner import (QueryError, _results_dir, class_leakage, concept_shift, has_table, model_summary,
                     sql_frame, steer_summary)

_HIVE = "hive_partitioning = true, hive_types = {'model': VARCHAR, 'run': VARCHAR}"
_OK = "as_deg IS NOT NULL AND is_deg IS NOT NULL AND NOT isnan(as_deg) AND NOT isnan(is_deg)"

_COV_SQL = f"""
SELECT model, run, count(*) AS n,
       avg(as_deg::DOUBLE) AS mean_as, avg(is_deg::DOUBLE) AS mean_is,
       var_samp(as_deg::DOUBLE) AS var_as, var_samp(is_deg::DOUBLE) AS var_is,
       covar_samp(as_deg::DOUBLE, is_deg::DOUBLE) AS cov
FROM read_parquet($images_glob, {_HIVE})
WHERE {_OK}
GROUP BY model, run
"""
_POINTS_SQL = f"""
SELECT as_deg::DOUBLE AS a, is_deg::DOUBLE AS i
FROM read_parquet($images_glob, {_HIVE})
WHERE model = $model AND run = $run AND {_OK}
ORDER BY hash(shard, key)
LIMIT $n
"""
_VIOLIN_SQL = f"""
SELECT label, abs_as_deg::DOUBLE AS aa
FROM read_parquet($images_glob, {_HIVE})
WHERE model = $model AND run = $run AND {_OK} AND list_contains($labels, label)
QUALIFY row_number() OVER (PARTITION BY label ORDER BY hash(shard, key)) <= $per_class
"""

TOP_CONCEPTS = 30


def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "-", str(s))


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path, written: list[Path]) -> None:
    fig.tight_layout()
    fig.savefig(path, format="png")
    written.append(path)


def _ellipse(ax, mean, cov, k: float, **kw) -> None:
    from matplotlib.patches import Ellipse

    vals, vecs = np.linalg.eigh(cov)
    vals = np.clip(vals, 0.0, None)
    angle = math.degrees(math.atan2(vecs[1, 1], vecs[0, 1]))  # direction of the largest eigenvalue
    ax.add_patch(Ellipse(mean, 2 * k * math.sqrt(vals[1]), 2 * k * math.sqrt(vals[0]), angle=angle,
                         fill=False, **kw))


def _fmt_n(n) -> str:
    return f"{int(n):,}"


def _scatter(results, row: dict, cov_row: dict | None, max_points: int, path: Path, written: list[Path]) -> None:
    model, run = row["model"], row["run"]
    fig = _figure(6.4, 5.0)
    ax = fig.add_subplot(1, 1, 1)
    title = f"{model} / {run}\nAS vs IS, n = {_fmt_n(row['n_images'])} images ({_fmt_n(row['n_scored'])} scored)"
    if not row["n_scored"]:
        ax.text(0.5, 0.5, f"no scores: null_dim = {row['null_dim']}\n(no null space to audit)",
                ha="center", va="center", transform=ax.transAxes)
    else:
        pts = sql_frame(results, _POINTS_SQL, {"model": model, "run": run, "n": max_points}, "report scatter")
        a, i = pts["a"].to_numpy(), pts["i"].to_numpy()
        shown = f"{len(a):,} shown" if len(a) < row["n_scored"] else "all shown"
        ax.scatter(a, i, s=6, alpha=0.35, color="tab:blue", linewidths=0, label=f"images ({shown})")
        if cov_row and cov_row["n"] >= 3 and cov_row["var_as"] is not None:
            mean = (cov_row["mean_as"], cov_row["mean_is"])
            cov = np.array([[cov_row["var_as"], cov_row["cov"]], [cov_row["cov"], cov_row["var_is"]]])
            if np.all(np.isfinite(cov)):
                _ellipse(ax, mean, cov, 1.0, color="tab:red", lw=1.8, label="1σ ellipse (~39%)")
                _ellipse(ax, mean, cov, 2.0, color="tab:red", lw=1.2, ls="--", label="2σ ellipse (~86%)")
                ax.plot(*mean, "x", color="tab:red", ms=8, label="mean")
                span_a = 2.4 * math.sqrt(max(cov[0, 0], 1e-12))
                span_i = 2.4 * math.sqrt(max(cov[1, 1], 1e-12))
                ax.set_xlim(min(a.min(), mean[0] - span_a), max(a.max(), mean[0] + span_a))
                ax.set_ylim(min(i.min(), mean[1] - span_i), max(i.max(), mean[1] + span_i))
        ax.axvline(0.0, color="0.6", lw=0.8)
        ax.legend(loc="best", fontsize=8)
    ax.set_xlabel("AS, true-class prompt (deg)")
    ax.set_ylabel("IS (deg)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    _save(fig, path, written)


def _ratio_bars(summary: pl.DataFrame, path: Path, written: list[Path]) -> None:
    n = summary.height
    fig = _figure(max(6.4, 0.9 * n + 2.0), 4.8)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(n)
    rom = np.array([np.nan if v is None else v for v in summary["ratio_of_means"].to_list()], float)
    med = np.array([np.nan if v is None else v for v in summary["median_ratio"].to_list()], float)
    ax.bar(x - 0.2, np.nan_to_num(rom), 0.4, label="mean(IS) / mean(|AS|)", color="tab:blue")
    ax.bar(x + 0.2, np.nan_to_num(med), 0.4, label="median of per-image IS/|AS|", color="tab:orange")
    for xi, (r, m) in enumerate(zip(rom, med)):
        if np.isnan(r) and np.isnan(m):
            ax.text(xi, 0, "n/a\n(null_dim 0)", ha="center", va="bottom", fontsize=8)
    labels = [f"{m}\n{r}\nn={_fmt_n(k)}" for m, r, k in summary.select("model", "run", "n_scored").iter_rows()]
    ax.set_xticks(x, labels, fontsize=8, rotation=30 if n > 6 else 0, ha="right" if n > 6 else "center")
    ax.set_ylabel("IS / |AS| (deg per deg)")
    ax.set_title(f"IS/|AS| ratio per model and run (higher = better), {n} model/run(s)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path, written)


def _violins(results, row: dict, top_classes: int, per_class: int, path: Path, written: list[Path],
             notes: list[str]) -> bool:
    model, run = row["model"], row["run"]
    if not row["n_scored"]:
        notes.append(f"{model} / {run}: no per-class |AS| figure (no scored images, null_dim = {row['null_dim']}).")
        return False
    cl = class_leakage(results, model=model, run=run, top=top_classes)
    cl = cl.filter(pl.col("median_abs_as").is_not_null()).sort("leakage_rank", "label")
    if cl.height == 0:
        return False
    labels = cl["label"].to_list()
    vals = sql_frame(results, _VIOLIN_SQL, {"model": model, "run": run, "labels": labels, "per_class": per_class},
                     "report violins")
    groups = {lab: g["aa"].to_numpy() for (lab,), g in vals.group_by("label")}
    data = [groups.get(lab, np.array([])) for lab in labels]
    fig = _figure(max(6.4, 0.45 * len(labels) + 2.0), 4.8)
    ax = fig.add_subplot(1, 1, 1)
    pos = np.arange(1, len(labels) + 1)
    ok = [j for j, d in enumerate(data) if len(d) >= 2 and np.ptp(d) > 0]
    if ok:
        ax.violinplot([data[j] for j in ok], positions=pos[ok], widths=0.8, showmedians=True, showextrema=False)
    for j, d in enumerate(data):
        if len(d) and j not in ok:
            ax.plot([pos[j]] * len(d), d, "o", color="tab:blue", ms=4)
    names = [f"{n}" if len(n) <= 18 else n[:17] + "…" for n in cl["class_name"].fill_null("?").to_list()]
    ax.set_xticks(pos, names, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("|AS| (deg)")
    n_cls = int(cl["n_classes"][0])
    shown = f"top {len(labels)} of {n_cls} classes by median |AS|" if len(labels) < n_cls else f"all {n_cls} classes"
    ax.set_title(f"{model} / {run}: per-class |AS|, {shown}\n(n = {_fmt_n(row['n_scored'])} scored images)",
                 fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path, written)
    return True


def _concept_bars(results, row: dict, concept_class: str | None, path: Path, written: list[Path],
                  notes: list[str]) -> bool:
    model, run = row["model"], row["run"]
    if not row["n_scored"]:
        notes.append(f"{model} / {run}: no concept figure (no scored images, null_dim = {row['null_dim']}).")
        return False
    try:
        cs = concept_shift(results, model=model, run=run)
    except QueryError as exc:
        notes.append(f"{model} / {run}: no concept figure ({exc}).")
        return False
    if cs.height == 0:
        notes.append(f"{model} / {run}: no concept rows.")
        return False
    per_class = (cs.group_by("label", "class_name").agg(pl.col("n").max().alias("n"))
                 .sort(["n", "label"], descending=[True, False]))
    if concept_class is not None:
        pick = per_class.filter(pl.col("class_name") == concept_class)
        if pick.height == 0:
            some = ", ".join(per_class["class_name"].drop_nulls().head(8).to_list())
            notes.append(f"{model} / {run}: class {concept_class!r} has no concept rows (classes with concepts "
                         f"include: {some}).")
            return False
    else:
        pick = per_class.head(1)
    label, cname, n_img = pick.row(0)
    d = (cs.filter(pl.col("label") == label).filter(pl.col("mean_as").is_not_null())
         .sort(pl.col("mean_as").abs(), descending=True).head(TOP_CONCEPTS).sort("mean_as"))
    n_con = cs.filter(pl.col("label") == label).height
    fig = _figure(7.2, max(3.0, 0.28 * d.height + 1.8))
    ax = fig.add_subplot(1, 1, 1)
    y = np.arange(d.height)
    mean = d["mean_as"].to_numpy()
    sem = (d["std_as"].fill_null(0.0) / d["n"].cast(pl.Float64).sqrt()).to_numpy()
    ax.barh(y, mean, xerr=sem, color=np.where(mean > 0, "tab:red", "tab:blue"), alpha=0.85, capsize=2)
    ax.set_yticks(y, d["concept"].to_list(), fontsize=8)
    ax.axvline(0.0, color="0.3", lw=0.8)
    ax.set_xlabel("mean AS toward the concept (deg), ± s.e.m.\n> 0: null-free equivalent closer to the concept")
    shown = f"top {d.height} of {n_con} concepts by |mean AS|" if d.height < n_con else f"{n_con} concepts"
    ax.set_title(f"{model} / {run}: class '{cname}' ({_fmt_n(n_img)} images), {shown}", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    _save(fig, path, written)
    return True


# ------------------------------------------------------------------------------ HTML

def _html_table(df: pl.DataFrame, max_rows: int = 200) -> str:
    def cell(v):
        if v is None:
            return "<td class=null>NULL</td>"
        if isinstance(v, bool):
            return f"<td>{'true' if v else 'false'}</td>"
        if isinstance(v, float):
            return f"<td class=num>{'NaN' if math.isnan(v) else f'{v:.3f}'}</td>"
        if isinstance(v, int):
            return f"<td class=num>{v}</td>"
        return f"<td>{html.escape(str(v))}</td>"

    head = "".join(f"<th>{html.escape(c)}</th>" for c in df.columns)
    body = "\n".join("<tr>" + "".join(cell(v) for v in r) + "</tr>" for r in df.head(max_rows).iter_rows())
    more = f"<p class=note>{df.height - max_rows} more rows not shown.</p>" if df.height > max_rows else ""
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>{more}"


_CSS = """
body { font-family: sans-serif; margin: 1.5em; color: #222; max-width: 1400px; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.8em; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 2px 6px; } th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; } td.null { color: #999; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #eee; } figcaption { font-size: 0.8em; color: #555; }
.note { color: #8a5a00; font-size: 0.9em; }
"""


def _index_html(results, summary, leak_top, steer, sections, notes) -> str:
    parts = ["<!DOCTYPE html>", "<html lang=en><head><meta charset=utf-8>",
             "<title>SING report</title>", f"<style>{_CSS}</style></head><body>",
             "<h1>SING null-space audit report</h1>",
             f"<p>Results: <code>{html.escape(str(Path(results).resolve()))}</code>; generated "
             f"{_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}. Angles in degrees. "
             "AS: angle change toward the true-class prompt when the null-space component is removed "
             "(|AS| small = good); IS: angle between the image and its null-free equivalent (large = "
             "rich harmless invariance). std = sample standard deviation.</p>",
             "<h2>Model summary</h2>",
             "<p>ratio_of_means = mean(IS)/mean(|AS|); median_ratio = median of per-image IS/|AS|. "
             "Ordered by ratio_of_means.</p>",
             _html_table(summary)]
    for title, caption, files in sections:
        parts.append(f"<h2>{html.escape(title)}</h2>")
        if caption:
            parts.append(f"<p>{html.escape(caption)}</p>")
        for f in files:
            parts.append(f'<figure><img src="{html.escape(f.name)}" alt="{html.escape(f.stem)}">'
                         f"<figcaption>{html.escape(f.name)}</figcaption></figure>")
    parts += ["<h2>Class leakage (top classes per model and run)</h2>",
              "<p>leakage_rank 1 = largest median |AS| within the model and run.</p>", _html_table(leak_top)]
    if steer is not None:
        parts += ["<h2>Null-space steering</h2>",
                  "<p>|AS| toward the target over reachable images (lower = harder to hide a foreign "
                  "concept).</p>", _html_table(steer)]
    if notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li class=note>{html.escape(n)}</li>" for n in notes) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------------------- public

def build_report(results: str, out: str, models: list[str] | None = None, concept_class: str | None = None,
                 top_classes: int = 20, max_points: int = 5000, per_class: int = 2000,
                 leak_rows: int = 10) -> list[Path]:
    """Write the figures and index.html under `out`; returns the written paths (PNGs, then
    index.html last). models: restrict to these model slugs (all their runs); concept_class:
    the class_name of the concept figure (default: the class with the most concept rows);
    top_classes: classes per violin figure; max_points: points per scatter; per_class: |AS|
    values per class in a violin; leak_rows: class_leakage rows per model in the HTML.
    Raises QueryError for a missing results directory or an unknown model."""
    return _build_report(results, out, models, concept_class, top_classes, max_points, per_class, leak_rows)[0]


def _build_report(results, out, models, concept_class, top_classes, max_points, per_class,
                  leak_rows) -> tuple[list[Path], list[str]]:
    root = _results_dir(results)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = model_summary(root)
    if models:
        known = sorted(set(summary["model"].to_list()))
        unknown = [m for m in models if m not in known]
        if unknown:
            raise QueryError(f"no rows for model {', '.join(map(repr, unknown))} in {root / 'images'} "
                             f"(models: {', '.join(known)})")
        summary = summary.filter(pl.col("model").is_in(list(models)))
    written: list[Path] = []
    notes: list[str] = []
    rows = list(summary.iter_rows(named=True))
    cov = {(r["model"], r["run"]): r for r in sql_frame(root, _COV_SQL, {}, "report covariance").iter_rows(named=True)}

    scatter_files = []
    for j, r in enumerate(rows):
        p = out / f"as_is_{j:02d}_{_safe(r['model'])}_{_safe(r['run'])}.png"
        _scatter(root, r, cov.get((r["model"], r["run"])), max_points, p, written)
        scatter_files.append(p)
    ratio = out / "ratio_bars.png"
    _ratio_bars(summary, ratio, written)

    violin_files = []
    for j, r in enumerate(rows):
        p = out / f"class_as_{j:02d}_{_safe(r['model'])}_{_safe(r['run'])}.png"
        if _violins(root, r, top_classes, per_class, p, written, notes):
            violin_files.append(p)

    concept_files = []
    if not has_table(root, "concepts"):
        notes.append(f"No concepts table under {root / 'concepts'} (audit run without --concepts): "
                     "concept-shift figures skipped.")
    else:
        for j, r in enumerate(rows):
            p = out / f"concepts_{j:02d}_{_safe(r['model'])}_{_safe(r['run'])}.png"
            if _concept_bars(root, r, concept_class, p, written, notes):
                concept_files.append(p)

    leak = class_leakage(root, top=leak_rows)
    if models:
        leak = leak.filter(pl.col("model").is_in(list(models)))
    leak_top = leak.select("model", "run", "leakage_rank", "label", "class_name", "n", "median_abs_as",
                           "mean_abs_as", "std_abs_as", "max_abs_as", "median_is", "top1_acc")
    steer = None
    if has_table(root, "steer"):
        steer = steer_summary(root)
        if models:
            steer = steer.filter(pl.col("model").is_in(list(models)))
    sections = [
        ("Joint AS / IS distribution (paper Fig. 3a)",
         "Each point is an image; ellipses from the covariance of all scored images of the model and run "
         "(1σ and 2σ Mahalanobis radius).", scatter_files),
        ("IS/|AS| ratio (paper Fig. 3b)", "Both definitions; higher = better.", [ratio]),
        ("Per-class |AS| (paper Fig. 4)", f"Top {top_classes} classes by median |AS| per model and run.",
         violin_files),
    ]
    if concept_files:
        sections.append(("Concept shift (paper Fig. 5)",
                         "Mean AS toward each concept for one class; > 0: removing the null-space component "
                         "moves the image toward the concept.", concept_files))
    index = out / "index.html"
    index.write_text(_index_html(root, summary, leak_top, steer, sections, notes))
    written.append(index)
    return written, notes


def cli_report(args: list[str] | None = None) -> int:
    """`sing report --results DIR --out DIR [--model M ...] [--class NAME]`; 2 on error."""
    p = argparse.ArgumentParser(prog="sing report",
                                description="PNG figures and index.html over a results directory.")
    p.add_argument("--results", required=True, metavar="DIR", help="results directory")
    p.add_argument("--out", required=True, metavar="DIR", help="report directory (created)")
    p.add_argument("--model", action="append", default=None, metavar="SLUG",
                   help="only this model (repeatable; default: all)")
    p.add_argument("--class", dest="concept_class", metavar="NAME",
                   help="class_name for the concept-shift figure (default: class with most concept rows)")
    p.add_argument("--top-classes", type=int, default=20, metavar="N", help="classes per violin figure (20)")
    p.add_argument("--max-points", type=int, default=5000, metavar="N", help="points per scatter (5000)")
    try:
        a = p.parse_args(list(sys.argv[1:] if args is None else args))
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    try:
        files, notes = _build_report(a.results, a.out, a.model, a.concept_class, a.top_classes, a.max_points,
                                     2000, 10)
    except (QueryError, OSError) as exc:
        print(f"sing report: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    for n in notes:
        print(f"note: {n}", file=sys.stderr)
    print(f"wrote {len(files)} files; open {files[-1]}")
    return 0
