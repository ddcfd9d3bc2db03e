"""`sing bench-precision`: every precision against a float64 forward, on a real classifier and
real photos (the error budget that picks the default precision).

Per precision: the production path (forward at that precision, SING ops in float32 on the
device) against the reference (float64 forward, float64 ops), per image: |dAS| and |dIS|
(median, p99, max); per class: the error of the median |AS|; per model: the relative error of
IS/|AS| (ratio of means and median ratio); and the forward's speed. Default inputs: the real
ImageNet EfficientNet-Lite0 (`lite0`) on augmented photos shipped with scikit-image and
scikit-learn (the demo's six), a seeded random translator to a 768-d space and seeded random
class texts: no real CLIP exists offline, and the budget is about how precision moves angles,
not about what they mean. Pass --translator/--class-text for real ones.
"""
from __future__ import annotations

import json
import time

import numpy as np

from pipelines.models.compiled import COMPILE_MODES
from pipelines.models.precision import PRECISIONS

# the budget a faster precision must meet to become the default (README, "Precision")
BUDGET = {"is_p99_deg": 0.05, "class_median_abs_as_deg": 0.01, "ratio_rel": 0.005}


def photo_set(per_photo: int, seed: int = 0):
    """(PIL images, ImageNet labels): the demo's six photos, each augmented per_photo times."""
    from pipelines.jobs.demo import PHOTOS, _augment, _load_photo
    from pipelines.models.imagenet_classes import imagenet_synsets

    index = {s: i for i, s in enumerate(imagenet_synsets())}
    rng = np.random.default_rng(seed)
    imgs, labels = [], []
    for ref, synset in PHOTOS:
        photo = _load_photo(ref)
        for _ in range(per_photo):
            imgs.append(_augment(photo, rng).convert("RGB"))
            labels.append(index[synset])
    return imgs, np.array(labels)


def _random_translator(m: int, d: int = 768, seed: int = 0):
    import torch

    from sing_ops import Translator

    g = torch.Generator().manual_seed(seed)
    return Translator(torch.randn(d, m, generator=g, dtype=torch.float64) / m ** 0.5,
                      torch.randn(d, generator=g, dtype=torch.float64) * 0.1)


def _scores(scorer, f, labels):
    import torch

    res = scorer.score(f, torch.as_tensor(labels), checked=True)
    return res["as_deg"].double().cpu().numpy(), res["is_deg"].double().cpu().numpy()


def _summary(as_p, is_p, as_ref, is_ref, labels) -> dict:
    d_as, d_is = np.abs(as_p - as_ref), np.abs(is_p - is_ref)
    classes = np.unique(labels)
    cls_err = max(abs(np.median(np.abs(as_p[labels == c])) - np.median(np.abs(as_ref[labels == c])))
                  for c in classes)

    def ratios(a, i):
        return float(np.mean(i) / np.mean(np.abs(a))), float(np.median(i / np.abs(a)))

    (rm_p, mr_p), (rm_r, mr_r) = ratios(as_p, is_p), ratios(as_ref, is_ref)
    q = lambda x: {"median": float(np.median(x)), "p99": float(np.percentile(x, 99)), "max": float(x.max())}  # noqa: E731
    return {"as_deg": q(d_as), "is_deg": q(d_is), "class_median_abs_as_deg": float(cls_err),
            "ratio_of_means_rel": abs(rm_p / rm_r - 1), "median_ratio_rel": abs(mr_p / mr_r - 1)}


def within_budget(s: dict) -> bool:
    return (s["is_deg"]["p99"] <= BUDGET["is_p99_deg"] and s["class_median_abs_as_deg"] <= BUDGET[
        "class_median_abs_as_deg"] and max(s["ratio_of_means_rel"], s["median_ratio_rel"]) <= BUDGET["ratio_rel"])


def measure(model: str = "lite0", device: str | None = None, per_photo: int = 16, batch_size: int = 32,
            translator: str | None = None, class_text: str | None = None, precisions=PRECISIONS,
            repeats: int = 3, compile: str = "off") -> dict:
    """compile: also the compiled forward at each precision (pipelines.models.compiled), against
    float64 and against eager at the same precision: the budget that decides whether
    --compile may change scores (row "<precision>+compile", its "vs_eager")."""
    import torch

    from sing_ops import AuditScorer, HeadDecomposition

    from pipelines.io.images import normalise, to_uint8_view
    from pipelines.models.classifiers import load_classifier
    from pipelines.models.compiled import CompiledClassifier, torch_mode
    from pipelines.models.precision import configure

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    clf = load_classifier(model)
    imgs, labels = photo_set(per_photo)
    if clf.num_classes != 1000:
        labels = labels % clf.num_classes
    u8 = np.stack([to_uint8_view(im, clf.preprocess) for im in imgs])
    dec = HeadDecomposition.from_weight(clf.head_weight)
    if translator:
        from pipelines.models.translator_file import load_translator

        tr = load_translator(translator, in_dim=clf.num_features)
    else:
        tr = _random_translator(clf.num_features)
    if class_text:
        from pipelines.models.text import load_embeddings

        text = torch.from_numpy(load_embeddings(class_text)[1])
    else:
        text = torch.randn(clf.num_classes, tr.out_dim, generator=torch.Generator().manual_seed(1))

    def batches():
        return range(0, len(u8), batch_size)

    # reference: float64 weights, inputs, forward and ops
    clf.module.to(device=device, dtype=torch.float64)
    f_ref = torch.cat([_capture64(clf, normalise(torch.from_numpy(u8[i:i + batch_size]).to(device), clf.preprocess,
                                                 dtype=torch.float64)) for i in batches()])
    ref64 = AuditScorer(clf.head_weight.double(), dec, tr, text, device=device, dtype=torch.float64)
    as_ref, is_ref = _scores(ref64, f_ref, labels)
    scorer = AuditScorer(clf.head_weight, dec, tr.to(dtype=torch.float32), text, device=device)
    clf.module.to(dtype=torch.float32)
    clf.to(device, channels_last=device.type == "cuda")
    rows = {}
    for p in precisions:
        configure(p)
        f, best = _forward_all(clf, u8, p, device, batch_size, repeats)
        rows[p] = _row(f, best, scorer, labels, as_ref, is_ref, f_ref)
        if torch_mode(compile):  # the compiled forward: against float64, and against eager at p (the budget)
            model = CompiledClassifier(clf, compile, batch_size)
            try:
                model.warm_up(p, device)
                fc, best_c = _forward_all(model, u8, p, device, batch_size, repeats)
            finally:
                model.close()
            row = _row(fc, best_c, scorer, labels, as_ref, is_ref, f_ref)
            as_e, is_e = _scores(scorer, f, labels)
            row["vs_eager"] = _summary(*_scores(scorer, fc, labels), as_e, is_e, labels)
            row["vs_eager"]["feature_rel_err"] = _rel(fc, f)
            row["within_budget"] = within_budget(row["vs_eager"])
            rows[f"{p}+compile"] = row
    configure("fp32")
    return {"model": clf.model_id, "device": str(device), "images": len(u8), "classes": int(len(np.unique(labels))),
            "null_dim": dec.null_dim, "reference": {"median_abs_as_deg": float(np.median(np.abs(as_ref))),
                                                    "median_is_deg": float(np.median(is_ref))},
            "budget": BUDGET, "precisions": rows, "compile": compile,
            "translator": translator or "seeded random (768-d)", "class_text": class_text or "seeded random"}


def _forward_all(model, u8, precision, device, batch_size, repeats):
    """(features of every image, best seconds over `repeats` passes) at `precision`."""
    import torch

    from pipelines.models.precision import features_and_logits, model_inputs

    best, feats = float("inf"), []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        feats = [features_and_logits(model, model_inputs(u8[i:i + batch_size], model.preprocess, precision, device),
                                     precision)[0] for i in range(0, len(u8), batch_size)]
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return torch.cat(feats), best


def _rel(f, ref) -> float:
    import torch

    return float((torch.linalg.vector_norm(f.double().cpu() - ref.double().cpu(), dim=1)
                  / torch.linalg.vector_norm(ref.double().cpu(), dim=1)).median())


def _row(f, best, scorer, labels, as_ref, is_ref, f_ref) -> dict:
    s = _summary(*_scores(scorer, f, labels), as_ref, is_ref, labels)
    s["feature_rel_err"] = _rel(f, f_ref)
    s["images_per_second"] = len(labels) / best
    s["within_budget"] = within_budget(s)
    return s


def _capture64(clf, x):
    """The head's input in float64 (features_and_logits returns float32)."""
    import torch

    got = {}
    h = clf.head.register_forward_hook(lambda _m, inp, _out: got.__setitem__("f", inp[0]))
    try:
        with torch.inference_mode():
            clf.module(x)
    finally:
        h.remove()
    return got["f"].flatten(1).double()


def format_report(r: dict) -> str:
    lines = [f"precision vs a float64 forward: {r['model']} on {r['device']}, {r['images']} real photos "
             f"({r['classes']} classes), null_dim {r['null_dim']}; reference median |AS| "
             f"{r['reference']['median_abs_as_deg']:.3f} deg, median IS {r['reference']['median_is_deg']:.2f} deg",
             f"{'precision':<9s} {'|dAS| med/p99/max (deg)':<28s} {'|dIS| med/p99/max (deg)':<28s} "
             f"{'cls med|AS|':>11s} {'IS/|AS| rel':>11s} {'feat rel':>9s} {'img/s':>8s}  budget"]
    for p, s in r["precisions"].items():
        fmt = lambda q: f"{q['median']:.1e}/{q['p99']:.1e}/{q['max']:.1e}"  # noqa: E731
        lines.append(f"{p:<9s} {fmt(s['as_deg']):<28s} {fmt(s['is_deg']):<28s} "
                     f"{s['class_median_abs_as_deg']:>11.1e} "
                     f"{max(s['ratio_of_means_rel'], s['median_ratio_rel']):>11.1e} {s['feature_rel_err']:>9.1e} "
                     f"{s['images_per_second']:>8.1f}  {'meets' if s['within_budget'] else 'FAILS'}")
    for p, s in r["precisions"].items():
        if "vs_eager" in s:
            v = s["vs_eager"]
            lines.append(f"{p} vs eager {p.split('+')[0]}: |dAS| max {v['as_deg']['max']:.1e}, |dIS| p99/max "
                         f"{v['is_deg']['p99']:.1e}/{v['is_deg']['max']:.1e} deg, class-median |AS| "
                         f"{v['class_median_abs_as_deg']:.1e} deg, IS/|AS| "
                         f"{max(v['ratio_of_means_rel'], v['median_ratio_rel']):.1e}, features "
                         f"{v['feature_rel_err']:.1e} rel: {'within' if s['within_budget'] else 'OUTSIDE'} the budget")
    b = r["budget"]
    lines.append(f"budget: |dIS| p99 <= {b['is_p99_deg']} deg, class-median |AS| error <= "
                 f"{b['class_median_abs_as_deg']} deg, IS/|AS| ratio error <= {b['ratio_rel']:.1%}")
    return "\n".join(lines)


def cli_args(p) -> None:
    p.add_argument("--model", default="lite0", help="classifier (default: the real EfficientNet-Lite0)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--per-photo", type=int, default=16, help="augmented images per shipped photo (6 photos)")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward batch")
    p.add_argument("--translator", help="a real translator for MODEL (default: seeded random, 768-d)")
    p.add_argument("--class-text", help="real class text embeddings (default: seeded random)")
    p.add_argument("--compile", choices=COMPILE_MODES, default="off",
                   help="also measure the compiled forward (torch.compile mode, or auto) against eager at each precision")
    p.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS), help="precisions to measure")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def cli_run(args) -> int:
    r = measure(args.model, args.device, args.per_photo, args.batch_size, args.translator, args.class_text,
                tuple(args.precisions), compile=args.compile)
    print(json.dumps(r, indent=2) if args.json else format_report(r))
    return 0
