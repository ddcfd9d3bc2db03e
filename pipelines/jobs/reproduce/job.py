"""`sing reproduce`: the paper's two headline experiments beside the paper's numbers.

    sing reproduce --shards '/data/in1k/val/*.tar' --out repro/ --translators official/translators \
        --class-text text/in1k_official.parquet --prompt-embeddings text/jellyfish.parquet

(a) the IS/|AS| sweep: one audit per model (or --models-per-pass models per decode pass),
    summarised by the `model_summary` query (both ratio definitions), beside the supplement's
    Fig. 12b (the 13-model sweep; the paper's Fig. 4 is the class-level violins);
(b) Table 1: images of class "sports car" steered through the null space toward "an image
    of a jellyfish" to IS = 40 deg (`sing steer`), |AS| toward the prompt from the
    `steer_summary` query, beside Table 1.

Models: `paper` (all 13 zoo entries), zoo names (`resnet`, or the paper's label `ResNet50`),
or NAME=MODEL to run another MODEL under a name (tests run random tiny models under the
paper's names; a name outside the zoo has no paper value). Translators: --translators DIR in
the official layout (DIR/<name>/linear/best.pt + metadata.yaml, imported on the fly into
OUT/translators/) or project translator files DIR/<name>.safetensors. A model without a
usable translator, or whose run fails, is reported with the reason; the others go on.

Writes OUT/reproduction.md, OUT/reproduction.html (self-contained, inline figure) and
OUT/reproduction.json (the same rows); results under OUT/results (rerunning resumes: run ids
are derived from the inputs), imported translators under OUT/translators.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipelines.errors import BadInput
from pipelines.options import PrecisionOptions, RankOptions, add_arguments, from_namespace, opt

log = logging.getLogger("sing.reproduce")

PAPER_NUMBERS = Path(__file__).resolve().parent / "paper_numbers.yaml"


class ReproduceError(BadInput):
    """Bad `sing reproduce` input (exit 2)."""


@functools.lru_cache(maxsize=1)
def paper_numbers() -> dict:
    import yaml

    return yaml.safe_load(PAPER_NUMBERS.read_text(encoding="utf-8"))


# ----------------------------------------------------------------------------- models


@dataclass(frozen=True)
class Entry:
    name: str  # zoo name (or the user's name for a model outside the zoo)
    model: str  # the MODEL string that is run
    label: str  # how the paper names it
    in_zoo: bool
    overridden: bool  # MODEL differs from the zoo's exact MODEL string


def parse_models(items: list[str]) -> list[Entry]:
    """`paper` | NAME | paper label | NAME=MODEL, in the order given (duplicates refused)."""
    from pipelines.models.spec import parse_model_spec
    from pipelines.models.zoo import BY_NAME, PAPER_MODELS

    by_label = {m.paper_label.lower(): m for m in PAPER_MODELS}
    out: list[Entry] = []
    for item in items or ["paper"]:
        item = item.strip()
        if item.lower() == "paper":
            out += [Entry(m.name, m.model, m.paper_label, True, False) for m in PAPER_MODELS]
            continue
        name, eq, model = item.partition("=")
        name, model = name.strip(), model.strip()
        z = BY_NAME.get(name.lower()) or by_label.get(name.lower())
        if eq:
            if not name or not model:
                raise ReproduceError(f"--models {item!r}: expected NAME=MODEL")
            parse_model_spec(model)  # a bad MODEL string is an input error now, not a skipped row later
            out.append(Entry(z.name, model, z.paper_label, True, model != z.model) if z
                       else Entry(name, model, name, False, True))
        elif z is None:
            raise ReproduceError(f"--models: no paper model {name!r}; one of {', '.join(BY_NAME)} "
                                 "(or NAME=MODEL for another model)")
        else:
            out.append(Entry(z.name, z.model, z.paper_label, True, False))
    names = [e.name for e in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ReproduceError(f"--models names {dup} more than once")
    return out


# ----------------------------------------------------------------------------- translators


def find_translator(e: Entry, tdir: str | None, import_dir: Path) -> tuple[str | None, str | None, dict]:
    """(translator path, None, info) or (None, reason it is skipped, info)."""
    from pipelines.models.spec import parse_model_spec
    from pipelines.models.official import import_translator
    from pipelines.models.translator_file import load_translator

    if not tdir:
        return None, "no translator (give --translators DIR)", {}
    root = Path(tdir)
    official = root / e.name / "linear" / "best.pt"
    project = root / f"{e.name}.safetensors"
    if official.is_file():
        try:
            info = import_translator(official, e.model, import_dir / f"{e.name}.safetensors", expect_name=e.name)
        except (ValueError, FileNotFoundError, RuntimeError) as exc:
            return None, f"official translator not imported: {exc}", {"source": str(official)}
        return info["path"], None, {"source": str(official), "kind": "official (imported)",
                                    "sha256": info["source_sha256"], "id": info["id"]}
    if project.is_file():
        try:
            tr = load_translator(project, source_model=parse_model_spec(e.model).model_id)
        except (ValueError, FileNotFoundError) as exc:
            return None, f"translator not usable: {exc}", {"source": str(project)}
        return str(project), None, {"source": str(project), "kind": "project", "id": tr.id}
    others = sorted(p.name for p in (root / e.name).iterdir() if p.is_dir()) if (root / e.name).is_dir() else []
    if others:
        return None, (f"only non-linear official translators ({', '.join(others)}) in {root / e.name}: not "
                      "affine maps"), {}
    return None, f"no translator in {root} (looked for {e.name}/linear/best.pt and {e.name}.safetensors)", {}


# ----------------------------------------------------------------------------- the run


@dataclass
class ReproduceOptions(PrecisionOptions, RankOptions):
    shards: list[str] = opt(help="images for the IS/|AS| sweep (glob(s), brace ranges or URLs)")
    out: str = opt(help="output directory")
    models: list[str] = opt(["paper"], "paper (all 13, default) | zoo names (resnet, dinovit1, ...) | NAME=MODEL to "
                                       "run another MODEL under a name (e.g. resnet=timm:test_resnet@random"
                                       "?num_classes=1000)", metavar="NAME")
    translators: str | None = opt(None, "official layout DIR/<name>/linear/best.pt (imported on the fly) or sing "
                                        "translators DIR/<name>.safetensors", metavar="DIR")
    class_text: str | None = opt(None, "class prompt embeddings (.parquet, e.g. the imported official ImageNet npz), "
                                       "matched by index (default: CLIP prompts 'an image of a {}.')")
    templates: str = opt("single", "CLIP prompt templates without --class-text: single | ensemble")
    steer_shards: list[str] | None = opt(None, "images for Table 1 (default: --shards); only the class 'sports car' "
                                               "is read")
    prompt: str | None = opt(None, "Table 1 target text (default 'an image of a jellyfish'); with "
                                   "--prompt-embeddings the row name")
    prompt_embeddings: str | None = opt(None, "take the target embedding from this text-embedding Parquet instead "
                                              "of CLIP", metavar="PARQUET")
    models_per_pass: int = opt(1, "models audited per decode pass (default 1: each model alone, a failure stays "
                                  "its own)")
    batch_size: int = opt(64, "images per model batch")
    device: str | None = opt(None, "cpu or cuda (default: cuda when available)")
    progress: bool = opt(True, "progress bars", cli=False)


@dataclass
class ModelResult:
    entry: Entry
    translator: str | None = None
    translator_info: dict = field(default_factory=dict)
    skipped: str | None = None  # before any work: no translator, ...
    audit: dict | None = None  # model_summary row + run id
    audit_error: str | None = None
    steer: dict | None = None  # steer_summary row + run id
    steer_error: str | None = None
    steer_skipped: str | None = None


def _check(cfg: ReproduceOptions) -> None:
    from pipelines.io.shards import expand_shards

    if cfg.models_per_pass < 1:
        raise ReproduceError(f"--models-per-pass must be >= 1, got {cfg.models_per_pass}")
    expand_shards(cfg.shards)  # missing shards: exit 2 before any work
    if cfg.steer_shards:
        expand_shards(cfg.steer_shards)
    for what, p in (("--class-text", cfg.class_text), ("--prompt-embeddings", cfg.prompt_embeddings)):
        if p and not Path(p).is_file():
            raise FileNotFoundError(f"{what} file not found: {p}")
    if cfg.prompt_embeddings:  # a missing row would otherwise skip every model's Table 1 run
        from pipelines.jobs.steer import pick_row
        from pipelines.models.text import load_embeddings

        pick_row(load_embeddings(cfg.prompt_embeddings)[0], (cfg.prompt or paper_numbers()["table1"]["protocol"]
                                                             ["prompt"]).strip(), cfg.prompt_embeddings)
    if cfg.translators and not Path(cfg.translators).is_dir():
        raise FileNotFoundError(f"--translators directory not found: {cfg.translators}")


def _first_row(df) -> dict | None:
    return df.row(0, named=True) if df.height else None


def run_reproduce(cfg: ReproduceOptions) -> dict:
    from queries import model_summary, steer_summary

    from pipelines.jobs.audit import AuditOptions, run_audit
    from pipelines.io.manifest import code_version, utc_now
    from pipelines.jobs.steer import SteerOptions, SteerConfigError, run_steer

    entries = parse_models(cfg.models)
    _check(cfg)
    protocol = paper_numbers()["table1"]["protocol"]
    prompt = (cfg.prompt or protocol["prompt"]).strip()
    out = Path(cfg.out)
    results = out / "results"
    started = utc_now()
    res = [ModelResult(e) for e in entries]
    for r in res:
        r.translator, r.skipped, r.translator_info = find_translator(r.entry, cfg.translators, out / "translators")
        if r.skipped:
            log.warning("%s: skipped: %s", r.entry.name, r.skipped)
    runnable = [r for r in res if not r.skipped]

    # (a) the sweep: audits, models_per_pass models per decode pass
    for i in range(0, len(runnable), cfg.models_per_pass):
        group = runnable[i:i + cfg.models_per_pass]
        try:
            man = run_audit(AuditOptions(
                models=[r.entry.model for r in group], translators=[r.translator for r in group],
                shards=cfg.shards, out=str(results), class_text=cfg.class_text, templates=cfg.templates,
                batch_size=cfg.batch_size, rank_atol=cfg.rank_atol, rank_rtol=cfg.rank_rtol, device=cfg.device,
                precision=cfg.precision, progress=cfg.progress, extra={"reproduce": [r.entry.name for r in group]}))
            summaries = [_first_row(model_summary(str(results), model=m["slug"], run=man["run_id"]))
                         if man["counts"][m["slug"]]["images"] else None  # the query refuses an empty filter
                         for m in man["models"]]
        except Exception as exc:  # noqa: BLE001 - one model's failure must not stop the others
            log.error("audit of %s failed: %s", [r.entry.name for r in group], exc)
            for r in group:
                r.audit_error = f"{type(exc).__name__}: {exc}"
            continue
        for r, m, row in zip(group, man["models"], summaries):
            r.audit = {**(row or {}), "run": man["run_id"], "slug": m["slug"], "model_id": m["model_id"],
                       "null_dim": m["null_dim"], "class_text": _class_text_note(m.get("class_text") or {})}

    # (b) Table 1: steering one class toward the prompt at IS = 40 deg
    for r in runnable:
        try:
            man = run_steer(SteerOptions(
                model=r.entry.model, translator=r.translator, shards=cfg.steer_shards or cfg.shards,
                out=str(results), target_class=protocol["class"], prompt=prompt,
                prompt_embeddings=cfg.prompt_embeddings, is_deg=float(protocol["is_deg"]),
                batch_size=cfg.batch_size, rank_atol=cfg.rank_atol, rank_rtol=cfg.rank_rtol, device=cfg.device,
                precision=cfg.precision, progress=cfg.progress))
            slug = man["models"][0]["slug"]
            row = _first_row(steer_summary(str(results), model=slug, run=man["run_id"])) \
                if man["counts"]["images"] else None
        except SteerConfigError as exc:  # e.g. no null space: steering is undefined, not a failure
            r.steer_skipped = str(exc)
            continue
        except Exception as exc:  # noqa: BLE001
            log.error("steering %s failed: %s", r.entry.name, exc)
            r.steer_error = f"{type(exc).__name__}: {exc}"
            continue
        r.steer = {**(row or {"n": 0, "n_reachable": 0}), "run": man["run_id"], "slug": slug,
                   "class_index": man["target"]["class_index"], "target_text": man.get("target_text")}

    from pipelines.jobs.reproduce.report import build_tables, write_reports

    report = build_tables(res, cfg, prompt, protocol, paper_numbers())
    report.update({"started_at": started, "finished_at": utc_now(), "code_version": code_version(),
                   "config": {k: v for k, v in asdict(cfg).items()}, "results": str(results)})
    write_reports(out, report)
    return report


def _class_text_note(info: dict) -> str:
    """Which class text an audit scored against, in words (the report's class-text column)."""
    if "computed_with" in info:
        from pipelines.models.clip import TEMPLATES

        act = (info.get("clip_identity") or {}).get("activation")
        t = info.get("templates")
        texts = " | ".join(TEMPLATES.get(t, [])).replace("{}", "<class>")
        return f"CLIP {info['computed_with']}{f' ({act})' if act else ''}, templates {t}: {texts!r}"
    prov = info.get("provenance") or {}
    mean = " = the mean of five prompts, as the official code" if prov.get("prompt") == "mean" else ""
    what = f"official npz, prompt {prov['prompt']!r}{mean}" if prov.get("prompt") else (info.get("templates") or "file")
    return f"{info.get('path')} ({what}; matched by index, {info.get('names_differ', 0)} names spelled differently)"


def exit_code(rep: dict) -> int:
    """0: every model with a translator ran; 1: some run failed (rerun resumes); 2: nothing could run."""
    rows = rep["is_as_ratio"] + rep["table1"]
    if any(r["status"].startswith("failed") for r in rows):
        return 1
    if all(r["status"].startswith("skipped") for r in rep["is_as_ratio"]):
        return 2
    return 0


def cli_args(p) -> None:
    p.description = ("Writes OUT/reproduction.md, .html and .json; results under OUT/results. Exit codes: 0 done, "
                     "1 a model's run failed (rerun resumes), 2 bad input or no model could run.")
    add_arguments(p, ReproduceOptions)


def cli_run(a) -> int:
    rep = run_reproduce(from_namespace(ReproduceOptions, a, progress=not a.quiet))
    for title, rows, key in (("IS/|AS|", rep["is_as_ratio"], "ratio_of_means"),
                             ("Table 1 |AS|", rep["table1"], "mean_abs_as")):
        print(title)
        for r in rows:
            v = r[key]
            print(f"  {r['model']:<14s} {'-' if v is None else f'{v:.2f}':>8s}  paper "
                  f"{'-' if r['paper'] is None else r['paper']}  {r['status']}")
    print(f"report: {a.out.rstrip('/')}/reproduction.md (and .html, .json)")
    return exit_code(rep)
