"""`sing reproduce`'s report: reproduction.md, a self-contained .html (tables and an inline
figure of ours vs the paper) and .json."""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

from pipelines.jobs.reproduce import RATIO_COLUMNS, TABLE1_COLUMNS


def _cell(v, key: str = "") -> str:
    if v is None:
        return "-"
    if key == "paper" and isinstance(v, (int, float)):  # read off a plot: as printed, marked approximate
        return f"~{v:g}"
    if isinstance(v, float):
        return f"{v:+.2f}" if key.startswith("diff") else f"{v:.2f}"
    return str(v)


def markdown_table(rows: list[dict], columns) -> str:
    def esc(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(esc(h) for _, h in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(esc(_cell(r.get(k), k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join(lines)


def render_markdown(rep: dict) -> str:
    p = rep["protocol"]
    parts = [
        "# SING reproduction", "", f"Paper: {rep['paper']}.", "",
        "## IS/|AS| per model (paper Fig. 4 sweep)", "",
        markdown_table(rep["is_as_ratio"], RATIO_COLUMNS), "",
        f"## Table 1: class {p['class']!r} steered toward {p['prompt']!r} at IS = {p['is_deg']} deg", "",
        markdown_table(rep["table1"], TABLE1_COLUMNS), "",
        "## How this run differs from the paper's protocol", "",
        *[f"- {n}" for n in rep["notes"]], "",
        f"Results: `{rep['results']}` (query them with `sing query model_summary --results {rep['results']}` and "
        f"`sing query steer_summary --results {rep['results']}`); code {rep['code_version']}, "
        f"{rep['started_at']} - {rep['finished_at']}.", "",
    ]
    return "\n".join(parts)


def _figure_png(rep: dict) -> bytes | None:
    """Ours vs paper, both experiments, as one PNG (None when there is nothing to plot)."""
    ratio = [r for r in rep["is_as_ratio"] if r["ratio_of_means"] is not None or r["paper"] is not None]
    t1 = [r for r in rep["table1"] if r["mean_abs_as"] is not None or r["paper_mean"] is not None]
    if not ratio and not t1:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    nan = lambda v: np.nan if v is None else v  # noqa: E731
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
    for ax, rows, series, title in (
            (axes[0], ratio, [("ratio_of_means", "ours: ratio of means"), ("median_ratio", "ours: median ratio"),
                              ("paper", "paper (Fig. 4, approx.)")], "IS/|AS| (higher is better)"),
            (axes[1], t1, [("mean_abs_as", "ours"), ("paper_mean", "paper (Table 1)")],
             "Table 1: |AS| toward the prompt at IS = 40 deg")):
        x = np.arange(len(rows))
        w = 0.8 / len(series)
        for j, (k, lab) in enumerate(series):
            ax.bar(x + (j - (len(series) - 1) / 2) * w, [nan(r[k]) for r in rows], w, label=lab)
        ax.set_xticks(x, [r["model"] for r in rows], rotation=45, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def html_table(rows: list[dict], columns) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for _, h in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(r.get(k), k))}</td>" for k, _ in columns) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(rep: dict, png: bytes | None) -> str:
    p = rep["protocol"]
    fig = (f'<img alt="ours vs paper" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
           if png else "")
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in rep["notes"])
    return ("<!doctype html><html><head><meta charset='utf-8'><title>SING reproduction</title><style>"
            "body{font-family:sans-serif;margin:2em} table{border-collapse:collapse;font-size:13px}"
            "td,th{border:1px solid #ccc;padding:3px 6px;text-align:right} td:nth-child(-n+3){text-align:left}"
            "img{max-width:100%}</style></head><body>"
            f"<h1>SING reproduction</h1><p>Paper: {html.escape(rep['paper'])}.</p>"
            "<h2>IS/|AS| per model (paper Fig. 4 sweep)</h2>" + html_table(rep["is_as_ratio"], RATIO_COLUMNS)
            + f"<h2>Table 1: class {html.escape(repr(p['class']))} steered toward {html.escape(repr(p['prompt']))}"
            f" at IS = {p['is_deg']} deg</h2>" + html_table(rep["table1"], TABLE1_COLUMNS) + fig
            + f"<h2>How this run differs from the paper's protocol</h2><ul>{notes}</ul>"
            f"<p>Results: <code>{html.escape(rep['results'])}</code>; code {html.escape(rep['code_version'])}.</p>"
            "</body></html>")


def write_reports(out: Path, rep: dict) -> dict[str, Path]:
    from pipelines.io.layout import write_json_atomic

    out.mkdir(parents=True, exist_ok=True)
    files = {"md": out / "reproduction.md", "html": out / "reproduction.html", "json": out / "reproduction.json"}
    for key, text in (("md", render_markdown(rep)), ("html", render_html(rep, _figure_png(rep)))):
        tmp = files[key].with_name(f".{files[key].name}.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(files[key])
    write_json_atomic(json.loads(json.dumps(rep, default=str)), files["json"])
    return files


