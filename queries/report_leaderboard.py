"""leaderboard.html of `sing report`, written when the results hold a leaderboard table (`sing
leaderboard`): per board, the three figures of report_leaderboard_figures and a table of every
model that sorts when a column header is clicked (a small inline script: nothing from the
network, works from file://), skipped and failed rows with their reason. Also the index.html of
a results directory that holds a leaderboard and no per-image tables."""
from __future__ import annotations

import datetime as _dt
import html
import math
import re
from pathlib import Path

import polars as pl

from . import report_leaderboard_figures as figures
from .api import leaderboard

# (query column, header, kind, first click's direction, what it means): the table's columns
COLUMNS = [
    ("rank", "rank", "num", "asc", "position in the board by median IS/|AS| (ok models only)"),
    ("model", "model", "text", "asc", "model slug (hover: the MODEL string)"),
    ("family", "family", "text", "asc", "architecture family"),
    ("pretrain", "pretraining", "text", "asc", "training recipe / data, read from the tag"),
    ("params", "params (M)", "num", "desc", "parameter count, millions"),
    ("null_dim", "null dim / features", "num", "desc", "m - rank(W) of the head / its input features m"),
    ("status", "status", "text", "asc", "ok, or skipped / failed with the reason"),
    ("top1", "top-1", "num", "desc", "top-1 accuracy on the eval shards"),
    ("median_abs_as", "median |AS| (°)", "num", "asc", "lower = less class semantics hidden in the null space"),
    ("median_is", "median IS (°)", "num", "desc", "higher = more harmless invariance"),
    ("median_ratio", "median IS/|AS| [95% CI]", "num", "desc", "median of per-image IS/|AS|, bootstrap interval"),
    ("ratio_of_means", "mean IS / mean |AS| [95% CI]", "num", "desc", "ratio of the means, bootstrap interval"),
    ("heldout_cosine", "held-out cos", "num", "desc", "translator: mean cosine(T(f), z) on held-out images"),
    ("heldout_r2", "held-out R²", "num", "desc", "translator: R² on held-out images"),
    ("top_concepts", "top concepts (mean AS, °)", "text", "asc", "the concepts that move most under null removal"),
    ("seconds", "seconds", "num", "desc", "time spent on the model"),
]
REASON_FROM = [c[0] for c in COLUMNS].index("top1")   # a skipped/failed row's reason spans the rest

_CSS = """
body { font-family: sans-serif; margin: 1.5em; color: #222; max-width: 1400px; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; border-bottom: 1px solid #ccc; }
h1, h2, figcaption, p, li, dd { overflow-wrap: anywhere; }
dl { font-size: 0.9em; display: grid; grid-template-columns: max-content 1fr; gap: 2px 12px; }
dt { font-weight: bold; } dd { margin: 0; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; max-width: 100%; }
figure img { max-width: 100%; border: 1px solid #eee; } figcaption { font-size: 0.8em; color: #555; }
table.board { border-collapse: collapse; font-size: 0.78em; margin: 0.5em 0; width: 100%; }
table.board th, table.board td { border: 1px solid #ddd; padding: 2px 5px; }
td.model, td.concepts, td.reason { overflow-wrap: anywhere; } td.word { white-space: nowrap; }
td.model { min-width: 15em; }
table.board th { background: #f3f3f3; position: sticky; top: 0; cursor: pointer; user-select: none; }
table.board th[aria-sort=ascending]::after { content: " \\25B2"; }
table.board th[aria-sort=descending]::after { content: " \\25BC"; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.null { color: #999; } .ci { color: #777; font-size: 0.9em; white-space: nowrap; }
td.reason { color: #8a5a00; } tr.skipped td, tr.failed td { background: #fbf7ee; }
td.st-failed { color: #b00; font-weight: bold; } td.st-skipped { color: #8a5a00; }
input.find { font-size: 0.9em; padding: 3px 6px; width: 24em; max-width: 100%; }
.note { color: #8a5a00; font-size: 0.9em; }
"""

# Click a header: sort by it (numbers as numbers, NULLs last in either direction, ties keep
# the board's order); click again to reverse. The box above a table hides rows without the text.
_SCRIPT = r"""
for (const table of document.querySelectorAll('table.board')) {
  const body = table.tBodies[0], heads = Array.from(table.tHead.rows[0].cells);
  const rows = Array.from(body.rows), keys = rows.map(tr => {
    const k = {};
    for (const td of tr.cells) k[td.dataset.c] = td.dataset.v !== undefined ? td.dataset.v : td.textContent;
    return k;
  });
  heads.forEach((th, c) => th.addEventListener('click', () => {
    const num = th.dataset.t === 'num', now = th.getAttribute('aria-sort');
    const dir = now ? (now === 'ascending' ? -1 : 1) : (th.dataset.d === 'desc' ? -1 : 1);
    const val = i => {
      const v = keys[i][c];
      if (v === undefined || v === '') return null;
      return num ? Number(v) : v.toLowerCase();
    };
    const order = rows.map((_, i) => i).sort((a, b) => {
      const x = val(a), y = val(b);
      if (x === null || y === null) return (x === null) - (y === null) || a - b;
      return (x < y ? -dir : x > y ? dir : 0) || a - b;
    });
    body.append(...order.map(i => rows[i]));
    heads.forEach(h => h.removeAttribute('aria-sort'));
    th.setAttribute('aria-sort', dir > 0 ? 'ascending' : 'descending');
  }));
  const find = document.getElementById(table.dataset.find);
  if (find) find.addEventListener('input', () => {
    const q = find.value.trim().toLowerCase();
    for (const tr of rows) tr.hidden = q !== '' && !tr.textContent.toLowerCase().includes(q);
  });
}
"""

_INTRO = """<p>One row per model of each board that <code>sing leaderboard</code> wrote. Angles in degrees.
Removing the part of a classifier's feature f that lies in the null space of its last linear layer W
leaves every logit unchanged; a translator T maps features into CLIP's embedding space, where the
change is measured.</p>
<dl>
<dt>AS</dt><dd>Attribute Score: angle(T(f), t) − angle(T(f̃), t), t the CLIP text embedding of the true
class's prompt, f̃ the feature without its null-space part. |AS| is how much class semantics the null
space hides: smaller is better.</dd>
<dt>IS</dt><dd>Image Score: angle(T(f), T(f̃)), how much the image changes without any logit changing:
larger means richer harmless invariance.</dd>
<dt>median IS/|AS|</dt><dd>The median over images of the per-image ratio (images with |AS| = 0 left
out); the board's ranking. Higher is better.</dd>
<dt>mean IS / mean |AS|</dt><dd>The ratio of the two means over the same images: the paper's ratio
is not defined precisely, so both are given.</dd>
<dt>[lo, hi]</dt><dd>Bootstrap 95% interval of the ratio over the board's eval images.</dd>
<dt>top-1, held-out</dt><dd>Top-1 accuracy on the eval shards; the translator's mean cosine(T(f), z)
and R² on held-out images (how far its numbers can be trusted).</dd>
<dt>top concepts</dt><dd>The concepts that move most when the null-space part is removed, with their
mean AS (> 0: the null-free equivalent is closer to the concept).</dd>
<dt>skipped, failed</dt><dd>A model that could not take part (weights missing, no linear head, no null
space, ...) or whose run failed: its reason instead of numbers.</dd>
</dl>
<p>Click a column header to sort (again to reverse; empty values stay last); the box above each
table keeps the rows that contain its text.</p>"""


def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "-", str(s))


def _num(v, c: int, fmt: str = "{}", extra: str = "") -> str:
    """A numeric cell: shown as `fmt` formats it (a `fmt` without {} is the text itself),
    sorted by its exact value (data-v)."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return f"<td class='num null' data-c={c} data-v=''>–</td>"
    return f"<td class=num data-c={c} data-v='{v!r}'>{fmt.format(v)}{extra}</td>"


def _ci(lo, hi) -> str:
    return "" if lo is None or hi is None else f" <span class=ci>[{lo:.1f}, {hi:.1f}]</span>"


# the numeric columns of an ok row after status: (column, format)
_NUMBERS = [("top1", "{:.3f}"), ("median_abs_as", "{:.3f}"), ("median_is", "{:.2f}"), ("median_ratio", "{:.1f}"),
            ("ratio_of_means", "{:.1f}"), ("heldout_cosine", "{:.3f}"), ("heldout_r2", "{:.3f}")]


def _row(r: dict) -> str:
    """One table row: the columns of COLUMNS (a skipped/failed row: its reason over the numbers)."""
    esc = html.escape
    dims = None if r["null_dim"] is None else f"{r['null_dim']} / {r['num_features']}"
    cells = [_num(r["rank"], 0),
             f"<td data-c=1 class=model title='{esc(r['model_string'] or '')}'>{esc(r['model'])}</td>",
             f"<td data-c=2 class=word>{esc(r['family'] or '')}</td>",
             f"<td data-c=3 class=word>{esc(r['pretrain'] or '')}</td>",
             _num(r["params"], 4, "{:.1f}".format((r["params"] or 0) / 1e6)),
             _num(r["null_dim"], 5, esc(dims or "")),
             f"<td data-c=6 class='word st-{esc(r['status'])}'>{esc(r['status'])}</td>"]
    if r["status"] != "ok":
        span = len(COLUMNS) - REASON_FROM
        return (f"<tr class={esc(r['status'])}>" + "".join(cells) +
                f"<td colspan={span} class=reason>{esc(r['reason'] or 'no reason recorded')}</td></tr>")
    for c, (k, fmt) in enumerate(_NUMBERS, start=REASON_FROM):
        ci = {"median_ratio": _ci(r["median_ratio_lo"], r["median_ratio_hi"]),
              "ratio_of_means": _ci(r["ratio_of_means_lo"], r["ratio_of_means_hi"])}.get(k, "")
        cells.append(_num(r[k], c, fmt, ci))
    cells += [f"<td data-c=14 class=concepts>{esc(r['top_concepts'] or '')}</td>", _num(r["seconds"], 15, "{:.0f}")]
    return "<tr>" + "".join(cells) + "</tr>"


def board_table(rows: pl.DataFrame, find_id: str) -> str:
    """The sortable table of one board's rows (in the query's order) and its filter box."""
    # the rows come in rank order: the rank header says so
    head = "".join(f"<th data-t={kind} data-d={first}{' aria-sort=ascending' if key == 'rank' else ''} "
                   f"title='{html.escape(doc)} (click to sort)'>{html.escape(h)}</th>"
                   for key, h, kind, first, doc in COLUMNS)
    body = "\n".join(_row(r) for r in rows.iter_rows(named=True))
    return (f"<p><input class=find id={find_id} type=search placeholder='show rows containing…' "
            f"aria-label='filter the rows'></p>\n<table class=board data-find={find_id}>\n"
            f"<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>")


def _board_section(j: int, board_id: str, rows: pl.DataFrame, out: Path, written: list[Path]) -> str:
    counts = dict(rows.group_by("status").len().iter_rows())
    stem = f"leaderboard_{j:02d}_{_safe(board_id)}"
    files = [(out / f"{stem}_is_vs_as.png", lambda p: figures.is_vs_as(rows, board_id, p, written),
              "Median IS against median |AS|, one point per model (log-log; dashed: IS = k·|AS|)."),
             (out / f"{stem}_ratio_vs_top1.png", lambda p: figures.ratio_vs(rows, board_id, "top1", p, written),
              "Median IS/|AS| with its bootstrap 95% interval against top-1 accuracy."),
             (out / f"{stem}_ratio_vs_params.png", lambda p: figures.ratio_vs(rows, board_id, "params", p, written),
              "Median IS/|AS| with its bootstrap 95% interval against the parameter count (log).")]
    figs = []
    for path, draw, caption in files:
        draw(path)
        figs.append(f'<figure><img src="{html.escape(path.name)}" alt="{html.escape(path.stem)}">'
                    f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    named = ("every model is named" if rows.filter(pl.col("status") == "ok").height <= figures.LABEL_ALL else
             f"the {figures.LABEL_BEST} best and {figures.LABEL_WORST} worst by median IS/|AS| are named")
    summary = ", ".join(f"{counts.get(s, 0)} {s}" for s in ("ok", "skipped", "failed"))
    return "\n".join([
        f"<h2>Board {html.escape(board_id)}</h2>",
        f"<p>{rows.height} models: {summary}; {rows['family'].n_unique()} families. Figures: ok models, colour = "
        f"family (the most common; the rest grey), shape = pretraining; {named} (ringed).</p>",
        *figs, board_table(rows, f"find-{j}")])


def write_leaderboard_page(root: Path, out: Path, written: list[Path]) -> Path:
    """leaderboard.html and its figures under `out`, from every board under root/leaderboard."""
    df = leaderboard(root)
    boards = sorted(set(df["run"].to_list()))
    sections = [_board_section(j, b, df.filter(pl.col("run") == b), out, written) for j, b in enumerate(boards)]
    page = out / "leaderboard.html"
    page.write_text("\n".join([
        "<!DOCTYPE html>", "<html lang=en><head><meta charset=utf-8>", "<title>SING leaderboard</title>",
        f"<style>{_CSS}</style></head><body>", "<h1>SING null-space leaderboard</h1>",
        f"<p>Results: <code>{html.escape(str(Path(root).resolve()))}</code>; generated "
        f"{_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; "
        f"{len(boards)} board(s). <a href='index.html'>Back to the report</a>.</p>",
        _INTRO, *sections, f"<script>{_SCRIPT}</script>", "</body></html>"]) + "\n", encoding="utf-8")
    written.append(page)
    return page


def board_link(page: Path) -> str:
    """The line of index.html that leads to the leaderboard page."""
    return (f"<p><a href='{html.escape(page.name)}'>Leaderboard</a>: every model of the results' "
            "leaderboard table, sortable, with its figures.</p>")


def board_only_index(root: Path, page: Path, notes: list[str]) -> str:
    """index.html of a results directory with a leaderboard and no images table."""
    items = "".join(f"<li class=note>{html.escape(n)}</li>" for n in notes)
    return "\n".join([
        "<!DOCTYPE html>", "<html lang=en><head><meta charset=utf-8>", "<title>SING report</title>",
        f"<style>{_CSS}</style></head><body>", "<h1>SING null-space audit report</h1>",
        f"<p>Results: <code>{html.escape(str(Path(root).resolve()))}</code>.</p>", board_link(page),
        f"<h2>Notes</h2><ul>{items}</ul>" if items else "", "</body></html>"]) + "\n"
