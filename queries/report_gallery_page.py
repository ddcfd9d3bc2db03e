"""HTML of the image galleries: a self-contained page per model and run (thumbnails as base64
JPEG data URIs, inline CSS, no script, nothing from the network), and the model-wide strips
that index.html shows, written by write_galleries."""
from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import TYPE_CHECKING

from .report_gallery import ALL, KINDS, Gallery, Group, pick_gallery, thumbnails

if TYPE_CHECKING:
    import polars as pl

# the thumbnails (also in index.html)
THUMB_CSS = """
.strip { display: flex; flex-wrap: wrap; gap: 8px; }
figure.thumb { width: 164px; margin: 0; font-size: 11px; line-height: 1.3; }
figure.thumb img, .noimg { width: 160px; height: 160px; border: 1px solid #ddd; display: block; }
.noimg { background: #f3f3f3; color: #777; font-size: 11px; display: flex; align-items: center;
  justify-content: center; text-align: center; overflow: hidden; padding: 4px; box-sizing: border-box; }
figcaption { overflow-wrap: anywhere; } .key { font-family: monospace; color: #555; }
.wrong { color: #b00; } .con { color: #444; }
"""
_PAGE_CSS = """
body { font-family: sans-serif; margin: 1.5em; color: #222; max-width: 1400px; }
h1 { font-size: 1.4em; overflow-wrap: anywhere; } h2 { font-size: 1.15em; margin-top: 1.4em;
  border-bottom: 1px solid #ccc; overflow-wrap: anywhere; } h3 { font-size: 1em; margin: 0.8em 0 0.3em; }
"""


def _deg(v, sign: bool = False) -> str:
    return "NULL" if v is None else (f"{v:+.3f}" if sign else f"{v:.3f}") + "°"


def _card(g: Gallery, r: dict, thumbs: dict, missing: dict, views: dict) -> str:
    from pipelines.models.thumbnails import explain_anchor

    shard, key = r["shard"], r["key"]
    jpeg = thumbs.get((g.run, shard, key))
    href = views.get(explain_anchor(shard, key))
    alt = html.escape(f"{shard}/{key}")
    if jpeg:
        pic = (f'<img src="data:image/jpeg;base64,{base64.b64encode(jpeg).decode()}" alt="{alt}" '
               f'width="160" height="160">')
    else:
        pic = f'<div class="noimg">no image: {html.escape(missing.get((g.run, shard, key), "not read"))}</div>'
    if href:
        pic = f'<a href="{html.escape(href)}" title="explain view of {alt}">{pic}</a>'
    wrong = r["pred"] != r["label"]
    lines = [f'<div class="key" title="shard {html.escape(shard)}">{html.escape(key)}</div>',
             f"<div>true: {html.escape(str(r['class_name']))}</div>",
             f"<div{' class=wrong' if wrong else ''}>pred: {html.escape(str(r['pred_name']))}</div>",
             f"<div>AS {_deg(r['as_deg'], True)} · IS {_deg(r['is_deg'])}</div>"]
    shifts = g.concepts.get((shard, key))
    if shifts:
        lines.append('<div class="con">' + html.escape(", ".join(f"{c} {a:+.2f}°" for c, a in shifts)) + "</div>")
    if href:
        lines.append(f'<div><a href="{html.escape(href)}">explain</a></div>')
    return f'<figure class="thumb">{pic}<figcaption>{"".join(lines)}</figcaption></figure>'


def group_html(g: Gallery, grp: Group, thumbs: dict, missing: dict, views: dict, level: int = 2,
               title: bool = True) -> str:
    parts = [f"<h{level}>{html.escape(grp.title)}</h{level}>"] if title else []
    strips = [(kind, name, grp.strips.get(kind) or []) for kind, name in KINDS]
    if 0 < grp.n <= len(strips[0][2]):  # every image fits one strip: the other two would repeat it
        strips = [(strips[0][0], f"All {grp.n} images, highest |AS| first", strips[0][2])]
    for kind, name, rows in strips:
        if not rows:
            continue
        parts.append(f"<h{level + 1}>{html.escape(name)}</h{level + 1}>")
        parts.append('<div class="strip">' + "".join(_card(g, r, thumbs, missing, views) for r in rows) + "</div>")
    return "\n".join(parts)


def gallery_html(g: Gallery, thumbs: dict, missing: dict, views: dict) -> str:
    """The gallery page of one model and run."""
    legend = ("Each image: its key, true and predicted class (red when wrong), AS (true-class prompt; |AS| "
              "large = the null space hides class semantics) and IS in degrees"
              + (", and the concepts that moved most under null removal (AS toward each concept)"
                 if g.concepts else "") + ("." if not views else "; a thumbnail links to its explain view."))
    parts = ["<!DOCTYPE html>", "<html lang=en><head><meta charset=utf-8>",
             f"<title>SING gallery: {html.escape(g.model)} / {html.escape(g.run)}</title>",
             f"<style>{_PAGE_CSS}{THUMB_CSS}</style></head><body>",
             f"<h1>SING gallery: {html.escape(g.model)} / {html.escape(g.run)}</h1>",
             f'<p><a href="index.html">back to the report</a>. {html.escape(legend)}</p>']
    for grp in g.groups:
        parts.append(group_html(g, grp, thumbs, missing, views))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def index_section(pages: list, thumbs: dict, missing: dict, views: dict) -> str:
    """For index.html: per model and run, the all-classes strips and a link to its page."""
    parts = []
    for g, page in pages:
        grp = next(x for x in g.groups if x.label == ALL)
        parts.append(f"<h3>{html.escape(g.model)} / {html.escape(g.run)}: "
                     f'<a href="{html.escape(page.name)}">full gallery (top classes too)</a></h3>')
        parts.append(group_html(g, grp, thumbs, missing, views, level=3, title=False))
    return "\n".join(parts)


def write_galleries(results, out: Path, summary: pl.DataFrame, names: list[str], top_classes: int, per_group: int,
                    extra_class: str | None, shard_globs: list[str] | None, explain_dir: str | None,
                    written: list[Path], notes: list[str]) -> tuple[list[tuple[Gallery, Path]], str]:
    """One gallery page per model and run with scored images (names: the figure file suffix
    of each summary row). Returns the (gallery, page) pairs and index.html's section; problems
    become notes."""
    from .report_thumbs import explain_views, shard_locations

    rows = [(r, n) for r, n in zip(summary.iter_rows(named=True), names) if r["n_scored"]]
    gals = [(pick_gallery(results, r["model"], r["run"], top_classes, per_group, extra_class), n) for r, n in rows]
    where = shard_locations(Path(results), sorted({g.run for g, _ in gals}), shard_globs)
    thumbs, missing = thumbnails([g for g, _ in gals], where)
    if missing:
        why = sorted(set(missing.values()))
        notes.append(f"{len(missing)} gallery image(s) could not be shown: {'; '.join(why[:3])}"
                     + (f" (and {len(why) - 3} more reasons)" if len(why) > 3 else ""))
    views = explain_views(explain_dir, out)
    pages = []
    for g, name in gals:
        page = out / f"gallery_{name.removesuffix('.png')}.html"
        page.write_text(gallery_html(g, thumbs, missing, views), encoding="utf-8")
        written.append(page)
        pages.append((g, page))
    return pages, index_section(pages, thumbs, missing, views)
