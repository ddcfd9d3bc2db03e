"""`sing bench-layout`: how should the concept angles lie on disk? The long table (one row per
image and concept) against lists (one row per image, the angles as two lists in vocabulary
order, plus a vocabulary table), on the same synthetic audit of --images images x --concepts
concepts (one model, shards of --per-shard images), built and written by the audit's own table
builders (pipelines.stages.audit_tables).

Prints, per layout: bytes per image on disk (zstd Parquet), the worker's cost to build and
write one shard's concept table (per 1,000 images), and the time of every named query that
reads concepts (`sing query concept_shift` as the report and users call it, the report
gallery's top concepts of 36 images), each through the query runner over a results directory
that holds only that layout. Prints ratios last.
"""
from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

LAYOUTS = ("long", "lists")


def _vocabulary(k: int) -> list[str]:
    from pipelines.models.text import DEFAULT_VOCABULARY, read_lines

    real = read_lines(DEFAULT_VOCABULARY)
    return (real + [f"concept {j}" for j in range(len(real), k)])[:k]


def _shard_cols(rng, s: int, per_shard: int, k: int) -> dict:
    from pipelines.jobs.bench.standin import standin_columns

    labels = rng.integers(0, 1000, per_shard)
    cols = {"key": np.array([f"n{labels[i]:08d}/ILSVRC2012_val_{s * per_shard + i:08d}" for i in range(per_shard)],
                            dtype=object),
            "label": labels, "status": np.array(["ok"] * per_shard, dtype=object)}
    return {**cols, **standin_columns(rng, labels, k)}


def write_layouts(root: Path, images: int, per_shard: int, concepts: list[str], seed: int = 0) -> dict:
    """Both layouts under root/<layout>/ (each a results directory with the same images table);
    returns the seconds each layout's concept table took to build and write."""
    from pipelines.models.imagenet_classes import imagenet_class_names
    from pipelines.stages.audit_tables import (concept_angles_table, images_table, long_concepts_table,
                                               vocab_table)

    rng = np.random.default_rng(seed)
    names = list(imagenet_class_names())
    spent = {layout: 0.0 for layout in LAYOUTS}
    for layout in LAYOUTS:
        for table in (["concepts"] if layout == "long" else ["concept_angles", "concept_vocab"]) + ["images"]:
            (root / layout / table / "model=m" / "run=r").mkdir(parents=True, exist_ok=True)
    pq.write_table(vocab_table(concepts), root / "lists" / "concept_vocab" / "model=m" / "run=r" / "vocab.parquet")
    for s in range(0, images // per_shard):
        cols = _shard_cols(rng, s, per_shard, len(concepts))
        good = np.ones(per_shard, bool)
        shard = f"shard-{s:06d}"
        img = images_table(cols, good, shard, names, 1024)
        for layout in LAYOUTS:
            pq.write_table(img, root / layout / "images" / "model=m" / "run=r" / f"{shard}.parquet", compression="zstd")
            t0 = time.perf_counter()
            if layout == "long":
                t, table = long_concepts_table(cols, good, shard, concepts), "concepts"
            else:
                t, table = concept_angles_table(cols, good, shard), "concept_angles"
            pq.write_table(t, root / layout / table / "model=m" / "run=r" / f"{shard}.parquet", compression="zstd")
            spent[layout] += time.perf_counter() - t0
    return spent


def _bytes(root: Path, tables: list[str]) -> int:
    return sum(f.stat().st_size for t in tables for f in (root / t).rglob("*.parquet"))


def query_times(root: Path, key: str, ids: list[str], repeat: int) -> dict:
    """Seconds (best of `repeat`) of each named concept query over one layout's directory, and
    a digest of its result (the layouts must answer alike)."""
    from queries import run_query
    from queries.report_gallery import _CONCEPTS_SQL
    from queries.runner import sql_frame

    calls = {
        "concept_shift": lambda: run_query("concept_shift", root),
        "concept_shift label=17": lambda: run_query("concept_shift", root, {"label": 17}),
        "concept_shift concept=water": lambda: run_query("concept_shift", root, {"concept": "water"}),
        "concept_shift key (one image)": lambda: run_query("concept_shift", root, {"key": key}),
        "concept_shift top=3 (report)": lambda: run_query("concept_shift", root, {"top": 3}),
        "gallery top concepts (36 images)": lambda: sql_frame(root, _CONCEPTS_SQL, {"model": "m", "run": "r",
                                                                                    "ids": ids, "top": 3}),
    }
    out = {}
    for name, call in calls.items():
        best, df = float("inf"), None
        for _ in range(repeat):
            t0 = time.perf_counter()
            df = call()
            best = min(best, time.perf_counter() - t0)
        num = df.select([c for c, t in df.schema.items() if t.is_numeric()]).sum().row(0) if df.height else ()
        out[name] = (best, df.height, tuple(round(float(v), 3) for v in num if v is not None))
    return out


def bench_layout(images: int, per_shard: int, k: int, repeat: int, work: str | None) -> dict:
    root = Path(work or tempfile.mkdtemp(prefix="sing-layout-"))
    try:
        concepts = _vocabulary(k)
        done = root / f".complete_{images}_{per_shard}_{k}.json"
        if done.is_file():  # a kept --work of the same size: measure the queries again
            spent = json.loads(done.read_text())
        else:
            t0 = time.perf_counter()
            spent = write_layouts(root, images, per_shard, concepts)
            done.write_text(json.dumps(spent))
            print(f"generated {images:,} images x {k} concepts in {images // per_shard} shards: "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
        size = {"long": _bytes(root / "long", ["concepts"]),
                "lists": _bytes(root / "lists", ["concept_angles", "concept_vocab"])}
        key = pq.read_table(next((root / "lists" / "images").rglob("*.parquet")), columns=["key"])["key"][0].as_py()
        first = pq.read_table(next((root / "lists" / "images").rglob("*.parquet")), columns=["shard", "key"])
        ids = [f"{s}#{k_}" for s, k_ in zip(first["shard"].to_pylist()[:36], first["key"].to_pylist()[:36])]
        times = {layout: query_times(root / layout, key, ids, repeat) for layout in LAYOUTS}
        return {"images": images, "concepts": k, "bytes": size, "write_s": spent, "queries": times}
    finally:
        if not work:
            shutil.rmtree(root, ignore_errors=True)


def format_layout(r: dict) -> list[str]:
    n, k = r["images"], r["concepts"]
    lines = [f"{'':36s} {'long':>12} {'lists':>12} {'long/lists':>11}"]
    b = {x: r["bytes"][x] / n for x in LAYOUTS}
    lines.append(f"{'bytes per image (zstd Parquet)':36s} {b['long']:>12.0f} {b['lists']:>12.0f} "
                 f"{b['long'] / b['lists']:>11.2f}")
    w = {x: r["write_s"][x] / n * 1000 for x in LAYOUTS}
    lines.append(f"{'build + write, s per 1,000 images':36s} {w['long']:>12.4f} {w['lists']:>12.4f} "
                 f"{w['long'] / w['lists']:>11.2f}")
    for name in r["queries"]["long"]:
        tl, tn = r["queries"]["long"][name][0], r["queries"]["lists"][name][0]
        same = r["queries"]["long"][name][1:] == r["queries"]["lists"][name][1:]
        lines.append(f"{name + ' (s)':36s} {tl:>12.3f} {tn:>12.3f} {tl / tn:>11.2f}"
                     + ("" if same else "   RESULTS DIFFER"))
    lines.append(f"({n:,} images x {k} concepts; query times: best of the repeats, through the query runner)")
    return lines


def cli_args(p) -> None:
    p.add_argument("--images", type=int, default=1_000_000, help="synthetic images (one model, one run)")
    p.add_argument("--concepts", type=int, default=182, help="concepts per image (the default vocabulary: 182)")
    p.add_argument("--per-shard", type=int, default=1000, help="images per shard file")
    p.add_argument("--repeat", type=int, default=2, help="runs of each query (the best is kept)")
    p.add_argument("--work", help="generate here and keep it (default: a temporary directory, removed)")


def cli_run(a) -> int:
    r = bench_layout(a.images, a.per_shard, a.concepts, a.repeat, a.work)
    for line in format_layout(r):
        print(line)
    return 0
