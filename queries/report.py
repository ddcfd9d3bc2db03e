"""`sing report`: PNG figures (report_figures.py), image galleries (report_gallery.py) and
index.html (report_page.py) over a results directory; static files, no server.

Files, per model and run in model_summary order (j = 00, 01, ...):
  as_is_<j>_<model>_<run>.png     joint (AS, IS) scatter with covariance ellipses, paper Fig. 3a
  ratio_bars.png                  IS/|AS| per model and run, both definitions, paper Fig. 3b
  class_as_<j>_<model>_<run>.png  per-class |AS| violins, paper Fig. 4
  concepts_<j>_<model>_<run>.png  mean AS per concept for one class, paper Fig. 5; skipped
                                  with a note when there is no concepts table
  gallery_<j>_<model>_<run>.html  thumbnails of the images with the highest |AS|, lowest |AS|
                                  and highest IS, over all classes and for the top classes;
                                  self-contained (base64 JPEGs), read from the shards by key
  index.html                      the figures with the model_summary table, the all-class
                                  gallery strips, the top of class_leakage and (when a steer
                                  table exists) steer_summary
  leaderboard.html, leaderboard_<j>_<board>_*.png   when a leaderboard table exists (`sing
                                  leaderboard`): report_leaderboard.py; index.html links to it
                                  (and is only that link when there is no images table)
Without --model, only the first --max-models model/runs get figures and galleries.
"""
from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from . import report_figures as figures
from .api import class_leakage, model_summary, steer_summary
from .errors import QueryError
from .report_page import index_html
from .runner import has_concepts, has_table, results_dir


def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "-", str(s))


@dataclass
class ReportOptions:
    """What `sing report` draws (build_report's keyword arguments, the CLI's flags)."""
    models: list[str] | None = None  # only these model slugs (all their runs)
    concept_class: str | None = None  # class of the concept figure, and a gallery of its own
    top_classes: int = 20  # classes per violin figure
    max_points: int = 5000  # points per scatter
    per_class: int = 2000  # |AS| values per class in a violin
    leak_rows: int = 10  # class_leakage rows per model in the HTML
    gallery_classes: int = 3  # classes with a gallery of their own (top by median |AS|)
    thumbs_per_class: int = 12  # images per gallery group (0: no galleries)
    shards: list[str] | None = None  # where the shards are now, when they moved
    explain_dir: str | None = None  # `sing explain` outputs the galleries link to
    max_models: int = 24  # model/runs with figures and galleries when no --model is given


def build_report(results: str, out: str, **options) -> list[Path]:
    """Write the figures, the galleries and index.html under `out`; returns the written paths
    (PNGs, gallery pages, then index.html last). options: the fields of ReportOptions.
    Raises QueryError for a missing results directory, an unknown model or bad shard globs."""
    return _build_report(results, out, ReportOptions(**options))[0]


def _summary(root: Path, models: list[str] | None) -> pl.DataFrame:
    summary = model_summary(root)
    if not models:
        return summary
    known = sorted(set(summary["model"].to_list()))
    unknown = [m for m in models if m not in known]
    if unknown:
        raise QueryError(f"no rows for model {', '.join(map(repr, unknown))} in {root / 'images'} "
                         f"(models: {', '.join(known)})")
    return summary.filter(pl.col("model").is_in(list(models)))


def _names(summary: pl.DataFrame) -> list[str]:
    """The file suffix of each model and run, in model_summary order."""
    return [f"{j:02d}_{_safe(r['model'])}_{_safe(r['run'])}.png" for j, r in enumerate(summary.iter_rows(named=True))]


def _draw_figures(root: Path, out: Path, summary: pl.DataFrame, names: list[str], o: ReportOptions,
                  written: list[Path], notes: list[str]) -> dict[str, list[Path]]:
    """Draw every figure; returns the files of each kind (a model or run with nothing to
    show gets a note instead of a violin or concept figure)."""
    rows = list(summary.iter_rows(named=True))
    cov = figures.covariances(root)
    files: dict[str, list[Path]] = {"scatter": [], "ratio": [out / "ratio_bars.png"], "violins": [], "concepts": []}
    for r, name in zip(rows, names):
        files["scatter"].append(out / f"as_is_{name}")
        figures.scatter(root, r, cov.get((r["model"], r["run"])), o.max_points, files["scatter"][-1], written)
    figures.ratio_bars(summary, files["ratio"][0], written)
    for r, name in zip(rows, names):
        if figures.violins(root, r, o.top_classes, o.per_class, out / f"class_as_{name}", written, notes):
            files["violins"].append(out / f"class_as_{name}")
    if not has_concepts(root):
        notes.append(f"No concepts table under {root / 'concepts'} (audit run without --concepts): "
                     "concept-shift figures skipped.")
        return files
    for r, name in zip(rows, names):
        if figures.concept_bars(root, r, o.concept_class, out / f"concepts_{name}", written, notes):
            files["concepts"].append(out / f"concepts_{name}")
    return files


def _sections(files: dict[str, list[Path]], top_classes: int) -> list[tuple[str, str, list[Path]]]:
    """The page's figure sections: (title, caption, files)."""
    sections = [
        ("Joint AS / IS distribution (paper Fig. 3a)",
         "Each point is an image; ellipses from the covariance of all scored images of the model and run "
         "(1σ and 2σ Mahalanobis radius).", files["scatter"]),
        ("IS/|AS| ratio (paper Fig. 3b)", "Both definitions; higher = better.", files["ratio"]),
        ("Per-class |AS| (paper Fig. 4)", f"Top {top_classes} classes by median |AS| per model and run.",
         files["violins"]),
    ]
    if files["concepts"]:
        sections.append(("Concept shift (paper Fig. 5)",
                         "Mean AS toward each concept for one class; > 0: removing the null-space component "
                         "moves the image toward the concept.", files["concepts"]))
    return sections


def _tables(root: Path, models: list[str] | None, leak_rows: int) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    """The top of class_leakage and (when there is a steer table) steer_summary."""
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
    return leak_top, steer


def _drawn(summary: pl.DataFrame, o: ReportOptions, notes: list[str]) -> pl.DataFrame:
    """The model/runs that get figures and galleries: all of those chosen with --model, else the
    first max_models in model_summary order (a zoo of 1,300 models would make a page no one can
    read and hours of figures)."""
    if o.models or summary.height <= o.max_models:
        return summary
    notes.append(f"{summary.height} model/runs: per-model figures and galleries for the first {o.max_models} by "
                 "ratio_of_means only (--max-models N, or choose models with --model); the tables list them all.")
    return summary.head(o.max_models)


def _build_report(results, out, o: ReportOptions) -> tuple[list[Path], list[str]]:
    root = results_dir(results)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    notes: list[str] = []
    board = None
    if has_table(root, "leaderboard"):
        from .report_leaderboard import board_link, board_only_index, write_leaderboard_page

        board = write_leaderboard_page(root, out, written)
        if not has_table(root, "images"):   # a board alone: its page, and an index that leads there
            notes.append(f"No images table under {root / 'images'}: per-model figures and galleries skipped.")
            index = out / "index.html"
            index.write_text(board_only_index(root, board, notes), encoding="utf-8")
            return written + [index], notes
        board = board_link(board)
    summary = _summary(root, o.models)
    drawn = _drawn(summary, o, notes)
    names = _names(drawn)
    files = _draw_figures(root, out, drawn, names, o, written, notes)
    gallery = None
    if o.thumbs_per_class > 0:
        from .report_gallery_page import write_galleries

        _pages, gallery = write_galleries(root, out, drawn, names, o.gallery_classes, o.thumbs_per_class,
                                          o.concept_class, o.shards, o.explain_dir, written, notes)
    leak_top, steer = _tables(root, o.models, o.leak_rows)
    index = out / "index.html"
    index.write_text(index_html(root, summary, leak_top, steer, _sections(files, o.top_classes), notes, gallery,
                                board), encoding="utf-8")
    written.append(index)
    return written, notes


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sing report", description="PNG figures, image galleries and index.html "
                                                                "over a results directory.")
    p.add_argument("--results", required=True, metavar="DIR", help="results directory")
    p.add_argument("--out", required=True, metavar="DIR", help="report directory (created)")
    p.add_argument("--model", action="append", default=None, metavar="SLUG",
                   help="only this model (repeatable; default: all)")
    p.add_argument("--class", dest="concept_class", metavar="NAME",
                   help="class_name for the concept-shift figure (default: class with most concept rows), "
                        "also given a gallery of its own")
    p.add_argument("--top-classes", type=int, default=20, metavar="N", help="classes per violin figure (20)")
    p.add_argument("--max-points", type=int, default=5000, metavar="N", help="points per scatter (5000)")
    p.add_argument("--max-models", type=int, default=24, metavar="N",
                   help="without --model, per-model figures and galleries for the first N model/runs by "
                        "ratio_of_means only; the tables list every one (24)")
    p.add_argument("--gallery-classes", type=int, default=3, metavar="K",
                   help="classes with a gallery of their own, the top K by median |AS| (3)")
    p.add_argument("--thumbs-per-class", type=int, default=12, metavar="N",
                   help="images per gallery group (all classes, or one class): N/3 each with the highest |AS|, "
                        "the lowest |AS| and the highest IS; at most N images per class are read from the "
                        "shards (12; 0: no galleries)")
    p.add_argument("--shards", action="append", default=None, metavar="GLOB",
                   help="where the audited shards are now, when they moved (repeatable; default: the paths the "
                        "run manifests recorded)")
    p.add_argument("--explain-dir", metavar="DIR",
                   help="outputs of `sing explain --json DIR/NAME.json --sheet DIR/NAME.html`: a gallery image "
                        "links to its explain view")
    return p


def cli_report(args: list[str] | None = None) -> int:
    """`sing report --results DIR --out DIR [options]`; 2 on error."""
    p = _parser()
    try:
        a = p.parse_args(list(sys.argv[1:] if args is None else args))
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    bad = [f"--{k.replace('_', '-')} must be >= {lo}, got {v}" for k, v, lo in
           (("top_classes", a.top_classes, 1), ("max_points", a.max_points, 1), ("gallery_classes", a.gallery_classes, 0),
            ("thumbs_per_class", a.thumbs_per_class, 0), ("max_models", a.max_models, 1)) if v < lo]
    if bad:
        print(f"sing report: error: {bad[0]}", file=sys.stderr)
        return 2
    o = ReportOptions(models=a.model, concept_class=a.concept_class, top_classes=a.top_classes,
                      max_points=a.max_points, gallery_classes=a.gallery_classes, thumbs_per_class=a.thumbs_per_class,
                      shards=a.shards, explain_dir=a.explain_dir, max_models=a.max_models)
    try:
        files, notes = _build_report(a.results, a.out, o)
    except (QueryError, OSError) as exc:
        print(f"sing report: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    for n in notes:
        print(f"note: {n}", file=sys.stderr)
    pages = [f for f in files if f.name.startswith("gallery_")]
    print(f"wrote {len(files)} files ({len(pages)} image galleries); open {files[-1]}")
    return 0
