"""The PNG figures of `sing report` (matplotlib on an Agg canvas, no pyplot state; angles
in degrees), each drawn from queries over a results directory:
  * scatter       joint (AS, IS) scatter of one model and run (a deterministic sample of at
    most `max_points` images) with the 1- and 2-sigma ellipses of the 2x2 covariance of ALL
    scored images (Mahalanobis radius 1 and 2: ~39% and ~86% of a bivariate normal), paper
    Fig. 3a;
  * ratio_bars    IS/|AS| per model and run, both definitions (mean(IS)/mean(|AS|) and the
    median of per-image IS/|AS|), paper Fig. 3b;
  * violins       per-class |AS| violins, the `top_classes` classes with the largest median
    |AS| (all classes when there are fewer), paper Fig. 4;
  * concept_bars  mean AS per concept for one class (`concept_class`, or the class with the
    most concept rows), top 30 concepts by |mean AS|, paper Fig. 5.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl

from .api import class_leakage, concept_shift
from .errors import QueryError
from .runner import sql_frame

# scored_images (a, i, aa, ok): queries/_macros.sql
_COV_SQL = """
SELECT model, run, count(*) AS n,
       avg(a) AS mean_as, avg(i) AS mean_is,
       var_samp(a) AS var_as, var_samp(i) AS var_is,
       covar_samp(a, i) AS cov
FROM scored_images($images_glob)
WHERE ok
GROUP BY model, run
"""
_POINTS_SQL = """
SELECT a, i
FROM scored_images($images_glob, $model, $run)
WHERE ok
ORDER BY hash(shard, key)
LIMIT $n
"""
_VIOLIN_SQL = """
SELECT label, aa
FROM scored_images($images_glob, $model, $run)
WHERE ok AND list_contains($labels, label)
QUALIFY row_number() OVER (PARTITION BY label ORDER BY hash(shard, key)) <= $per_class
"""

TOP_CONCEPTS = 30


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def fit_titles(fig, margin: float = 0.97) -> bool:
    """Wrap every axes title that runs past the figure's edges (a long model name or run id
    would run off the image): a title is centred on its axes, so the room it has is twice
    the distance from its centre to the nearer edge. Wraps at word boundaries, or anywhere
    in a long unbroken name. Returns whether a title was rewrapped."""
    import textwrap

    renderer = fig.canvas.get_renderer()
    changed = False
    for ax in fig.axes:
        t = ax.title
        box = t.get_window_extent(renderer)
        room = 2 * min(box.x0 + box.width / 2, fig.bbox.width - box.x0 - box.width / 2) * margin
        if not t.get_text() or box.width <= room:
            continue
        lines = t.get_text().split("\n")
        chars = max(10, int(max(len(line) for line in lines) * room / box.width))
        t.set_text("\n".join(w for line in lines for w in textwrap.wrap(line, chars, break_long_words=True) or [""]))
        changed = True
    return changed


def _save(fig, path: Path, written: list[Path]) -> None:
    fig.tight_layout()
    for _ in range(3):  # the layout moves the axes, and a wrapped title changes the layout
        if not fit_titles(fig):
            break
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


def covariances(results) -> dict[tuple[str, str], dict]:
    """(model, run) -> n, means, variances and covariance of (AS, IS) over its scored
    images: the ellipses of `scatter`."""
    cov = sql_frame(results, _COV_SQL, {}, "report covariance")
    return {(r["model"], r["run"]): r for r in cov.iter_rows(named=True)}


def scatter(results, row: dict, cov_row: dict | None, max_points: int, path: Path, written: list[Path]) -> None:
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


def ratio_bars(summary: pl.DataFrame, path: Path, written: list[Path]) -> None:
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


def violins(results, row: dict, top_classes: int, per_class: int, path: Path, written: list[Path],
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


def concept_bars(results, row: dict, concept_class: str | None, path: Path, written: list[Path],
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
