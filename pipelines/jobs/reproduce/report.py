"""`sing reproduce`'s report: reproduction.md, a self-contained .html (tables and an inline
figure of ours vs the paper) and .json."""
from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path



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
        "## IS/|AS| per model (the supplement's Fig. 12b sweep)", "",
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
                              ("paper", "paper (suppl. Fig. 12b, approx.)")], "IS/|AS| (higher is better)"),
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
            "<h2>IS/|AS| per model (the supplement's Fig. 12b sweep)</h2>" + html_table(rep["is_as_ratio"], RATIO_COLUMNS)
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


RATIO_COLUMNS = [  # (key, header)
    ("model", "model"), ("name", "name"), ("status", "status"), ("null_dim", "null_dim"),
    ("n_images", "n images"), ("n_scored", "n scored"), ("mean_is", "mean IS"), ("mean_abs_as", "mean |AS|"),
    ("ratio_of_means", "IS/|AS| ratio_of_means"), ("median_ratio", "IS/|AS| median_ratio"),
    ("paper", "paper IS/|AS|"), ("diff_ratio_of_means", "diff (ratio_of_means - paper)"),
    ("diff_median_ratio", "diff (median_ratio - paper)"), ("paper_source", "paper source"),
    ("class_text", "class text (AS)"),
]
TABLE1_COLUMNS = [
    ("model", "model"), ("name", "name"), ("status", "status"), ("n", "n steered"),
    ("n_reachable", "reachable"), ("mean_abs_as", "|AS| mean"), ("std_abs_as", "|AS| std"),
    ("sem_abs_as", "|AS| sem"), ("mean_is", "IS mean"), ("paper", "paper |AS| mean +- std"),
    ("diff", "diff (mean - paper mean)"), ("paper_source", "paper source"), ("target_text", "target text"),
]


def _num(v):
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def _diff(ours, paper):
    return None if ours is None or paper is None else ours - paper


def build_tables(res: list, cfg, prompt: str, protocol: dict, nums: dict) -> dict:
    ratios, t1 = nums["is_as_ratio"]["values"], nums["table1"]["values"]
    ratio_rows, t1_rows = [], []
    for r in res:
        e = r.entry
        p = ratios.get(e.name) if e.in_zoo else None
        a = r.audit or {}
        if r.skipped:
            status = f"skipped: {r.skipped}"
        elif r.audit_error:
            status = f"failed: {r.audit_error}"
        elif a.get("null_dim") == 0:
            status = "no null space (AS/IS undefined)"
        else:
            status = "ok"
        rom, med = _num(a.get("ratio_of_means")), _num(a.get("median_ratio"))
        ratio_rows.append({
            "model": e.label, "name": e.name, "MODEL": e.model, "status": status, "null_dim": a.get("null_dim"),
            "n_images": a.get("n_images"), "n_scored": a.get("n_scored"), "mean_is": _num(a.get("mean_is")),
            "mean_abs_as": _num(a.get("mean_abs_as")), "ratio_of_means": rom, "median_ratio": med,
            "paper": p["value"] if p else None, "diff_ratio_of_means": _diff(rom, p["value"] if p else None),
            "diff_median_ratio": _diff(med, p["value"] if p else None),
            "paper_source": p["source"] if p else None, "class_text": a.get("class_text"), "run": a.get("run"),
            "slug": a.get("slug")})
        q = t1.get(e.name) if e.in_zoo else None
        s = r.steer or {}
        if r.skipped:
            status = f"skipped: {r.skipped}"
        elif r.steer_skipped:
            status = f"skipped: {r.steer_skipped}"
        elif r.steer_error:
            status = f"failed: {r.steer_error}"
        elif not s.get("n"):
            status = f"no image of class {protocol['class']!r} in the shards"
        elif not s.get("n_reachable"):
            status = f"IS = {protocol['is_deg']} deg reached by no image"
        else:
            status = "ok"
        mean = _num(s.get("mean_abs_as"))
        t1_rows.append({
            "model": e.label, "name": e.name, "MODEL": e.model, "status": status, "n": s.get("n"),
            "n_reachable": s.get("n_reachable"), "mean_abs_as": mean, "std_abs_as": _num(s.get("std_abs_as")),
            "sem_abs_as": _num(s.get("sem_abs_as")), "mean_is": _num(s.get("mean_is")),
            "paper": f"{q['mean']:.2f} +- {q['std']:.2f}" if q else None,
            "paper_mean": q["mean"] if q else None, "paper_std": q["std"] if q else None,
            "diff": _diff(mean, q["mean"] if q else None), "paper_source": q["source"] if q else None,
            "target_text": _target_note(s.get("target_text"), prompt) if s else None,
            "run": s.get("run"), "slug": s.get("slug")})
    # the paper's orders: Fig. 12b by ratio, Table 1 as printed; other models after, as given
    fig_order = list(ratios)
    ratio_rows.sort(key=lambda row: fig_order.index(row["name"]) if row["name"] in fig_order else len(fig_order))
    t1_order = list(t1)
    t1_rows.sort(key=lambda row: t1_order.index(row["name"]) if row["name"] in t1_order else len(t1_order))
    return {"paper": nums["paper"], "protocol": {**protocol, "prompt_used": prompt},
            "is_as_ratio": ratio_rows, "table1": t1_rows, "notes": _notes(res, cfg, prompt, protocol, nums)}


def _target_note(src: dict | None, prompt: str) -> str:
    """Where Table 1's target text came from: a row of an embeddings file, or the prompt
    embedded raw with the translator's CLIP (its activation named)."""
    src = src or {}
    if src.get("source") == "embeddings":
        return f"row {src.get('name')!r} of {src.get('path')}"
    act = (src.get("clip_identity") or {}).get("activation")
    return f"{prompt!r} embedded with {src.get('clip_model')}{f' ({act})' if act else ''} (no template)"


def _notes(res: list, cfg, prompt: str, protocol: dict, nums: dict) -> list[str]:
    notes = []
    audited = [r for r in res if r.audit]
    if audited:
        n = max(r.audit.get("n_images") or 0 for r in audited)
        notes.append(f"Sweep images: {n} from {', '.join(cfg.shards)} (paper: 10,000 ImageNet images over all "
                     "1000 classes).")
    texts = list(dict.fromkeys(r.audit["class_text"] for r in audited if r.audit.get("class_text")))
    if texts:
        ct = nums.get("class_text") or {}
        notes.append(f"Class text for AS in the IS/|AS| sweep (each model's row says which it used): "
                     f"{'; '.join(texts)}. The paper's text uses {ct.get('paper')}; its Fig. 12b values come "
                     f"from the official code, which uses {ct.get('official')}.")
    steered = [r for r in res if r.steer]
    if steered:
        how = _target_note(steered[0].steer.get("target_text"), prompt)
        notes.append(f"Table 1 target (no class text: |AS| toward the target): {how}; images of class "
                     f"{protocol['class']!r} from "
                     f"{', '.join(cfg.steer_shards or cfg.shards)}; the step is solved per image so that IS is "
                     f"exactly {protocol['is_deg']} deg (unreachable images are counted, not averaged).")
    notes.append("IS/|AS|: ratio_of_means = mean(IS) / mean(|AS|); median_ratio = median over images of IS/|AS|. "
                 "The paper does not say which it plots; its values are read off a plot (approximate).")
    notes.append("Table 1 +-: the paper does not say whether it is a standard deviation over images or an error of "
                 "the mean; std here is over images (sample, n - 1) and sem = std / sqrt(n).")
    over = [r.entry for r in res if r.entry.overridden]
    if over:
        notes.append("Not the paper's weights: " + ", ".join(f"{e.name} = {e.model}" for e in over)
                     + (". Random weights: these numbers test the machinery and mean nothing about the paper."
                        if any("@random" in e.model for e in over) else "."))
    kinds = sorted({r.translator_info.get("kind") for r in res if r.translator_info.get("kind")})
    if kinds:
        notes.append(f"Translators: {', '.join(kinds)} (paper: the official linear translators).")
    return notes
