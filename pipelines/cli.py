"""The `sing` command line. Each subcommand is a thin layer over a function you can call
from Python; errors in the user's input print one line and exit 2 before any work."""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time

from .actor_pool import DEFAULT_ACTORS_PER_GPU, DEFAULT_GPU_ACTOR_THREADS

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


def _add_precision(p):
    from .precision import DEFAULT_PRECISION, HELP, PRECISIONS

    p.add_argument("--precision", choices=PRECISIONS, default=DEFAULT_PRECISION, help=HELP)


def _add_model_help(p):
    p.epilog = ("MODEL: timm:NAME[.TAG] | torchvision:NAME | ARCH@random | ARCH@/path/ckpt.safetensors|.pt | lite0.  "
                "CLIP: openclip:ARCH@TAG | openclip:ARCH@random | openclip:tiny@random")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sing", description="SING at dataset scale: what image classifiers hide "
                                                         "in their null space.")
    p.add_argument("--debug", action="store_true", help="show tracebacks for input errors")
    p.add_argument("-q", "--quiet", action="store_true", help="less logging, no progress bars")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sh = sub.add_parser("shards", help="make webdataset shards").add_subparsers(dest="shards_cmd", required=True)
    mk = sh.add_parser("make", help="ImageFolder tree (SRC/<class>/*.jpg) -> webdataset shards (jpg+cls+json)")
    mk.add_argument("src")
    mk.add_argument("--out", required=True)
    mk.add_argument("--per-shard", type=int, default=1000)
    mk.add_argument("--class-index", help="JSON {folder name: class index}; default: ImageNet synsets, else sorted")
    mk.add_argument("--prefix", default="shard")

    et = sub.add_parser("embed-text", help="cache CLIP text embeddings of class prompts or a concept vocabulary")
    et.add_argument("--clip", required=True)
    src = et.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompts", help="text file, one class name / concept per line")
    src.add_argument("--classes", choices=["imagenet"], help="the 1000 ImageNet class names")
    et.add_argument("--templates", default="single", help="single | ensemble (class prompts)")
    et.add_argument("--raw", action="store_true", help="embed each line as is, no template")
    et.add_argument("--out", required=True)
    _add_model_help(et)

    ft = sub.add_parser("fit-translator", help="fit the feature -> CLIP translator in one streaming pass")
    ft.add_argument("--model", required=True)
    ft.add_argument("--clip", required=True)
    ft.add_argument("--shards", required=True, nargs="+", help="glob(s), brace ranges or fsspec URLs")
    ft.add_argument("--heldout-shards", nargs="+", help="shards held out to choose lambda (default: 10%% of the shards, evenly spaced)")
    ft.add_argument("--lambdas", type=float, nargs="+", help="ridge penalties to try (default: relative grid)")
    ft.add_argument("--templates", default="single")
    ft.add_argument("--batch-size", type=int, default=64)
    ft.add_argument("--device")
    ft.add_argument("--out", required=True, help="translator .safetensors path (report goes to OUT.report.json)")
    _add_precision(ft)
    _add_model_help(ft)

    au = sub.add_parser("audit", help="per-image SING scores over shards -> Parquet")
    au.add_argument("--model", required=True, action="append", help="repeat to audit several models in one decode")
    au.add_argument("--translator", required=True, action="append", help="one, or one per --model")
    au.add_argument("--decode", choices=["host", "device"], default="host",
                    help="host: decode in the read stage (PIL, pixel-exact eval transforms); device: the model "
                         "actors decode JPEGs on their device (nvJPEG on GPUs; a few grey levels off PIL)")
    au.add_argument("--host-decode-share", type=float, default=0.0, metavar="F",
                    help="with --decode device: decode this share of the JPEGs in the read tasks anyway, so idle "
                         "CPU cores help the GPU's JPEG decoder (0-1, default 0)")
    au.add_argument("--actors-per-gpu", type=int, default=DEFAULT_ACTORS_PER_GPU,
                    help=f"model actor processes sharing each GPU (default {DEFAULT_ACTORS_PER_GPU})")
    au.add_argument("--actor-threads", type=int,
                    help="batches each model actor runs at once, each thread on its own CUDA stream, so one "
                         "batch's JPEG decode overlaps another's forward in one CUDA context (default "
                         f"{DEFAULT_GPU_ACTOR_THREADS} on GPUs, 1 on CPUs)")
    au.add_argument("--buffer-gb", type=float, metavar="GB",
                    help="cap the data Ray keeps in flight between read tasks and model actors (default: Ray's "
                         "budget, half the object store, which grows with the node's RAM)")
    au.add_argument("--stall-timeout", type=float, default=1800, metavar="SECONDS",
                    help="end the run (exit 1; rerunning resumes) when no result arrives for this long, e.g. "
                         "after a node was lost (default 1800; 0: wait forever)")
    au.add_argument("--translator-match", choices=["exact", "arch"], default="exact",
                    help="exact: translator fitted on this very model id; arch: on any checkpoint of the same "
                         "architecture and feature dim (reusing one translator across a training run)")
    au.add_argument("--shards", required=True, nargs="+")
    au.add_argument("--out", required=True)
    au.add_argument("--concepts", help="text file of concepts (one per line)")
    au.add_argument("--class-text", help="class prompt embeddings from `sing embed-text` (default: computed)")
    au.add_argument("--templates", default="single")
    au.add_argument("--run-id")
    au.add_argument("--batch-size", type=int, default=64)
    au.add_argument("--num-actors", type=int)
    au.add_argument("--rank-atol", type=float, default=1e-5)
    au.add_argument("--rank-rtol", type=float)
    au.add_argument("--device")
    au.add_argument("--max-pixels", type=int, help="decompression-bomb guard (default: PIL's)")
    _add_precision(au)
    _add_model_help(au)

    # issue 5: single-image explanations, retrieval index, null-space steering, validation
    ex = sub.add_parser("explain", help="SING for a few images: prediction, AS/IS, concepts that moved, neighbours")
    ex.add_argument("images", nargs="+", metavar="IMAGE", help="image file, or SHARD.tar#KEY (its cls is the label)")
    ex.add_argument("--model", required=True)
    ex.add_argument("--translator", required=True)
    ex.add_argument("--concepts", help="concept vocabulary, one per line (default: pipelines/vocab/concepts.txt)")
    ex.add_argument("--label", help="true class (index or name) for every image; default: the shard's cls, if any")
    ex.add_argument("--top", type=int, default=5, help="concepts listed per direction")
    ex.add_argument("--json", dest="json_out", metavar="OUT", help="write the explanations as JSON")
    ex.add_argument("--index", help="image index from `sing index`: show the nearest real images")
    ex.add_argument("--k", type=int, default=5, help="nearest images per query (with --index)")
    ex.add_argument("--sheet", help="contact sheet OUT.html or OUT.png (with --index)")
    ex.add_argument("--templates", help="class prompt templates (default: the translator's)")
    ex.add_argument("--rank-atol", type=float, default=1e-5)
    ex.add_argument("--rank-rtol", type=float)
    ex.add_argument("--device")
    _add_precision(ex)
    _add_model_help(ex)

    st = sub.add_parser("steer", help="null-space steering of one class toward a prompt (paper Table 1)")
    st.add_argument("--model", required=True)
    st.add_argument("--translator", required=True)
    st.add_argument("--shards", required=True, nargs="+")
    st.add_argument("--class", dest="target_class", required=True, metavar="NAME_OR_INDEX")
    st.add_argument("--prompt", required=True, help='target text, e.g. "an image of a jellyfish" (no template)')
    st.add_argument("--is-deg", type=float, help="target Image Score in degrees, in (0, 180) (paper: 40)")
    st.add_argument("--eps", type=float, help="fixed step length along the unit null direction instead")
    st.add_argument("--out", required=True)
    st.add_argument("--run-id")
    st.add_argument("--batch-size", type=int, default=64)
    st.add_argument("--rank-atol", type=float, default=1e-5)
    st.add_argument("--rank-rtol", type=float)
    st.add_argument("--device")
    st.add_argument("--max-pixels", type=int, help="decompression-bomb guard (default: PIL's)")
    _add_precision(st)
    _add_model_help(st)

    va = sub.add_parser("validate", help="logit change under null removal vs random/principal perturbations")
    va.add_argument("--model", required=True)
    va.add_argument("--shards", required=True, nargs="+")
    va.add_argument("--n", type=int, default=64, help="images to sample")
    va.add_argument("--out", required=True)
    va.add_argument("--seed", type=int, default=0)
    va.add_argument("--batch-size", type=int, default=32)
    va.add_argument("--rank-atol", type=float, default=1e-5)
    va.add_argument("--rank-rtol", type=float)
    va.add_argument("--device")
    _add_precision(va)
    _add_model_help(va)

    ix = sub.add_parser("index", help="CLIP image-embedding index with thumbnails (for `sing explain --index`)")
    ix.add_argument("--clip", required=True)
    ix.add_argument("--shards", required=True, nargs="+")
    ix.add_argument("--out", required=True)
    ix.add_argument("--thumb-size", type=int, default=96)
    ix.add_argument("--dtype", default="float16", choices=["float16", "float32"])
    ix.add_argument("--batch-size", type=int, default=64)
    ix.add_argument("--device")
    _add_precision(ix)
    _add_model_help(ix)

    ni = sub.add_parser("nightly", help="audit new checkpoints, compare with a baseline, alarm (exit 3)",
                        description="Exit codes: 0 ok or nothing new, 1 the run failed (rerun resumes), "
                                    "2 bad config or input, 3 ALARM (a checkpoint crossed a threshold). "
                                    "Config keys: cluster/nightly.example.yaml.")
    ni.add_argument("--config", required=True, help="nightly YAML (see cluster/nightly.example.yaml)")
    ni.add_argument("--dry-run", action="store_true", help="list the checkpoints that would be audited")

    dm = sub.add_parser("demo", help="end to end on real photos shipped with scikit-image/scikit-learn")
    dm.add_argument("--out", default="sing_demo_out")
    dm.add_argument("--images-per-photo", type=int, default=12)
    dm.add_argument("--offline", action="store_true", help="do not try to download pretrained weights")

    bn = sub.add_parser("bench", help="pipeline throughput vs bare model forward, naive loop, memory")
    bn.add_argument("--model", default="torchvision:resnet50@random")
    _add_precision(bn)
    bn.add_argument("--images", type=int, help="images of the 1x run (default: 192 on CPU, 4096 on CUDA)")
    bn.add_argument("--batch-size", type=int, default=32)
    bn.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    bn.add_argument("--decode", choices=["host", "device"], help="default: device on CUDA, host on CPU")
    bn.add_argument("--host-decode-share", type=float, default=0.0, metavar="F",
                    help="passed to the audit (--decode device only)")
    bn.add_argument("--actors-per-gpu", type=int, help="passed to the audit (default: the audit's)")
    bn.add_argument("--actor-threads", type=int, help="passed to the audit (default: the audit's)")
    bn.add_argument("--buffer-gb", type=float, help="passed to the audit (default: Ray's budget)")
    bn.add_argument("--out", help="keep the benchmark's shards and results here")

    mo = sub.add_parser("models", help="MODEL sources; --paper: the paper's 13 models as they resolve")
    mo.add_argument("--paper", action="store_true", help="list the paper's 13 classifiers (exact weights, dims, "
                                                         "preprocessing, official translator names)")
    mo.add_argument("--json", action="store_true", help="machine-readable output")

    bp = sub.add_parser("bench-precision", help="each --precision against a float64 forward: score errors, speed")
    bp.add_argument("--model", default="lite0", help="classifier (default: the real EfficientNet-Lite0)")
    bp.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    bp.add_argument("--per-photo", type=int, default=16, help="augmented images per shipped photo (6 photos)")
    bp.add_argument("--batch-size", type=int, default=32)
    bp.add_argument("--translator", help="a real translator for MODEL (default: seeded random, 768-d)")
    bp.add_argument("--class-text", help="real class text embeddings (default: seeded random)")
    bp.add_argument("--json", action="store_true", help="machine-readable output")

    ca = sub.add_parser("cache", help="the download cache of URL inputs (per node; $SING_CACHE)")
    ca_sub = ca.add_subparsers(dest="cache_cmd", required=True)
    ca_sub.add_parser("ls", help="entries, least recently used first")
    pr = ca_sub.add_parser("prune", help="remove entries unused for a while / beyond a size (run between jobs)")
    pr.add_argument("--max-gb", type=float, help="keep at most this many GB, least recently used go first")
    pr.add_argument("--older-than-days", type=float, help="remove entries unused for this many days")
    pr.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    for c in (ca, *ca_sub.choices.values()):
        c.add_argument("--cache-dir", help="default: $SING_CACHE or ~/.cache/sing/remote")

    sub.add_parser("bench-ops", help="SING ops vs one ResNet50 forward (python -m sing_ops.bench)",
                   add_help=False)
    sub.add_parser("query", help="run a named SQL query over results (sing query --help)", add_help=False)
    sub.add_parser("report", help="PNG figures and index.html over results (sing report --help)", add_help=False)
    return p


def _cmd_shards_make(a):
    from .shards import make_shards

    paths = make_shards(a.src, a.out, per_shard=a.per_shard, class_index=a.class_index, prefix=a.prefix)
    print(f"wrote {len(paths)} shards to {a.out}")
    return EXIT_OK


def _cmd_embed_text(a):
    from .clip_models import TEMPLATES, load_clip
    from .text import CONCEPT_TEMPLATES, embed_texts, read_lines, save_embeddings

    if a.classes:
        from .imagenet_classes import imagenet_class_names

        names = imagenet_class_names()
    else:
        names = read_lines(a.prompts)
    if a.raw:
        templates = ["{}"]
    elif a.templates == "concept":
        templates = CONCEPT_TEMPLATES
    elif a.templates in TEMPLATES:
        templates = TEMPLATES[a.templates]
    else:
        raise ValueError(f"unknown templates {a.templates!r}; choose from {sorted(TEMPLATES) + ['concept']}")
    clip = load_clip(a.clip)
    path = save_embeddings(a.out, names, embed_texts(clip, names, templates), clip.model_id, templates)
    print(f"wrote {len(names)} embeddings ({clip.embed_dim}-d, {clip.model_id}) to {path}")
    return EXIT_OK


def _cmd_fit(a):
    from .fit import FitConfig, run_fit

    rep = run_fit(FitConfig(model=a.model, clip=a.clip, shards=a.shards, out=a.out, heldout_shards=a.heldout_shards,
                            lambdas=a.lambdas, templates=a.templates, batch_size=a.batch_size, device=a.device,
                            precision=a.precision, progress=not a.quiet))
    h, zs = rep["heldout"], rep["zero_shot_top1"]
    print(f"translator {rep['translator_path']} (id {rep['translator_id']}): {rep['n_train']} train / "
          f"{rep['n_heldout']} held-out images, lambda={rep['lambda']:.4g}")
    print(f"held-out MSE {h['mse']:.4g}  R^2 {h['r2']:.3f}  mean cosine {h['mean_cosine']:.3f}")
    print(f"zero-shot top-1: T(f) {zs['translated']:.3f}  CLIP {zs['clip']:.3f}  (classifier {zs['classifier']:.3f})")
    return EXIT_OK


def _cmd_audit(a):
    from .audit import AuditConfig, run_audit

    man = run_audit(AuditConfig(models=a.model, translators=a.translator, shards=a.shards, out=a.out,
                                concepts=a.concepts, class_text=a.class_text, templates=a.templates, run_id=a.run_id,
                                batch_size=a.batch_size, num_actors=a.num_actors, rank_atol=a.rank_atol,
                                rank_rtol=a.rank_rtol, device=a.device, max_pixels=a.max_pixels,
                                translator_match=a.translator_match, decode=a.decode,
                                host_decode_share=a.host_decode_share, actors_per_gpu=a.actors_per_gpu,
                                actor_threads=a.actor_threads, buffer_gb=a.buffer_gb, stall_timeout_s=a.stall_timeout,
                                precision=a.precision, progress=not a.quiet))
    print(f"run {man['run_id']}: {man['shards']['total']} shards ({man['shards']['skipped_done']} already done)")
    for slug, c in man["counts"].items():
        print(f"  {slug}: {c['images']} images, {c['errors']} errors")
    print(f"manifest: {os.path.join(a.out, 'runs', man['run_id'] + '.json')}")
    return EXIT_OK


def _cmd_cache(a):
    from .remote import cache_entries, default_cache_dir, prune_cache

    root = a.cache_dir or str(default_cache_dir())
    if a.cache_cmd == "ls":
        entries = cache_entries(root)
        for e in entries:
            print(f"{e['bytes'] / 2**20:10.1f} MiB  {time.strftime('%Y-%m-%d %H:%M', time.localtime(e['last_used']))}  "
                  f"{e['path'].name}  {', '.join(e['files'])}")
        print(f"{len(entries)} entries, {sum(e['bytes'] for e in entries) / 2**30:.2f} GiB in {root}")
        return EXIT_OK
    removed = prune_cache(root, max_bytes=None if a.max_gb is None else int(a.max_gb * 2**30),
                          older_than_s=None if a.older_than_days is None else a.older_than_days * 86400,
                          dry_run=a.dry_run)
    verb = "would remove" if a.dry_run else "removed"
    for e in removed:
        print(f"{verb} {e['path'].name} ({e['bytes'] / 2**20:.1f} MiB: {', '.join(e['files'])})")
    print(f"{verb} {len(removed)} entries, {sum(e['bytes'] for e in removed) / 2**30:.2f} GiB from {root}")
    return EXIT_OK


def _cmd_explain(a):
    from .explain import ExplainConfig, format_explanations, run_explain

    res = run_explain(ExplainConfig(images=a.images, model=a.model, translator=a.translator, concepts=a.concepts,
                                    label=a.label, top=a.top, json_out=a.json_out, index=a.index, k=a.k,
                                    sheet=a.sheet, templates=a.templates, rank_atol=a.rank_atol,
                                    rank_rtol=a.rank_rtol, device=a.device, precision=a.precision))
    print(format_explanations(res))
    for what, path in (("json", a.json_out), ("contact sheet", a.sheet)):
        if path:
            print(f"{what}: {path}")
    return EXIT_OK


def _cmd_steer(a):
    from .steer_job import SteerConfig, run_steer

    man = run_steer(SteerConfig(model=a.model, translator=a.translator, shards=a.shards, out=a.out,
                                target_class=a.target_class, prompt=a.prompt, is_deg=a.is_deg, eps=a.eps,
                                run_id=a.run_id, batch_size=a.batch_size, rank_atol=a.rank_atol,
                                rank_rtol=a.rank_rtol, device=a.device, max_pixels=a.max_pixels,
                                precision=a.precision, progress=not a.quiet))
    t = man["target"]
    print(f"steer run {man['run_id']}: class {t['class_index']} ({t['class_name']}) -> {t['prompt']!r}: "
          f"{man['counts']['images']} images, {man['counts']['errors']} errors")
    from .remote import is_url

    if man["counts"]["images"] and not is_url(a.out):  # the query engine reads local results only
        from queries import format_frame, steer_summary

        print(format_frame(steer_summary(a.out, run=man["run_id"], model=man["models"][0]["slug"])))
    print(f"manifest: {os.path.join(a.out, 'runs', man['run_id'] + '.json')}")
    return EXIT_OK


def _cmd_validate(a):
    from .validate import ValidateConfig, run_validate

    rep = run_validate(ValidateConfig(model=a.model, shards=a.shards, out=a.out, n=a.n, seed=a.seed,
                                      batch_size=a.batch_size, rank_atol=a.rank_atol, rank_rtol=a.rank_rtol,
                                      device=a.device, precision=a.precision))
    print(rep["text"])
    print(f"table: {rep['files']['parquet']} (and .csv)  histogram: {rep['files']['png']}")
    return EXIT_OK


def _cmd_index(a):
    from .retrieval import IndexConfig, build_index

    man = build_index(IndexConfig(clip=a.clip, shards=a.shards, out=a.out, thumb_size=a.thumb_size, dtype=a.dtype,
                                  batch_size=a.batch_size, device=a.device, precision=a.precision,
                                  progress=not a.quiet))
    print(f"index {a.out}: {man['images']} images ({man['clip_model']}, {man['dim']}-d {man['dtype']}), "
          f"{man['errors']} errors, {man['shards']['skipped_done']} of {man['shards']['total']} shards already done")
    return EXIT_OK


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Subcommands implemented by other packages parse their own arguments.
    passthrough = {"query": ("queries", "cli_query"), "report": ("queries", "cli_report"),
                   "bench-ops": ("sing_ops.bench", "main")}
    if argv and argv[0] in passthrough:
        import importlib

        mod, fn = passthrough[argv[0]]
        rc = getattr(importlib.import_module(mod), fn)(argv[1:])
        return rc if isinstance(rc, int) else EXIT_OK
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    handlers = {"shards": _cmd_shards_make, "embed-text": _cmd_embed_text, "fit-translator": _cmd_fit,
                "audit": _cmd_audit, "explain": _cmd_explain, "steer": _cmd_steer, "validate": _cmd_validate,
                "index": _cmd_index, "cache": _cmd_cache}
    if args.command == "nightly":  # has its own exit codes (3 = alarm)
        from .nightly import cli_nightly

        return cli_nightly(args.config, dry_run=args.dry_run, progress=not args.quiet)
    if args.command == "demo":
        from .demo import run_demo_cli as handler
    elif args.command == "bench":
        from .bench import run_bench_cli as handler
    elif args.command == "bench-precision":
        from .precision_bench import run_precision_cli as handler
    elif args.command == "models":
        from .model_list import run_models_cli as handler
    else:
        handler = handlers[args.command]
    from .watchdog import StallError

    try:
        return handler(args)
    except StallError as exc:  # the run failed mid-way, not the input: a rerun resumes
        print(f"sing {args.command}: failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (ValueError, FileNotFoundError, RuntimeError, KeyError) as exc:
        if args.debug:
            raise
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"sing {args.command}: error: {msg}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"sing {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
