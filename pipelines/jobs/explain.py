"""`sing explain`: SING for a few single images, in process (no Ray).

For each image: the prediction, the Attribute Score for the true class (when known) and for
the predicted class, the Image Score, the null dimension, the logit drift, and the
open-vocabulary concepts whose angle to T(f) moved most under null removal:

    toward  largest positive angle(T(f), t_k) - angle(T(f~), t_k): removing the null part
            brings the image closer to the concept (the null space was pulling away from it)
    away    most negative: removing the null part moves away from the concept, i.e. the
            null space carries it (the classifier is blind to it)

With `--index DIR` (from `sing index`) it also retrieves the k real images whose CLIP
embeddings are nearest (cosine) to T(f) and to T(f~), and writes a contact sheet.

`explain_features` is the pure-tensor core (used by the tests with known answers);
`run_explain` loads models and images; `resolve_class` turns a class name, alias or index
into an index with close-match suggestions (shared with `sing steer`).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipelines.errors import BadInput
from pipelines.models.translator_file import load_translator
from pipelines.models.class_names import resolve_class
from pipelines.models.text import DEFAULT_VOCABULARY as DEFAULT_CONCEPTS
from pipelines.options import PrecisionOptions, RankOptions, add_arguments, from_namespace, opt

log = logging.getLogger("sing.explain")


class ExplainError(BadInput):
    """Bad input to `sing explain` (exit 2)."""


# ----------------------------------------------------------------------------- the core


@dataclass
class Explanation:
    pred: int
    pred_name: str
    label: int | None
    class_name: str | None
    as_deg: float | None  # true-class AS (None: no label or no null space)
    pred_as_deg: float | None
    is_deg: float | None
    null_dim: int
    logit_drift: float
    null_norm_frac: float
    toward: list[dict] = field(default_factory=list)  # concepts removal moves toward (as_deg > 0)
    away: list[dict] = field(default_factory=list)  # concepts removal moves away from (as_deg < 0)
    z: torch.Tensor | None = field(default=None, repr=False)  # T(f)
    z_eq: torch.Tensor | None = field(default=None, repr=False)  # T(f~)

    @property
    def description(self) -> str:
        if self.null_dim == 0:
            return "the head has no null space (null_dim = 0): nothing is hidden, no description"
        parts = []
        if self.away:
            parts.append("the null space carries (removing it moves away from): "
                         + ", ".join(c["concept"] for c in self.away))
        if self.toward:
            parts.append("the null space suppresses (removing it moves toward): "
                         + ", ".join(c["concept"] for c in self.toward))
        return "; ".join(parts) or "no concept moved"

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("pred", "pred_name", "label", "class_name", "as_deg", "pred_as_deg",
                                           "is_deg", "null_dim", "logit_drift", "null_norm_frac", "toward", "away")}
        d["description"] = self.description
        return d


def _num(x) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


def _check_inputs(f, w, tr, class_text, labels, concept_text, concept_names):
    if w.shape[1] != f.shape[1]:
        raise ExplainError(f"features have {f.shape[1]} dims but the head expects {w.shape[1]}")
    if tuple(class_text.shape) != (w.shape[0], tr.out_dim):
        raise ExplainError(f"class text must be ({w.shape[0]}, {tr.out_dim}), got {tuple(class_text.shape)}")
    for v in labels:
        if v is not None and v >= w.shape[0]:
            raise ExplainError(f"label {v} is outside the head's {w.shape[0]} classes")
    if concept_text is not None and len(concept_names) != concept_text.shape[0]:
        raise ExplainError(f"{len(concept_names)} concept names for {concept_text.shape[0]} embeddings")


def _moved(before, after, names, top: int, min_shift_deg: float) -> tuple[list[dict], list[dict]]:
    """The concepts whose angle moved most toward (positive shift) and away (negative)."""
    delta = before - after
    order = torch.argsort(delta, descending=True).tolist()
    row = lambda k: {"concept": names[k], "as_deg": float(delta[k]),  # noqa: E731
                     "angle_before_deg": float(before[k]), "angle_after_deg": float(after[k])}
    return ([row(k) for k in order[:top] if delta[k] > min_shift_deg],
            [row(k) for k in reversed(order[-top:]) if delta[k] < -min_shift_deg])


def explain_features(f, weight, decomposition, translator, class_text, concept_text=None, concept_names=None,
                     labels=None, class_names=None, bias=None, top: int = 5,
                     min_shift_deg: float = 1e-6, logits=None) -> list[Explanation]:
    """Every single-image number for a batch of features (B, m): the audit's own scorer
    (sing_ops.AuditScorer) run in float64.

    class_text (c, d) one prompt embedding per class; concept_text (K, d) with concept_names;
    labels: per-image true class or None/-1 (unknown: only the predicted-class AS).
    logits: the model's own (as the audit takes its prediction; at bf16 a near tie can fall
    the other way in a recomputation), else f W^T + bias.
    A concept is listed as moving toward/away only when |shift| > min_shift_deg (rounding noise
    on concepts the null part does not touch is not a movement).
    """
    from sing_ops import AuditScorer

    f64 = torch.float64
    f = torch.as_tensor(f).to(f64)
    f = f[None] if f.dim() == 1 else f
    w = torch.as_tensor(weight).to(f64)
    w = w.flatten(1) if w.dim() == 4 else w
    n = f.shape[0]
    labels = [None] * n if labels is None else [None if (v is None or int(v) < 0) else int(v) for v in labels]
    concept_text = None if concept_text is None else torch.as_tensor(concept_text).to(f64)
    if concept_text is not None and concept_names is None:
        concept_names = [f"concept_{k}" for k in range(len(concept_text))]
    class_text = torch.as_tensor(class_text).to(f64)
    _check_inputs(f, w, translator, class_text, labels, concept_text, concept_names)
    if logits is None:
        logits = f @ w.T + (torch.as_tensor(bias).to(f64) if bias is not None else 0.0)
    scorer = AuditScorer(w, decomposition, translator, class_text, concept_text, dtype=f64)
    res = scorer.score(f, torch.tensor([0 if y is None else y for y in labels]), torch.as_tensor(logits).to(f64),
                       embeddings=True)
    names = list(class_names) if class_names is not None else [f"class_{i}" for i in range(w.shape[0])]
    has_null = decomposition.null_dim > 0
    out = []
    for i, y in enumerate(labels):
        toward, away = [], []
        if concept_text is not None and has_null:
            toward, away = _moved(res["concept_before"][i], res["concept_after"][i], concept_names, top,
                                  min_shift_deg)
        p = int(res["pred"][i])
        out.append(Explanation(
            pred=p, pred_name=names[p], label=y, class_name=names[y] if y is not None else None,
            as_deg=_num(res["as_deg"][i]) if y is not None else None, pred_as_deg=_num(res["pred_as_deg"][i]),
            is_deg=_num(res["is_deg"][i]), null_dim=decomposition.null_dim, logit_drift=float(res["logit_drift"][i]),
            null_norm_frac=float(res["null_norm_frac"][i]), toward=toward, away=away, z=res["z"][i],
            z_eq=res["z_eq"][i]))
    return out


# ----------------------------------------------------------------------------- images


@dataclass
class QueryImage:
    spec: str  # as given
    image: object  # PIL RGB
    label: int | None  # from the shard's cls/json, else None
    shard: str | None = None
    key: str | None = None


def load_query_image(spec: str, max_pixels=None) -> QueryImage:
    """A path to an image file, or SHARD.tar#KEY for one sample of a webdataset shard
    (its cls/json label is then the true class)."""
    from pipelines.io.images import ImageDecodeError, decode_image
    from pipelines.io.shards import Sample, iter_shard, shard_name

    kw = {"max_pixels": max_pixels} if max_pixels else {}
    if "#" in spec and spec.split("#", 1)[0].endswith(".tar"):
        path, key = spec.split("#", 1)
        if not Path(path).is_file():
            raise FileNotFoundError(f"shard file not found: {path}")
        for item in iter_shard(path, require_label=False):
            if item.key == key:
                if not isinstance(item, Sample):
                    raise ExplainError(f"{spec}: sample cannot be read ({item.stage}): {item.reason}")
                try:
                    img = decode_image(item.image, **kw)
                except ImageDecodeError as exc:
                    raise ExplainError(f"{spec}: {exc}") from None
                return QueryImage(spec, img, item.label, shard_name(path), key)
        raise ExplainError(f"shard {path} has no sample with key {key!r}")
    p = Path(spec)
    if not p.is_file():
        raise FileNotFoundError(f"image file not found: {spec}")
    try:
        img = decode_image(p.read_bytes(), **kw)
    except ImageDecodeError as exc:
        raise ExplainError(f"{spec}: {exc}") from None
    return QueryImage(spec, img, None, None, p.name)


# ----------------------------------------------------------------------------- the command


@dataclass
class ExplainOptions(PrecisionOptions, RankOptions):
    images: list[str] = opt(help="image file, or SHARD.tar#KEY (its cls is the label)", positional=True, nargs="+",
                            metavar="IMAGE")
    model: str = opt(help="classifier MODEL string")
    translator: str = opt(help="translator file (local or URL)")
    concepts: str | None = opt(None, "concepts: a text file, one per line, or a text-embedding Parquet (default: "
                                     "pipelines/vocab/concepts.txt)")
    class_text: str | None = opt(None, "class prompt embeddings (Parquet), one row per class, matched by index "
                                       "(default: computed with the translator's CLIP)")
    label: str | None = opt(None, "true class (index or name) for every image; default: the shard's cls, if any")
    top: int = opt(5, "concepts listed per direction")
    json_out: str | None = opt(None, "write the explanations as JSON (a path or URL)", flag="--json", metavar="OUT")
    index: str | None = opt(None, "image index from `sing index`: show the nearest real images")
    k: int = opt(5, "nearest images per query (with --index)")
    sheet: str | None = opt(None, "contact sheet OUT.html or OUT.png (with --index: and the nearest images); "
                                  "`sing report --explain-dir` links its galleries to OUT.html")
    templates: str | None = opt(None, "class prompt templates (default: the translator's)")
    device: str | None = opt(None, "cpu or cuda (default: cuda when available)")
    max_pixels: int | None = opt(None, "decompression-bomb guard in pixels (default: PIL's)")


def _check_config(cfg: ExplainOptions):
    if not cfg.images:
        raise ExplainError("give at least one image")
    if cfg.top < 1:
        raise ExplainError(f"--top must be >= 1, got {cfg.top}")
    if cfg.k < 1:
        raise ExplainError(f"--k must be >= 1, got {cfg.k}")
    if cfg.sheet and Path(cfg.sheet).suffix.lower() not in (".html", ".htm", ".png"):
        raise ExplainError(f"--sheet must end in .html or .png, got {cfg.sheet}")


def _texts(cfg: ExplainOptions, clf, tr, clip_id: str, concepts: list[str]):
    """(templates, class text, its file record, concept names, concept text)."""
    from pipelines.models.clip import TEMPLATES, load_clip
    from pipelines.models.clip_source import check_same_clip
    from pipelines.models.text import (CONCEPT_TEMPLATES, embed_texts, is_embeddings_file, load_class_text,
                                       load_concept_embeddings)

    templates = cfg.templates or tr.metadata.get("templates") or "single"
    if templates not in TEMPLATES:
        raise ExplainError(f"unknown prompt templates {templates!r}; choose from {sorted(TEMPLATES)}")
    # embedding files (e.g. imported from the official release) spare loading CLIP at all
    clip = None if cfg.class_text and cfg.concepts and is_embeddings_file(cfg.concepts) else load_clip(clip_id)
    tr_clip = tr.metadata.get("clip_identity")
    if clip is not None:
        check_same_clip(tr_clip, clip.identity, f"translator {cfg.translator}", "refit it with this CLIP")
    text_info = None
    if cfg.class_text:
        class_text, text_info = load_class_text(cfg.class_text, tr_clip or clip_id, list(clf.class_names), tr.out_dim)
    else:
        class_text = embed_texts(clip, list(clf.class_names), TEMPLATES[templates])
    if cfg.concepts and is_embeddings_file(cfg.concepts):
        concepts, concept_text, _ = load_concept_embeddings(cfg.concepts, tr_clip or clip_id, tr.out_dim)
    else:
        concept_text = embed_texts(clip, concepts, CONCEPT_TEMPLATES)
    if class_text.shape[1] != tr.out_dim:
        raise ExplainError(f"CLIP {clip_id} text embeddings are {class_text.shape[1]}-d but the translator "
                           f"outputs {tr.out_dim}-d")
    return templates, class_text, text_info, concepts, concept_text


def _features(cfg: ExplainOptions, clf, queries):
    """The audit's forward, at the audit's precision (the same image scores the same)."""
    from pipelines.io.images import to_uint8_view
    from pipelines.models.precision import configure, features_and_logits, model_inputs
    from pipelines.stages.actors import pick_device

    device = pick_device(cfg.device)
    configure(cfg.precision)
    clf.to(device, channels_last=device.type == "cuda")
    u8 = np.stack([to_uint8_view(q.image, clf.preprocess) for q in queries])
    f, logits = features_and_logits(clf, model_inputs(u8, clf.preprocess, cfg.precision, device), cfg.precision)
    f, logits = f.cpu(), logits.cpu()
    if not torch.isfinite(f).all():
        raise ExplainError("the classifier produced NaN/Inf features for "
                           + ", ".join(q.spec for q, ok in zip(queries, torch.isfinite(f).all(-1)) if not ok))
    return f, logits


def run_explain(cfg: ExplainOptions) -> dict:
    """Explain each image; returns {"meta": ..., "images": [...]} (what --json writes)."""
    from sing_ops import HeadDecomposition

    from pipelines.io.remote import local_copy
    from pipelines.models.classifiers import load_classifier
    from pipelines.models.text import concept_names

    _check_config(cfg)
    # Cheap checks first: image files, vocabulary, translator file, index.
    queries = [load_query_image(s, cfg.max_pixels) for s in cfg.images]
    concepts = concept_names(cfg.concepts or DEFAULT_CONCEPTS)
    tpath = local_copy(cfg.translator)  # a URL is downloaded (FileNotFoundError when missing)
    if not Path(tpath).is_file():
        raise FileNotFoundError(f"translator file not found: {cfg.translator}")
    index = None
    if cfg.index:
        from pipelines.jobs.index import ImageIndex

        index = ImageIndex.open(cfg.index)
    clf = load_classifier(cfg.model)
    tr = load_translator(tpath, in_dim=clf.num_features, source_model=clf.model_id)
    clip_id = tr.metadata.get("clip_model")
    if not clip_id:
        raise ExplainError(f"translator {cfg.translator} does not name its CLIP model (metadata 'clip_model')")
    if index is not None:
        index.check_clip(tr.metadata.get("clip_identity") or clip_id)
    fixed_label = resolve_class(cfg.label, clf.class_names) if cfg.label is not None else None
    dec = HeadDecomposition.from_weight(clf.head_weight, atol=cfg.rank_atol, rtol=cfg.rank_rtol)
    templates, class_text, text_info, concepts, concept_text = _texts(cfg, clf, tr, clip_id, concepts)
    f, logits = _features(cfg, clf, queries)
    labels = [fixed_label if fixed_label is not None else q.label for q in queries]
    for q, y in zip(queries, labels):
        if y is not None and not 0 <= y < clf.num_classes:
            raise ExplainError(f"{q.spec}: label {y} is outside the head's {clf.num_classes} classes")
    exps = explain_features(f, clf.head_weight, dec, tr, class_text, concept_text, concepts, labels,
                            clf.class_names, bias=clf.head_bias, top=cfg.top, logits=logits)
    rows = []
    for q, e in zip(queries, exps):
        row = {"image": q.spec, "shard": q.shard, "key": q.key, **e.to_dict()}
        if index is not None:
            exclude = {(q.shard, q.key)} if q.shard else set()
            row["nearest"] = {"f": [h.to_dict() for h in index.search(e.z, cfg.k, exclude)[0]],
                              "f_eq": [h.to_dict() for h in index.search(e.z_eq, cfg.k, exclude)[0]]}
        rows.append(row)
    result = {
        "meta": {"model": clf.model_id, "translator": str(cfg.translator), "translator_id": tr.id,
                 "precision": cfg.precision,
                 "clip_model": clip_id, "clip_identity": tr.metadata.get("clip_identity"),
                 "templates": templates if not cfg.class_text else None,
                 "class_text": {k: v for k, v in text_info.items() if k != "name_differences"} if text_info else None,
                 "null_dim": dec.null_dim, "rank": dec.rank,
                 "concepts": str(cfg.concepts or DEFAULT_CONCEPTS), "n_concepts": len(concepts),
                 "index": str(cfg.index) if cfg.index else None, "k": cfg.k if cfg.index else None,
                 "sheet": str(cfg.sheet) if cfg.sheet else None},
        "images": rows,
    }
    if cfg.json_out:
        from pipelines.io.layout import write_json_atomic

        write_json_atomic(result, cfg.json_out)  # a local path or a URL
    if cfg.sheet:
        from pipelines.jobs.explain_render import write_sheet

        write_sheet(cfg.sheet, queries, rows, index)
    return result


def cli_args(p) -> None:
    from pipelines.models.spec import MODEL_EPILOG

    add_arguments(p, ExplainOptions)
    p.epilog = MODEL_EPILOG


def cli_run(a) -> int:
    from pipelines.jobs.explain_render import format_explanations

    opts = from_namespace(ExplainOptions, a)
    print(format_explanations(run_explain(opts)))
    for what, path in (("json", opts.json_out), ("contact sheet", opts.sheet)):
        if path:
            print(f"{what}: {path}")
    return 0
