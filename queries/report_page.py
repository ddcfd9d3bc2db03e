"""index.html of `sing report`: one static page (inline CSS, no script, nothing loaded from the
network) with the figures (PNG files beside it), the gallery strips (inline JPEGs) and the
query tables."""
from __future__ import annotations

import datetime as _dt
import html
import math
from pathlib import Path

import polars as pl


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

    # a column name may break after its underscores (mean_<wbr>abs_<wbr>as), so wide tables fit
    head = "".join(f"<th>{html.escape(c).replace('_', '_<wbr>')}</th>" for c in df.columns)
    body = "\n".join("<tr>" + "".join(cell(v) for v in r) + "</tr>" for r in df.head(max_rows).iter_rows())
    more = f"<p class=note>{df.height - max_rows} more rows not shown.</p>" if df.height > max_rows else ""
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>{more}"


_CSS = """
body { font-family: sans-serif; margin: 1.5em; color: #222; max-width: 1400px; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
h1, h2, h3, figcaption { overflow-wrap: anywhere; } td { overflow-wrap: break-word; }  /* never off the page */
table { border-collapse: collapse; font-size: 0.8em; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 2px 6px; } th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; } td.null { color: #999; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #eee; } figcaption { font-size: 0.8em; color: #555; }
.note { color: #8a5a00; font-size: 0.9em; }
"""


def index_html(results, summary, leak_top, steer, sections, notes, gallery: str | None = None,
               board: str | None = None) -> str:
    """The page: the summary table, the figure sections (title, caption, files), the gallery
    strips (HTML from report_gallery, or None), the top of class_leakage, steer_summary (or
    None) and the notes; `board`: the link to leaderboard.html (HTML), or None."""
    from .report_gallery_page import THUMB_CSS

    parts = ["<!DOCTYPE html>", "<html lang=en><head><meta charset=utf-8>",
             "<title>SING report</title>", f"<style>{_CSS}{THUMB_CSS}</style></head><body>",
             "<h1>SING null-space audit report</h1>",
             f"<p>Results: <code>{html.escape(str(Path(results).resolve()))}</code>; generated "
             f"{_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}. Angles in degrees. "
             "AS: angle change toward the true-class prompt when the null-space component is removed "
             "(|AS| small = good); IS: angle between the image and its null-free equivalent (large = "
             "rich harmless invariance). std = sample standard deviation.</p>",
             board or "",
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
    if gallery:
        parts += ["<h2>Image galleries</h2>",
                  "<p>The images that hide the most (highest |AS|) and the least (lowest |AS|) class semantics in "
                  "the null space, and those with the largest IS, per model and run; each model's page also has "
                  "the top classes by median |AS|.</p>", gallery]
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
