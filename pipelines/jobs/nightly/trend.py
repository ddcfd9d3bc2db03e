"""The trend page of a nightly series, OUT/nightly/<name>/trend.html, rewritten each night:
median |AS|, the IS/|AS| ratio and the error rate of every judged checkpoint in training order
(the series' `checkpoints.order`), the alarm level each was judged against (its baseline's
value moved by the threshold) and the paired confidence interval of its change, alarms
marked. One static page, the figure inline (base64 PNG), no script.

Values come from the results (queries.model_summary) and the run manifests (error counts);
limits, intervals and verdicts from state.json's records (their `checks`, see nightly.py).
"""
from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path

from pipelines.io.layout import write_atomic
from pipelines.io.manifest import load_manifest
from pipelines.jobs.nightly.checkpoints import nightly_dir

PANELS = (("median_abs_as", "median |AS| (deg)", "median_abs_as_increase_deg"),
          ("ratio", "IS/|AS| ({ratio})", "{ratio}_drop_rel"),
          ("error_rate", "error rate", "error_rate"))


def _num(v) -> float:
    return float("nan") if v is None else float(v)


def trend_rows(cfg, judged: dict) -> list[dict]:
    """One row per judged checkpoint in training order: name, verdict, run_id, slug, the three
    values, and per panel the alarm level, the interval of the value and whether it failed."""
    from queries import model_summary

    ratio = cfg.thresholds.is_as_ratio
    order = cfg.checkpoints.order
    recs = sorted(judged.values(), key=lambda r: tuple(r["order_key"][order]))
    summary = {(r["model"], r["run"]): r for r in model_summary(cfg.out).iter_rows(named=True)}
    rows = []
    for r in recs:
        st = summary.get((r["slug"], r["run_id"]), {})
        counts = ((load_manifest(cfg.out, r["run_id"]) or {}).get("counts") or {}).get(r["slug"], {})
        n = counts.get("images", 0) + counts.get("errors", 0)
        row = {"name": r["name"], "verdict": r["verdict"], "run_id": r["run_id"], "slug": r["slug"],
               "median_abs_as": _num(st.get("median_abs_as")), "ratio": _num(st.get(ratio)),
               "error_rate": counts.get("errors", 0) / n if n else float("nan")}
        checks = {c["check"]: c for c in r.get("checks") or []}
        for key, _label, check in PANELS:
            c = checks.get(check.format(ratio=ratio))
            row[f"{key}_limit"], row[f"{key}_ci"] = _limit_and_ci(key, c)
            row[f"{key}_failed"] = bool(c and c["passed"] is False)
        rows.append(row)
    return rows


def _limit_and_ci(key: str, c: dict | None) -> tuple[float, tuple[float, float] | None]:
    """A check in the units of its panel: the alarm level and the interval of the candidate's
    value (a change's interval moved by the baseline's value)."""
    if not c:
        return float("nan"), None
    b, lim, ci = c.get("baseline"), c["limit"], c.get("interval")
    if key == "error_rate":
        return lim, tuple(ci) if ci else None
    if b is None or (isinstance(b, float) and math.isnan(b)):
        return float("nan"), None
    if key == "median_abs_as":  # limit on the rise in degrees
        return b + lim, (b + ci[0], b + ci[1]) if ci else None
    # the ratio: limit on its relative fall
    return b * (1 - lim), (b * (1 - ci[1]), b * (1 - ci[0])) if ci else None


def _panel(ax, x, rows, key, label) -> None:
    import numpy as np

    y = np.array([r[key] for r in rows], float)
    ax.plot(x, y, "o-", color="tab:blue", lw=1.5, ms=5, label="checkpoint")
    lo = np.array([r[f"{key}_ci"][0] if r[f"{key}_ci"] else np.nan for r in rows])
    hi = np.array([r[f"{key}_ci"][1] if r[f"{key}_ci"] else np.nan for r in rows])
    has = ~np.isnan(lo)
    if has.any():
        ax.errorbar(x[has], (lo[has] + hi[has]) / 2, yerr=(hi[has] - lo[has]) / 2, fmt="none", ecolor="tab:blue",
                    alpha=0.5, capsize=3, label="confidence interval")
    lim = np.array([r[f"{key}_limit"] for r in rows], float)
    if (~np.isnan(lim)).any():  # each checkpoint's own level: its baseline moved by the threshold
        ax.hlines(lim, x - 0.35, x + 0.35, color="tab:red", ls="--", lw=1.5, label="alarm level (threshold)")
    bad = np.array([r[f"{key}_failed"] for r in rows], bool)
    if bad.any():
        ax.plot(x[bad], y[bad], "X", color="tab:red", ms=11, label="alarm")
    for j, r in enumerate(rows):
        if r["verdict"] == "alarm":
            ax.axvspan(j - 0.4, j + 0.4, color="tab:red", alpha=0.07, lw=0)
    ax.set_ylabel(label, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the panel, never over it


def trend_png(cfg, rows: list[dict]) -> bytes:
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = len(rows)
    fig = Figure(figsize=(max(8.5, 0.7 * n + 4.5), 8.0), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(3, 1, sharex=True)
    x = np.arange(n)
    for ax, (key, label, _check) in zip(axes, PANELS):
        _panel(ax, x, rows, key, label.format(ratio=cfg.thresholds.is_as_ratio))
    names = [r["name"] if len(r["name"]) <= 24 else r["name"][:23] + "…" for r in rows]
    axes[-1].set_xticks(x, names, rotation=45 if n > 4 else 0, ha="right" if n > 4 else "center", fontsize=8)
    axes[-1].set_xlabel(f"checkpoint, in training order ({cfg.checkpoints.order})", fontsize=9)
    axes[0].set_title(f"nightly '{cfg.name}': {n} checkpoint(s), alarm on {cfg.thresholds.alarm_on}", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _fmt(v, spec=".4g") -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def trend_html(cfg, rows: list[dict], png: bytes) -> str:
    head = ("<tr><th>checkpoint</th><th>verdict</th><th>median |AS|</th><th>alarm level</th><th>IS/|AS|</th>"
            "<th>alarm level</th><th>error rate</th><th>limit</th><th>run</th></tr>")
    body = []
    for r in rows:
        cells = [r["name"], r["verdict"].upper()] + [
            _fmt(r[k]) for k in ("median_abs_as", "median_abs_as_limit", "ratio", "ratio_limit", "error_rate",
                                 "error_rate_limit")] + [r["run_id"]]
        cls = " class=alarm" if r["verdict"] == "alarm" else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    th = cfg.thresholds
    limits = [f"median |AS| may rise by {th.max_median_abs_as_increase_deg} deg"
              if th.max_median_abs_as_increase_deg is not None else "",
              f"{th.is_as_ratio} may fall by {th.max_is_as_ratio_drop_rel:.0%} of the baseline's"
              if th.max_is_as_ratio_drop_rel is not None else "",
              f"the error rate may reach {th.max_error_rate}" if th.max_error_rate is not None else ""]
    return "\n".join([
        "<!DOCTYPE html>", "<html lang=en><head><meta charset=utf-8>",
        f"<title>SING nightly trend: {html.escape(cfg.name)}</title><style>",
        "body{font-family:sans-serif;margin:1.5em;color:#222;max-width:1400px} h1{font-size:1.4em;"
        "overflow-wrap:anywhere} img{max-width:100%;border:1px solid #eee} table{border-collapse:collapse;"
        "font-size:0.8em} th,td{border:1px solid #ddd;padding:2px 6px;overflow-wrap:anywhere} "
        "tr.alarm td{background:#fde8e8}",
        "</style></head><body>",
        f"<h1>SING nightly trend: {html.escape(cfg.name)}</h1>",
        "<p>Each checkpoint against its baseline; red dashes: its alarm level, the baseline's value moved by the "
        f"threshold ({html.escape('; '.join(x for x in limits if x) or 'no thresholds')}). Bars: "
        f"{th.confidence:.0%} paired confidence intervals. An alarm fires on the {html.escape(th.alarm_on)} "
        "estimate. Red X: a failed check; red band: an alarmed checkpoint.</p>",
        f'<img src="data:image/png;base64,{base64.b64encode(png).decode()}" alt="trend of {html.escape(cfg.name)}">',
        "<table>", head, *body, "</table></body></html>"]) + "\n"


def write_trend(cfg, judged: dict) -> Path:
    """Write OUT/nightly/<name>/trend.html from the judged checkpoints; returns its path."""
    rows = trend_rows(cfg, judged)
    path = nightly_dir(cfg) / "trend.html"
    page = trend_html(cfg, rows, trend_png(cfg, rows))
    write_atomic(str(path), lambda fh: fh.write(page.encode("utf-8")))
    return path
