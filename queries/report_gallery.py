"""Image galleries of `sing report`: per model and run, the images that hide the most (highest
|AS|), the least (lowest |AS|) and with the largest harmless invariance (highest IS), over
all classes and for the top classes by median |AS| (and `--class NAME`).

    pick_gallery   the images of each strip (SQL over the images table) and their top concept
                   shifts (concepts table, when concepts were scored)
    thumbnails     the strips' images read from the shards (report_thumbs, one bounded pass
                   for every model and run)

The pages (one self-contained HTML file per model and run, the model-wide strips for
index.html) are report_gallery_page's write_galleries.

Bound: a group (all classes, or one class) shows at most `per_group` distinct images, its
three strips `per_group // 3` each, so at most that many thumbnails per class are read.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from .api import class_leakage
from .runner import has_concepts, sql_frame

KINDS = (("top_abs_as", "Highest |AS|: hide the most class semantics in the null space"),
         ("low_abs_as", "Lowest |AS|: hide the least"),
         ("top_is", "Highest IS: the largest harmless invariance"))
ALL = -1  # the group of every class (labels are >= 0)
TOP_CONCEPTS = 3

# scored_images (ok, a, aa, i): queries/_macros.sql. Ties by shard, key: deterministic.
_PICK_SQL = """
WITH s AS (
    SELECT key, shard, label, class_name, pred, pred_name, a, aa, i
    FROM scored_images($images_glob, $model, $run)
    WHERE ok
),
g AS (
    SELECT *, label AS grp FROM s WHERE list_contains($labels, label)
    UNION ALL
    SELECT *, -1 AS grp FROM s
),
ranked AS (
    SELECT *, 'top_abs_as' AS kind, row_number() OVER (PARTITION BY grp ORDER BY aa DESC, shard, key) AS pos FROM g
    UNION ALL
    SELECT *, 'low_abs_as', row_number() OVER (PARTITION BY grp ORDER BY aa ASC, shard, key) FROM g
    UNION ALL
    SELECT *, 'top_is', row_number() OVER (PARTITION BY grp ORDER BY i DESC, shard, key) FROM g
)
SELECT grp, kind, pos, key, shard, label, class_name, pred, pred_name, a AS as_deg, aa AS abs_as_deg, i AS is_deg
FROM ranked
WHERE pos <= $k
ORDER BY grp, kind, pos
"""
_CONCEPTS_SQL = """
SELECT shard, key, concept, as_deg::DOUBLE AS as_deg
FROM concept_rows($images_glob, $concept_angles_glob, $concept_vocab_glob, $concepts_glob, $model, $run,
                  only_ids := $ids)
WHERE list_contains($ids, shard || '#' || key) AND NOT isnan(as_deg)
QUALIFY row_number() OVER (PARTITION BY shard, key ORDER BY abs(as_deg) DESC, concept) <= $top
ORDER BY shard, key, abs(as_deg) DESC, concept
"""


@dataclass
class Group:
    label: int  # ALL for every class
    title: str
    n: int  # scored images in the group
    strips: dict[str, list[dict]] = field(default_factory=dict)  # kind -> image rows, best first


@dataclass
class Gallery:
    model: str
    run: str
    groups: list[Group]
    concepts: dict[tuple[str, str], list[tuple[str, float]]]  # (shard, key) -> [(concept, AS)]
    n_classes: int

    def keys(self) -> set[tuple[str, str]]:
        return {(r["shard"], r["key"]) for g in self.groups for rows in g.strips.values() for r in rows}


def _classes(results, model: str, run: str, top: int, extra: str | None) -> tuple[pl.DataFrame, int, int]:
    """The classes with a gallery of their own: the `top` by median |AS|, then `extra`
    (a class_name) when it is not among them and has scored images. Also: the number of
    classes and of images with scores."""
    cl = class_leakage(results, model=model, run=run).filter(pl.col("median_abs_as").is_not_null())
    n, n_images = cl.height, int(cl["n_scored"].sum())
    cl = cl.sort("leakage_rank", "label")
    pick = cl.head(top)
    if extra is not None and extra not in pick["class_name"].to_list():
        pick = pl.concat([pick, cl.filter(pl.col("class_name") == extra).head(1)])
    return pick, n, n_images


def pick_gallery(results, model: str, run: str, top_classes: int, per_group: int,
                 extra_class: str | None = None) -> Gallery:
    k = max(1, per_group // len(KINDS))
    classes, n_classes, n_all = _classes(results, model, run, top_classes, extra_class)
    rows = sql_frame(results, _PICK_SQL, {"model": model, "run": run, "labels": classes["label"].to_list(), "k": k},
                     "report gallery")
    groups = [Group(ALL, f"All classes ({n_classes} with scored images)", n_all)]
    for c in classes.iter_rows(named=True):
        groups.append(Group(c["label"], f"Class '{c['class_name']}' (rank {c['leakage_rank']} of {n_classes} by "
                                        f"median |AS| = {c['median_abs_as']:.3f} deg, {c['n_scored']} scored images)",
                            int(c["n_scored"])))
    by_group = {(g, kind): part for (g, kind), part in rows.group_by("grp", "kind")}
    for g in groups:
        for kind, _ in KINDS:
            part = by_group.get((g.label, kind))
            g.strips[kind] = [] if part is None else part.sort("pos").to_dicts()
    gal = Gallery(model, run, groups, {}, n_classes)
    if has_concepts(results):
        ids = sorted(f"{s}#{k}" for s, k in gal.keys())
        con = sql_frame(results, _CONCEPTS_SQL, {"model": model, "run": run, "ids": ids, "top": TOP_CONCEPTS},
                        "report gallery concepts")
        for (shard, key), part in con.group_by("shard", "key"):
            gal.concepts[(shard, key)] = list(zip(part["concept"].to_list(), part["as_deg"].to_list()))
    return gal


def thumbnails(gals: list[Gallery], where: dict[str, dict[str, str]]):
    """(run, shard, key) -> JPEG and -> why not, every shard file read once for all models
    and runs (a nightly's runs share their shards)."""
    from .report_thumbs import read_thumbnails

    by_path: dict[str, set[str]] = {}
    missing: dict[tuple[str, str, str], str] = {}
    for g in gals:
        for shard, key in g.keys():
            path = where[g.run].get(shard)
            if path is None:
                missing[(g.run, shard, key)] = f"shard {shard} not found (pass --shards)"
            else:
                by_path.setdefault(path, set()).add(key)
    got, lost = read_thumbnails(by_path)
    thumbs = {}
    for g in gals:
        for shard, key in g.keys():
            path = where[g.run].get(shard)
            if (path, key) in got:
                thumbs[(g.run, shard, key)] = got[(path, key)]
            elif (path, key) in lost:
                missing[(g.run, shard, key)] = lost[(path, key)]
    return thumbs, missing
