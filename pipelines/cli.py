"""The `sing` command line: one table of commands, one way to run them, exit codes by error
type (pipelines.errors). Each command lives in its module as `cli_args(parser)` and
`cli_run(args) -> exit code`; its options are declared there (pipelines.options)."""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from pipelines import timeline
from pipelines.errors import exit_code

# name: (module, help). Modules are imported only when their command runs (or for --help).
COMMANDS = {
    "shards": ("pipelines.jobs.make_shards", "make webdataset shards from an image folder"),
    "embed-text": ("pipelines.jobs.embed_text", "cache CLIP text embeddings of class prompts or a concept vocabulary"),
    "fit-translator": ("pipelines.jobs.fit", "fit the feature -> CLIP translator in one streaming pass"),
    "embed-images": ("pipelines.jobs.embed_images", "CLIP image embeddings of shards, computed once for any number "
                                                    "of translator fits"),
    "audit": ("pipelines.jobs.audit", "per-image SING scores over shards -> Parquet"),
    "leaderboard": ("pipelines.jobs.leaderboard", "rank a model zoo by null-space leakage: one row per model, CLIP "
                                                  "computed once"),
    "explain": ("pipelines.jobs.explain", "SING for a few images: prediction, AS/IS, concepts that moved, neighbours"),
    "steer": ("pipelines.jobs.steer", "null-space steering of one class toward a prompt (paper Table 1)"),
    "validate": ("pipelines.jobs.validate", "logit change under null removal vs random/principal perturbations"),
    "index": ("pipelines.jobs.index", "CLIP image-embedding index with thumbnails (for `sing explain --index`)"),
    "import": ("pipelines.jobs.import_official", "convert the official SING release's translators and embeddings"),
    "reproduce": ("pipelines.jobs.reproduce", "the paper's IS/|AS| sweep and Table 1, beside the paper's numbers"),
    "nightly": ("pipelines.jobs.nightly", "audit new checkpoints, compare with a baseline, alarm (exit 3)"),
    "demo": ("pipelines.jobs.demo", "end to end on real photos shipped with scikit-image/scikit-learn"),
    "bench": ("pipelines.jobs.bench.pipeline", "pipeline throughput vs bare model forward, naive loop, memory"),
    "bench-precision": ("pipelines.jobs.bench.precision", "each --precision against a float64 forward"),
    "bench-fit": ("pipelines.jobs.bench.fitcache", "K translators fitted from a CLIP cache in one pass vs their bare "
                                                   "forwards"),
    "bench-layout": ("pipelines.jobs.bench.layout", "the concept angles on disk: long table vs lists (bytes, write cost, queries)"),
    "bench-scale": ("pipelines.jobs.bench.scale", "can one driver feed many GPUs: stand-in models, local multi-node Ray"),
    "models": ("pipelines.jobs.model_list", "MODEL sources; --paper: the paper's 13 models as they resolve"),
    "cache": ("pipelines.jobs.cache", "the download cache of URL inputs (per node; $SING_CACHE)"),
    "cluster": ("pipelines.jobs.cluster_check", "check a KubeRay manifest's pods against node types before "
                                                 "submitting it (sing cluster check MANIFEST)"),
}
# commands of other packages, which parse their own arguments: name: (module, function, help)
FOREIGN = {
    "query": ("queries", "cli_query", "run a named SQL query over results (sing query --help)"),
    "report": ("queries", "cli_report", "PNG figures and index.html over results (sing report --help)"),
    "bench-ops": ("sing_ops.bench", "main", "SING ops vs one ResNet50 forward (python -m sing_ops.bench)"),
}


LABELS = {1: "failed", 2: "error", 3: "ALARM"}


def parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The parser; only the selected command's module is imported (its options), so `sing X`
    does not pay for importing every other command."""
    p = argparse.ArgumentParser(prog="sing", description="SING at dataset scale: what image classifiers hide "
                                                         "in their null space.")
    p.add_argument("--debug", action="store_true", help="show tracebacks for input errors")
    p.add_argument("-q", "--quiet", action="store_true", help="less logging, no progress bars")
    p.add_argument("--verbose", action="store_true", help="Ray's own console output too (its INFO lines and "
                                                         "progress stream)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        cmd = sub.add_parser(name, help=help_, description=help_)
        if name == selected:
            importlib.import_module(module).cli_args(cmd)
    for name, (_m, _f, help_) in FOREIGN.items():
        sub.add_parser(name, help=help_, add_help=False)
    return p


def _run(name: str, call, debug: bool) -> int:
    try:
        rc = call()
        return rc if isinstance(rc, int) else 0
    except KeyboardInterrupt:
        print(f"sing {name}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - mapped by type; a bug keeps its traceback
        code = exit_code(exc)
        if code is None or debug:
            raise
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"sing {name}: {LABELS.get(code, 'error')}: {msg}", file=sys.stderr)
        return code


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in FOREIGN:
        module, fn, _ = FOREIGN[argv[0]]
        return _run(argv[0], lambda: getattr(importlib.import_module(module), fn)(argv[1:]), "--debug" in argv)
    args = parser(next((a for a in argv if a in COMMANDS), None)).parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    from pipelines.console import set_verbose

    set_verbose(args.verbose)
    module = importlib.import_module(COMMANDS[args.command][0])
    timeline.mark("imports")  # what a run's fixed cost starts with (pipelines.timeline)
    return _run(args.command, lambda: module.cli_run(args), args.debug)


def entry() -> None:
    """The `sing` console script (and `python -m pipelines.cli`): main(), then a quick exit.
    Everything a run writes is durable before main returns (atomic renames), so after Ray's
    own shutdown the interpreter's teardown (module finalizers of torch and friends, Ray's
    atexit path) is skipped: measured on the 2-core CPU, a 100-image audit's process ended
    2.2 s after its last row, and 0.5 s with this exit. In-process callers (tests) use main()."""
    import os

    try:
        rc = main()
    except SystemExit as e:  # argparse: --help (0) and usage errors (2)
        rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
    try:
        if "ray" in sys.modules:
            import ray

            if ray.is_initialized():
                ray.shutdown()  # Ray's processes and spilled objects cleaned up as usual
    finally:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)


if __name__ == "__main__":
    entry()
