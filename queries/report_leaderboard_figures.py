"""The leaderboard's PNG figures (`sing report`, leaderboard.html), one point per model of a
board whose status is ok, coloured by architecture family and shaped by training recipe:
  * is_vs_as      median IS against median |AS| (log-log: a line of constant IS/|AS| is a
                  diagonal; a few are drawn);
  * ratio_vs_top1 the median of per-image IS/|AS| with its bootstrap 95% interval (error
                  bars) against top-1 accuracy;
  * ratio_vs_params  the same ratio against the parameter count (log x).
Made to stay readable for the whole timm zoo (~1,300 models): the most common families get a
colour each and the rest share one grey, and only the best and worst models by ratio are
labelled once a board has more than LABEL_ALL models; labels are placed so that they do not
overlap.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl

from .report_figures import _figure, fit_titles

COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf",
           "#bcbd22", "#393b79"]  # tab10 with its grey replaced: grey is "other"
OTHER = "#b0b0b0"
MARKERS = ["o", "s", "^", "D", "v", "P"]
LABEL_ALL, LABEL_BEST, LABEL_WORST = 25, 6, 4


def _groups(col: pl.Series, k: int) -> tuple[list[str], dict[str, int]]:
    """The values with a style of their own (the most frequent, ties by name: `k` of them, or
    k - 1 when the rest need an "other" entry) and each value's count."""
    counts = col.fill_null("?").value_counts().sort(["count", col.name], descending=[True, False])
    pairs = dict(counts.iter_rows())
    return list(pairs)[:k if len(pairs) <= k else k - 1], pairs


def styles(ok: pl.DataFrame) -> dict:
    """Colour per family and marker per recipe: the most common get their own, the rest
    share OTHER and 'X'; with the legends' entries (label, colour or marker)."""
    fams, fam_n = _groups(ok["family"], len(COLOURS))
    pres, pre_n = _groups(ok["pretrain"], len(MARKERS))
    colour = {f: COLOURS[j] for j, f in enumerate(fams)}
    marker = {p: MARKERS[j] for j, p in enumerate(pres)}
    rest_f = [f for f in fam_n if f not in colour]
    rest_p = [p for p in pre_n if p not in marker]
    fam_legend = [(f"{f} ({fam_n[f]})", colour[f]) for f in fams]
    if rest_f:
        fam_legend.append((f"{len(rest_f)} other families ({sum(fam_n[f] for f in rest_f)})", OTHER))
    pre_legend = [(f"{p} ({pre_n[p]})", marker[p]) for p in pres]
    if rest_p:
        pre_legend.append((f"{len(rest_p)} other recipes ({sum(pre_n[p] for p in rest_p)})", "X"))
    return {"colour": colour, "marker": marker, "families": fam_legend, "recipes": pre_legend}


def _legends(ax, st: dict) -> None:
    from matplotlib.lines import Line2D

    if not st["families"]:   # nothing plotted: say so instead of two empty legends
        ax.text(0.5, 0.5, "no model of this board has these values (status ok)", ha="center", va="center",
                transform=ax.transAxes, color="0.4")
        return

    def handle(c, m):
        return Line2D([], [], ls="", marker=m, color=c, markersize=7)

    fam = ax.legend([handle(c, "o") for _, c in st["families"]], [t for t, _ in st["families"]], title="family (models)",
                    loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title_fontsize=8, frameon=False)
    ax.add_artist(fam)
    ax.legend([handle("0.35", m) for _, m in st["recipes"]], [t for t, _ in st["recipes"]],
              title="pretraining (models)", loc="lower left", bbox_to_anchor=(1.01, 0.0), fontsize=8,
              title_fontsize=8, frameon=False)


def _points(ax, df: pl.DataFrame, x: str, y: str, st: dict, yerr: bool = False) -> None:
    """One scatter per (family colour, recipe marker) group; error bars in the family colour."""
    many = df.height > 200
    colours = [st["colour"].get(f, OTHER) for f in df["family"].fill_null("?")]
    markers = [st["marker"].get(p, "X") for p in df["pretrain"].fill_null("?")]
    xs, ys = df[x].to_numpy().astype(float), df[y].to_numpy().astype(float)
    if yerr:
        lo = np.clip(ys - df["median_ratio_lo"].fill_null(np.nan).to_numpy().astype(float), 0, None)
        hi = np.clip(df["median_ratio_hi"].fill_null(np.nan).to_numpy().astype(float) - ys, 0, None)
        for c in dict.fromkeys(colours):
            sel = np.array([k == c for k in colours])
            ax.errorbar(xs[sel], ys[sel], yerr=np.vstack([lo[sel], hi[sel]]), fmt="none", ecolor=c,
                        elinewidth=0.6 if many else 1.0, alpha=0.35 if many else 0.7, zorder=1)
    for c, m in dict.fromkeys(zip(colours, markers)):
        sel = np.array([(k, n) == (c, m) for k, n in zip(colours, markers)])
        ax.scatter(xs[sel], ys[sel], s=14 if many else 36, c=c, marker=m, alpha=0.75 if many else 0.9,
                   linewidths=0.4, edgecolors="white" if not many else "none", zorder=2)


def label_rows(ok: pl.DataFrame) -> pl.DataFrame:
    """The models a figure names: all of them on a small board, else the best LABEL_BEST and
    the worst LABEL_WORST by median_ratio."""
    if ok.height <= LABEL_ALL:
        return ok
    ranked = ok.filter(pl.col("median_ratio").is_not_null()).sort("median_ratio", descending=True)
    return pl.concat([ranked.head(LABEL_BEST), ranked.tail(LABEL_WORST)]).unique("model", keep="first")


def _short(model: str) -> str:
    name = model.removeprefix("timm-")
    return name if len(name) <= 34 else name[:33] + "…"


def _candidates() -> list[tuple[float, float, str, str]]:
    """Label offsets (points) around a point, nearest first: eight directions at three radii."""
    out = []
    for r in (8, 20, 34):
        for dx, dy, ha, va in ((1, 1, "left", "bottom"), (1, -1, "left", "top"), (-1, 1, "right", "bottom"),
                               (-1, -1, "right", "top"), (0, 1.4, "center", "bottom"), (0, -1.4, "center", "top"),
                               (1.6, 0, "left", "center"), (-1.6, 0, "right", "center")):
            out.append((dx * r, dy * r, ha, va))
    return out


def _clash(box, inside, taken) -> float:
    """How badly a label box sits: the area it shares with boxes already taken, plus a large
    penalty for leaving the axes."""
    from matplotlib.transforms import Bbox

    out = 0.0 if (box.x0 >= inside.x0 and box.x1 <= inside.x1 and box.y0 >= inside.y0 and box.y1 <= inside.y1) \
        else 1e6
    for b in taken:
        both = Bbox.intersection(box, b)
        out += 0.0 if both is None else both.width * both.height
    return out


def place_labels(ax, df: pl.DataFrame, x: str, y: str) -> list:
    """Name each model of `df` beside its point (ringed, with a short leader line): of the
    candidate offsets, the first whose box stays inside the axes and covers neither a label
    placed before nor a ringed point, else the one that clashes least; returns the texts."""
    from matplotlib.text import Text
    from matplotlib.transforms import Bbox

    renderer = ax.figure.canvas.get_renderer()
    inside = ax.get_window_extent(renderer)
    rows = [r for r in df.iter_rows(named=True)
            if r[x] is not None and r[y] is not None and math.isfinite(r[x]) and math.isfinite(r[y])]
    taken = []
    for r in rows:   # each ringed point is kept clear of every label
        px, py = ax.transData.transform((r[x], r[y]))
        taken.append(Bbox.from_extents(px - 6, py - 6, px + 6, py + 6))
        ax.scatter([r[x]], [r[y]], s=70, facecolors="none", edgecolors="black", linewidths=0.9, zorder=3)
    texts = []
    for r in rows:
        best = None
        for dx, dy, ha, va in _candidates():
            t = ax.annotate(_short(r["model"]), (r[x], r[y]), xytext=(dx, dy), textcoords="offset points",
                            ha=ha, va=va, fontsize=7, color="0.1", zorder=4,
                            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.8},
                            arrowprops={"arrowstyle": "-", "lw": 0.6, "color": "0.3", "shrinkA": 0, "shrinkB": 4})
            t.set_in_layout(False)     # the layout is final: a label must not move the axes
            t.update_positions(renderer)
            box = Text.get_window_extent(t, renderer).padded(3)   # the words only, not the leader line
            cost = _clash(box, inside, taken)
            if best is None or cost < best[0]:
                if best is not None:
                    best[1].remove()
                best = (cost, t, box)
            else:
                t.remove()
            if cost == 0:
                break
        taken.append(best[2])
        texts.append(best[1])
    return texts


def _plain_ticks(axis, params: bool = False) -> None:
    """Log-axis ticks as 0.5, 2, 30 (or 10M, 1B for parameter counts), not 3x10^1; minor
    ticks labelled only where the axis spans under two decades (over one: 2, 3, 5 only)."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    def fmt(v, _pos):
        if params:
            return next((f"{v / d:g}{u}" for d, u in ((1e9, "B"), (1e6, "M"), (1e3, "k")) if v >= d), f"{v:g}")
        return f"{v:g}"

    def minor(v, pos):   # over more than a decade, 2, 3 and 5 only: 80M90M100M would collide
        mantissa = round(v / 10 ** math.floor(math.log10(v)), 6) if v > 0 else 0
        return fmt(v, pos) if decades <= 1 or mantissa in (2, 3, 5) else ""

    lo, hi = axis.get_view_interval()
    decades = math.log10(hi / lo) if lo > 0 else math.inf
    axis.set_major_formatter(FuncFormatter(fmt))
    axis.set_minor_formatter(FuncFormatter(minor) if decades < 2 else NullFormatter())


def _fit_legends(fig, ax, margin: float = 4.0) -> None:
    """Narrow the axes until the legends beside them end inside the image (the layout engine
    can leave a long legend entry a pixel or two over the edge)."""
    renderer = fig.canvas.get_renderer()
    for _ in range(3):
        legends = [leg for leg in (ax.get_legend(), *ax.artists) if leg is not None]
        if not legends:
            return
        right = max(leg.get_window_extent(renderer).x1 for leg in legends)
        over = right - (fig.bbox.width - margin)
        if over <= 0:
            return
        pos = ax.get_position()
        ax.set_position([pos.x0, pos.y0, pos.width - over / fig.bbox.width, pos.height])


def _save(fig, path: Path, written: list[Path]) -> None:
    fig.savefig(path, format="png")
    written.append(path)


def _finish(fig, ax, st: dict, labels: pl.DataFrame, x: str, y: str, path: Path, written: list[Path]) -> None:
    """Lay the figure out, then name the models (their places are measured on the final
    layout), then save."""
    _legends(ax, st)
    ax.grid(alpha=0.3, which="both", lw=0.5)
    fig.tight_layout()
    if fit_titles(fig):
        fig.tight_layout()
    _fit_legends(fig, ax)
    place_labels(ax, labels, x, y)
    _save(fig, path, written)


def _iso_ratio_lines(ax) -> None:
    """Dashed lines IS = k |AS| for the round k that cross the plotted box, each labelled
    just inside the box where it leaves it."""
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    for k in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000):
        if k * x1 < y0 or k * x0 > y1:
            continue
        ax.plot([x0, x1], [k * x0, k * x1], ls="--", lw=0.7, color="0.6", zorder=0)
        xt = min(x1, y1 / k) / 1.04
        if xt > x0 * 1.3 and k * xt > y0 * 1.3:   # not in a corner, where it would be cut
            ax.text(xt, k * xt, f"{k}×", fontsize=7, color="0.4", ha="right", va="top", zorder=0)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)


def _ok(board: pl.DataFrame, cols: tuple[str, ...], positive: tuple[str, ...] = ()) -> pl.DataFrame:
    ok = board.filter(pl.col("status") == "ok")
    for c in cols:
        ok = ok.filter(pl.col(c).is_not_null() & pl.col(c).cast(pl.Float64).is_finite())
    for c in positive:
        ok = ok.filter(pl.col(c) > 0)
    return ok


def _title(ax, board_id: str, what: str, shown: int, total: int) -> None:
    ax.set_title(f"board {board_id}: {what}\n{shown} of {total} models plotted (status ok, values present)",
                 fontsize=10)


def is_vs_as(board: pl.DataFrame, board_id: str, path: Path, written: list[Path]) -> int:
    """Median IS against median |AS|, log-log; returns the number of models plotted."""
    ok = _ok(board, ("median_abs_as", "median_is"), ("median_abs_as", "median_is"))
    st = styles(ok)
    fig = _figure(10.0, 6.6)
    ax = fig.add_subplot(1, 1, 1)
    _points(ax, ok, "median_abs_as", "median_is", st)
    ax.set_xscale("log")
    ax.set_yscale("log")
    if ok.height:
        _iso_ratio_lines(ax)
    _plain_ticks(ax.xaxis)
    _plain_ticks(ax.yaxis)
    ax.set_xlabel("median |AS|, true-class prompt (deg, log) — lower = less class semantics hidden")
    ax.set_ylabel("median IS (deg, log) — higher = more harmless invariance")
    _title(ax, board_id, "median IS vs median |AS| (dashed: IS = k·|AS|)", ok.height, board.height)
    _finish(fig, ax, st, label_rows(ok), "median_abs_as", "median_is", path, written)
    return ok.height


def ratio_vs(board: pl.DataFrame, board_id: str, x: str, path: Path, written: list[Path]) -> int:
    """median_ratio with its 95% interval against `x` (top1, or params on a log axis)."""
    ok = _ok(board, ("median_ratio", x), ("median_ratio",) + (("params",) if x == "params" else ()))
    st = styles(ok)
    fig = _figure(10.0, 6.6)
    ax = fig.add_subplot(1, 1, 1)
    _points(ax, ok, x, "median_ratio", st, yerr=True)
    ratios = ok["median_ratio"].to_numpy()
    if ok.height and ratios.max() / ratios.min() > 8:   # a few leak-free models would squash the rest
        ax.set_yscale("log")
        _plain_ticks(ax.yaxis)
    if x == "params":
        ax.set_xscale("log")
        _plain_ticks(ax.xaxis, params=True)
        ax.set_xlabel("parameters (log)")
    else:
        ax.set_xlabel("top-1 accuracy on the eval shards")
    ax.set_ylabel("median of per-image IS/|AS| (95% bootstrap interval)" + (", log" if ax.get_yscale() == "log" else ""))
    _title(ax, board_id, f"IS/|AS| ratio vs {'parameter count' if x == 'params' else 'top-1 accuracy'}",
           ok.height, board.height)
    _finish(fig, ax, st, label_rows(ok), x, "median_ratio", path, written)
    return ok.height
