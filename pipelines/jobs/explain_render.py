"""What `sing explain` shows: the printed table, JSON-ready rows, and the contact sheet
(HTML or PNG) of each image with its nearest real images before and after null removal."""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from pipelines.models.thumbnails import explain_anchor, thumbnail_jpeg  # shared with the report


def _fmt(v, spec=".2f") -> str:
    return "-" if v is None else format(v, spec)


def format_explanations(result: dict) -> str:
    """The printed table: one block per image."""
    meta = result["meta"]
    lines = [f"model {meta['model']}  null_dim {meta['null_dim']}  translator {meta['translator_id']} "
             f"({meta['clip_model']})  {meta['n_concepts']} concepts"]
    for r in result["images"]:
        truth = f"{r['label']} {r['class_name']}" if r["label"] is not None else "unknown"
        lines += [
            "",
            f"{r['image']}",
            f"  predicted   {r['pred']} {r['pred_name']}    true class: {truth}",
            f"  AS true     {_fmt(r['as_deg'], '+.3f')} deg    AS pred {_fmt(r['pred_as_deg'], '+.3f')} deg    "
            f"IS {_fmt(r['is_deg'], '.3f')} deg",
            f"  null_dim    {r['null_dim']}    |P_n f|/|f| {r['null_norm_frac']:.3f}    "
            f"logit drift {r['logit_drift']:.2e}",
        ]
        if r["toward"] or r["away"]:
            lines.append(f"  {'removing the null part moves toward':<40s}  {'... and away from':<40s}")
            for i in range(max(len(r["toward"]), len(r["away"]))):
                cell = lambda lst: (f"{lst[i]['concept'][:30]:<30s} {lst[i]['as_deg']:+7.3f}"  # noqa: E731
                                    if i < len(lst) else "")
                lines.append(f"  {cell(r['toward']):<40s}  {cell(r['away']):<40s}")
        lines.append(f"  => {r['description']}")
        for which, title in (("f", "nearest to T(f) "), ("f_eq", "nearest to T(f~)")):
            hits = (r.get("nearest") or {}).get(which)
            if hits:
                lines.append(f"  {title}  " + ", ".join(f"{h['shard']}/{h['key']} ({h['cosine']:.3f})"
                                                        for h in hits))
    return "\n".join(lines)


def write_sheet(path, queries, rows, index) -> Path:
    """Contact sheet: query image | k nearest to T(f) | k nearest to T(f~), one row per image
    (without an index: the query image, its scores and the concepts that moved).
    .html: self-contained page with base64 JPEG thumbnails, each row anchored by
    explain_anchor(shard, key); .png: a matplotlib figure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cells = []  # per row: (query jpeg, caption), [(jpeg, caption)], [(jpeg, caption)]
    for q, r in zip(queries, rows):
        def hits(which):
            if index is None:
                return []
            got = r["nearest"][which]
            thumbs = index.thumbnails([(h["shard"], h["key"]) for h in got])
            return [(t, f"{h['key']}\nlabel {h['label']}, cos {h['cosine']:.3f}") for t, h in zip(thumbs, got)]
        head = f"{Path(q.spec).name if not q.shard else q.key}\npred {r['pred_name']}"
        cells.append(((thumbnail_jpeg(q.image), head), hits("f"), hits("f_eq"), r))
    if path.suffix.lower() == ".png":
        _sheet_png(path, cells)
    else:
        _sheet_html(path, cells)
    return path


def _sheet_html(path: Path, cells) -> None:

    def img(jpeg, caption):
        b64 = base64.b64encode(jpeg).decode() if jpeg else ""
        tag = f'<img src="data:image/jpeg;base64,{b64}" alt="{html.escape(caption)}">' if jpeg else "(no thumbnail)"
        cap = "<br>".join(html.escape(line) for line in caption.split("\n"))
        return f"<figure>{tag}<figcaption>{cap}</figcaption></figure>"

    neighbours = any(near_f or near_eq for _q, near_f, near_eq, _r in cells)
    title = ("SING: nearest real images to T(f) and to its null-free equivalent T(f~)" if neighbours
             else "SING explain: scores and the concepts that moved under null removal")
    parts = ["<!doctype html><html lang='en'><head><meta charset='utf-8'><title>sing explain</title><style>",
             "body{font-family:sans-serif} table{border-collapse:collapse} td{vertical-align:top;padding:6px;"
             "border-top:1px solid #ccc} figure{display:inline-block;margin:2px;width:132px;font-size:11px;"
             "overflow-wrap:anywhere} img{width:128px;height:128px} .q{background:#f4f4f4} "
             "tr:target td{outline:3px solid #d33}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>",
             "<table><tr><th>query</th>" + ("<th>nearest to T(f)</th><th>nearest to T(f~)</th>" if neighbours else "")
             + "</tr>"]
    for (qj, qc), near_f, near_eq, r in cells:
        info = (f"AS {_fmt(r['as_deg'], '+.2f')} / pred AS {_fmt(r['pred_as_deg'], '+.2f')} / "
                f"IS {_fmt(r['is_deg'], '.2f')} deg; {r['description']}")
        row = (f"<tr id='{explain_anchor(r.get('shard'), r.get('key'))}'><td class='q'>{img(qj, qc)}"
               f"<div style='width:260px;font-size:11px;overflow-wrap:anywhere'>{html.escape(info)}</div></td>")
        if neighbours:
            row += f"<td>{''.join(img(j, c) for j, c in near_f)}</td><td>{''.join(img(j, c) for j, c in near_eq)}</td>"
        parts.append(row + "</tr>")
    parts.append("</table></body></html>")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(parts), encoding="utf-8")
    tmp.replace(path)


def _sheet_png(path: Path, cells) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    k = max(max(len(c[1]), len(c[2])) for c in cells)  # 0 without an index: the query images alone
    ncol = 1 + 2 * k
    fig, axes = plt.subplots(len(cells), ncol, figsize=(1.6 * ncol, 2.2 * len(cells) + 0.4), squeeze=False)
    for row, ((qj, qc), near_f, near_eq, _r) in enumerate(cells):
        items = [(qj, qc)] + near_f + [(None, "")] * (k - len(near_f)) + near_eq + [(None, "")] * (k - len(near_eq))
        for col, (jpeg, cap) in enumerate(items):
            ax = axes[row, col]
            ax.axis("off")
            if jpeg:
                ax.imshow(Image.open(io.BytesIO(jpeg)).convert("RGB"))
            ax.set_title("\n".join(line[-26:] for line in cap.split("\n")), fontsize=6)
    fig.suptitle(f"query  |  {k} nearest real images to T(f)  |  {k} nearest to T(f~) (null part removed)"
                 if k else "query images (no index: no neighbours)", fontsize=9)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
