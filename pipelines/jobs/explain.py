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

import difflib
import functools
import html
import io
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipelines.io.translator_file import load_translator

log = logging.getLogger("sing.explain")

VOCAB_DIR = Path(__file__).resolve().parents[1] / "vocab"
DEFAULT_CONCEPTS = VOCAB_DIR / "concepts.txt"
IMAGENET_ALIASES = VOCAB_DIR / "imagenet_aliases.txt"


class ExplainError(ValueError):
    """Bad input to `sing explain` (user-facing, exit 2)."""


# ----------------------------------------------------------------------------- class names


@functools.lru_cache(maxsize=1)
def imagenet_aliases() -> dict[int, tuple[str, list[str]]]:
    """{index: (name, [aliases])} from pipelines/vocab/imagenet_aliases.txt
    (index<TAB>name<TAB>aliases separated by '; ')."""
    out: dict[int, tuple[str, list[str]]] = {}
    for line in IMAGENET_ALIASES.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        idx, name, *rest = line.split("\t")
        aliases = [a.strip() for a in (rest[0] if rest else "").split(";") if a.strip()]
        out[int(idx)] = (name, aliases)
    return out


def resolve_class(value, class_names) -> int:
    """A class index from an index ("817"), a class name ("sports car", case-insensitive) or,
    for 1000-class ImageNet heads, an alias ("sport car"). Unknown or ambiguous names raise
    ValueError with close matches."""
    names = list(class_names)
    text = str(value).strip()
    if text.lstrip("-").isdigit():
        i = int(text)
        if not 0 <= i < len(names):
            raise ValueError(f"class index {i} is outside the head's {len(names)} classes (0..{len(names) - 1})")
        return i
    low = text.lower()
    exact = [i for i, n in enumerate(names) if n.lower() == low]
    if len(exact) == 1:
        return exact[0]
    table: dict[str, set[int]] = {}
    for i, n in enumerate(names):
        table.setdefault(n.lower(), set()).add(i)
    if len(names) == 1000:
        from pipelines.models.imagenet_classes import imagenet_class_names

        if tuple(names) == imagenet_class_names():
            for i, (_, aliases) in imagenet_aliases().items():
                for a in aliases:
                    table.setdefault(a.lower(), set()).add(i)
    hits = sorted(table.get(low, ()))
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        raise ValueError(f"class name {text!r} is ambiguous: it names "
                         + ", ".join(f"{i} ({names[i]})" for i in hits) + "; give the index or the full name")
    close = difflib.get_close_matches(low, list(table), n=5, cutoff=0.6)
    hint = (" Did you mean: " + ", ".join(f"{c!r} ({', '.join(str(i) for i in sorted(table[c]))})"
                                          for c in close) + "?") if close else ""
    raise ValueError(f"unknown class {text!r} for a head with {len(names)} classes.{hint}")


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


def explain_features(f, weight, decomposition, translator, class_text, concept_text=None, concept_names=None,
                     labels=None, class_names=None, bias=None, top: int = 5,
                     min_shift_deg: float = 1e-6, logits=None) -> list[Explanation]:
    """Every single-image number for a batch of features (B, m), in float64.

    class_text (c, d) one prompt embedding per class; concept_text (K, d) with concept_names;
    labels: per-image true class or None/-1 (unknown: only the predicted-class AS).
    A concept is listed as moving toward/away only when |shift| > min_shift_deg (rounding noise
    on concepts the null part does not touch is not a movement).
    """
    from sing_ops import attribute_score, concept_angles, image_score, logit_drift

    f = torch.as_tensor(f).to(torch.float64)
    if f.dim() == 1:
        f = f[None]
    w = torch.as_tensor(weight).to(torch.float64)
    w = w.flatten(1) if w.dim() == 4 else w
    if w.shape[1] != f.shape[1]:
        raise ExplainError(f"features have {f.shape[1]} dims but the head expects {w.shape[1]}")
    dec = decomposition.to(dtype=torch.float64)
    tr = translator.to(dtype=torch.float64)
    class_text = torch.as_tensor(class_text).to(torch.float64)
    if class_text.shape != (w.shape[0], tr.out_dim):
        raise ExplainError(f"class text must be ({w.shape[0]}, {tr.out_dim}), got {tuple(class_text.shape)}")
    names = list(class_names) if class_names is not None else [f"class_{i}" for i in range(w.shape[0])]
    n = f.shape[0]
    labels = [None] * n if labels is None else [None if (v is None or int(v) < 0) else int(v) for v in labels]
    for v in labels:
        if v is not None and v >= w.shape[0]:
            raise ExplainError(f"label {v} is outside the head's {w.shape[0]} classes")
    if logits is None:
        logits = f @ w.T + (torch.as_tensor(bias).to(torch.float64) if bias is not None else 0.0)
    # given: the model's own logits, as the audit takes its prediction (at bf16 a near tie can
    # fall the other way in a float64 recomputation)
    pred = torch.as_tensor(logits).argmax(-1)
    f_eq = dec.remove_null(f)
    z, z_eq = tr(f), tr(f_eq)
    drift = logit_drift(w, f, f_eq)
    frac = torch.linalg.vector_norm(f - f_eq, dim=-1) / torch.linalg.vector_norm(f, dim=-1)
    has_null = dec.null_dim > 0
    nan = torch.full((n,), math.nan, dtype=torch.float64)
    is_deg = image_score(z, z_eq) if has_null else nan
    pred_as = attribute_score(z, z_eq, class_text[pred]) if has_null else nan
    if concept_text is not None:
        concept_text = torch.as_tensor(concept_text).to(torch.float64)
        concept_names = list(concept_names) if concept_names is not None else [f"concept_{k}" for k in
                                                                                 range(len(concept_text))]
        if len(concept_names) != concept_text.shape[0]:
            raise ExplainError(f"{len(concept_names)} concept names for {concept_text.shape[0]} embeddings")
        before, after = concept_angles(z, concept_text), concept_angles(z_eq, concept_text)
    out = []
    for i in range(n):
        y = labels[i]
        as_true = None
        if y is not None and has_null:
            as_true = float(attribute_score(z[i:i + 1], z_eq[i:i + 1], class_text[y])[0])
        toward, away = [], []
        if concept_text is not None and has_null:
            delta = before[i] - after[i]
            order = torch.argsort(delta, descending=True).tolist()
            row = lambda k: {"concept": concept_names[k], "as_deg": float(delta[k]),  # noqa: E731
                             "angle_before_deg": float(before[i, k]), "angle_after_deg": float(after[i, k])}
            toward = [row(k) for k in order[:top] if delta[k] > min_shift_deg]
            away = [row(k) for k in reversed(order[-top:]) if delta[k] < -min_shift_deg]
        p = int(pred[i])
        out.append(Explanation(
            pred=p, pred_name=names[p], label=y, class_name=names[y] if y is not None else None,
            as_deg=as_true, pred_as_deg=_num(pred_as[i]), is_deg=_num(is_deg[i]), null_dim=dec.null_dim,
            logit_drift=float(drift[i]), null_norm_frac=float(frac[i]), toward=toward, away=away,
            z=z[i], z_eq=z_eq[i]))
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


def thumbnail_jpeg(img, size: int = 128, quality: int = 85) -> bytes:
    """Square centre-cropped JPEG thumbnail of a PIL image."""
    from pipelines.io.images import to_uint8_view
    from pipelines.models.preprocess import PreprocessSpec

    spec = PreprocessSpec(size=size, resize=size, interpolation="bilinear", mean=(0, 0, 0), std=(1, 1, 1))
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(to_uint8_view(img, spec)).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


# ----------------------------------------------------------------------------- the command


@dataclass
class ExplainConfig:
    images: list[str]
    model: str
    translator: str
    concepts: str | None = None  # vocabulary file or text-embedding Parquet; default: the shipped vocabulary
    label: str | None = None  # class index or name, for every image (overrides a shard's cls)
    top: int = 5
    json_out: str | None = None
    index: str | None = None
    k: int = 5
    sheet: str | None = None
    templates: str | None = None  # default: the translator's (metadata), else "single"
    rank_atol: float | None = 1e-5
    rank_rtol: float | None = None
    device: str | None = None
    max_pixels: int | None = None
    precision: str = "fp32"  # of the forward; scores as `sing audit` at the same precision
    class_text: str | None = None  # class prompt embeddings (Parquet), one row per class, matched by index


def _check_config(cfg: ExplainConfig):
    if not cfg.images:
        raise ExplainError("give at least one image")
    if cfg.top < 1:
        raise ExplainError(f"--top must be >= 1, got {cfg.top}")
    if cfg.k < 1:
        raise ExplainError(f"--k must be >= 1, got {cfg.k}")
    if cfg.sheet and not cfg.index:
        raise ExplainError("--sheet needs --index DIR (built with `sing index`) to find the nearest images")
    if cfg.sheet and Path(cfg.sheet).suffix.lower() not in (".html", ".htm", ".png"):
        raise ExplainError(f"--sheet must end in .html or .png, got {cfg.sheet}")


def run_explain(cfg: ExplainConfig) -> dict:
    """Explain each image; returns {"meta": ..., "images": [...]} (what --json writes)."""
    from sing_ops import HeadDecomposition

    from pipelines.models.clip import TEMPLATES, load_clip
    from pipelines.io.images import to_uint8_view
    from pipelines.models.classifiers import load_classifier
    from pipelines.models.precision import check_precision, configure, features_and_logits, model_inputs
    from pipelines.stages.actors import pick_device
    from pipelines.io.remote import local_copy
    from pipelines.models.text import (CONCEPT_TEMPLATES, concept_names, embed_texts, is_embeddings_file, load_class_text,
                       load_concept_embeddings)

    _check_config(cfg)
    check_precision(cfg.precision)
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
        index.check_clip(clip_id)
    fixed_label = resolve_class(cfg.label, clf.class_names) if cfg.label is not None else None
    templates = cfg.templates or tr.metadata.get("templates") or "single"
    if templates not in TEMPLATES:
        raise ExplainError(f"unknown prompt templates {templates!r}; choose from {sorted(TEMPLATES)}")
    dec = HeadDecomposition.from_weight(clf.head_weight, atol=cfg.rank_atol, rtol=cfg.rank_rtol)
    # embedding files (e.g. imported from the official release) spare loading CLIP at all
    clip = None if cfg.class_text and cfg.concepts and is_embeddings_file(cfg.concepts) else load_clip(clip_id)
    text_info = None
    if cfg.class_text:
        class_text, text_info = load_class_text(cfg.class_text, clip_id, list(clf.class_names), tr.out_dim)
    else:
        class_text = embed_texts(clip, list(clf.class_names), TEMPLATES[templates])
    if cfg.concepts and is_embeddings_file(cfg.concepts):
        concepts, concept_text, _ = load_concept_embeddings(cfg.concepts, clip_id, tr.out_dim)
    else:
        concept_text = embed_texts(clip, concepts, CONCEPT_TEMPLATES)
    if class_text.shape[1] != tr.out_dim:
        raise ExplainError(f"CLIP {clip_id} text embeddings are {class_text.shape[1]}-d but the translator "
                           f"outputs {tr.out_dim}-d")
    device = pick_device(cfg.device)
    configure(cfg.precision)
    clf.to(device, channels_last=device.type == "cuda")
    # the audit's forward, at the audit's precision: the same image scores the same
    u8 = np.stack([to_uint8_view(q.image, clf.preprocess) for q in queries])
    f, logits = features_and_logits(clf, model_inputs(u8, clf.preprocess, cfg.precision, device), cfg.precision)
    f, logits = f.cpu(), logits.cpu()
    if not torch.isfinite(f).all():
        raise ExplainError("the classifier produced NaN/Inf features for "
                           + ", ".join(q.spec for q, ok in zip(queries, torch.isfinite(f).all(-1)) if not ok))
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
                 "clip_model": clip_id, "templates": templates if not cfg.class_text else None,
                 "class_text": {k: v for k, v in text_info.items() if k != "name_differences"} if text_info else None,
                 "null_dim": dec.null_dim, "rank": dec.rank,
                 "concepts": str(cfg.concepts or DEFAULT_CONCEPTS), "n_concepts": len(concepts),
                 "index": str(cfg.index) if cfg.index else None, "k": cfg.k if cfg.index else None},
        "images": rows,
    }
    if cfg.json_out:
        from pipelines.io.layout import write_json_atomic

        write_json_atomic(result, cfg.json_out)  # a local path or a URL
    if cfg.sheet:
        write_sheet(cfg.sheet, queries, rows, index)
    return result


# ----------------------------------------------------------------------------- output


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
    """Contact sheet: query image | k nearest to T(f) | k nearest to T(f~), one row per image.
    .html: self-contained page with base64 JPEG thumbnails; .png: a matplotlib figure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cells = []  # per row: (query jpeg, caption), [(jpeg, caption)], [(jpeg, caption)]
    for q, r in zip(queries, rows):
        def hits(which):
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
    import base64

    def img(jpeg, caption):
        b64 = base64.b64encode(jpeg).decode() if jpeg else ""
        tag = f'<img src="data:image/jpeg;base64,{b64}" alt="{html.escape(caption)}">' if jpeg else "(no thumbnail)"
        cap = "<br>".join(html.escape(line) for line in caption.split("\n"))
        return f"<figure>{tag}<figcaption>{cap}</figcaption></figure>"

    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>sing explain</title><style>",
             "body{font-family:sans-serif} table{border-collapse:collapse} td{vertical-align:top;padding:6px;"
             "border-top:1px solid #ccc} figure{display:inline-block;margin:2px;width:132px;font-size:11px}"
             "img{width:128px;height:128px} .q{background:#f4f4f4}</style></head><body>",
             "<h1>SING: nearest real images to T(f) and to its null-free equivalent T(f~)</h1>",
             "<table><tr><th>query</th><th>nearest to T(f)</th><th>nearest to T(f~)</th></tr>"]
    for (qj, qc), near_f, near_eq, r in cells:
        info = (f"AS {_fmt(r['as_deg'], '+.2f')} / pred AS {_fmt(r['pred_as_deg'], '+.2f')} / "
                f"IS {_fmt(r['is_deg'], '.2f')} deg; {r['description']}")
        parts.append(f"<tr><td class='q'>{img(qj, qc)}<div style='width:260px;font-size:11px'>"
                     f"{html.escape(info)}</div></td>"
                     f"<td>{''.join(img(j, c) for j, c in near_f)}</td>"
                     f"<td>{''.join(img(j, c) for j, c in near_eq)}</td></tr>")
    parts.append("</table></body></html>")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(parts), encoding="utf-8")
    tmp.replace(path)


def _sheet_png(path: Path, cells) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    k = max(max(len(c[1]), len(c[2])) for c in cells)
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
    fig.suptitle(f"query  |  {k} nearest real images to T(f)  |  {k} nearest to T(f~) (null part removed)",
                 fontsize=9)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)


def dump_json(result: dict) -> str:
    return json.dumps(result, indent=2, default=str)
