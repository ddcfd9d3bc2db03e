"""`sing leaderboard` end to end, on the jobs' own spine (no copy of a job skeleton here):

    plan      every model described before any work (plan.py); the ones that cannot take part
              become `skipped` rows saying why
    texts     the class prompts (and concepts) embedded once with the CLIP's text tower
    clip      the fit images' CLIP embeddings, once for every model (`sing embed-images`)
    passes    per decode pass of K models of one eval transform: fit their translators from
              the CLIP cache (`sing fit-translator --clip-embeddings`), audit them on the
              evaluation shards (`sing audit`, several models per pass), one row each
    manifest  OUT/leaderboard.json

Resumable per model: a model whose row says ok is done and costs nothing on a rerun; a pass
cut short is redone (its fit starts over, its audit resumes by shard); models added later
are the only ones computed. A pass that fails is retried model by model, so one model's
failure is its own `failed` row.
"""
from __future__ import annotations

import logging
import time

from pipelines.errors import BadInput, RunFailed
from pipelines.io.layout import file_exists, join, write_json_atomic
from pipelines.io.manifest import code_version, utc_now
from pipelines.jobs.leaderboard import summary
from pipelines.jobs.leaderboard.options import LeaderboardOptions, sub_options

log = logging.getLogger("sing.leaderboard")


def _dirs(opts: LeaderboardOptions) -> dict[str, str]:
    """OUT's parts; OUT may be an fsspec URL (on a cluster the actors of every node write there)."""
    return {name: join(opts.out, name) for name in ("clip", "translators", "results", "text")}


def _vocabulary(opts: LeaderboardOptions) -> str | None:
    if opts.concepts or not opts.top_concepts:
        return opts.concepts
    from pipelines.models.text import DEFAULT_VOCABULARY

    return str(DEFAULT_VOCABULARY)


def _texts(opts: LeaderboardOptions, dirs: dict) -> tuple[str, str | None]:
    """(class text Parquet, concept Parquet or None), computed once with the CLIP's text tower
    into OUT/text/ unless given (a rerun reads them back: the same embeddings for every pass)."""
    from pipelines.models.clip import TEMPLATES
    from pipelines.models.text import CONCEPT_TEMPLATES, concept_names, embed_texts, is_embeddings_file, save_embeddings

    vocab = _vocabulary(opts)
    class_file = opts.class_text or join(dirs["text"], f"classes_{opts.templates}.parquet")
    concept_file = vocab if (vocab is None or is_embeddings_file(vocab)) else join(dirs["text"], "concepts.parquet")
    todo = [p for p in (class_file, concept_file) if p and p.startswith(dirs["text"]) and not file_exists(p)]
    if todo:
        from pipelines.models.clip import load_clip
        from pipelines.models.imagenet_classes import imagenet_class_names

        clip = load_clip(opts.clip)
        if class_file in todo:
            names = list(imagenet_class_names())
            save_embeddings(class_file, names, embed_texts(clip, names, TEMPLATES[opts.templates]), clip.identity,
                            TEMPLATES[opts.templates])
        if concept_file in todo:
            names = concept_names(vocab)
            save_embeddings(concept_file, names, embed_texts(clip, names, CONCEPT_TEMPLATES), clip.identity,
                            CONCEPT_TEMPLATES)
    return class_file, concept_file


def _clip_cache(opts: LeaderboardOptions, dirs: dict) -> dict:
    from pipelines.jobs.embed_images import EmbedImagesOptions, embed_images

    shards = list(opts.fit_shards) + list(opts.heldout_shards or [])
    return embed_images(sub_options(EmbedImagesOptions, opts, clip=opts.clip, shards=shards, out=dirs["clip"]))


def _board_id(opts: LeaderboardOptions, cache_manifest: dict) -> str:
    from pipelines.jobs import spine
    from pipelines.io.shards import expand_shards, shard_name

    names = lambda globs: [shard_name(s) for s in expand_shards(globs)] if globs else None  # noqa: E731
    return spine.run_id_for("board", opts, {"fit_shards": names(opts.fit_shards), "shards": names(opts.shards),
                                            "heldout_shards": names(opts.heldout_shards),
                                            "clip": (cache_manifest.get("clip_identity") or {}).get("id")})


def _run_pass(opts, dirs, cands, board: str, texts: tuple[str, str | None]) -> None:
    """Fit and audit one pass's models; each gets its ok row."""
    from pipelines.jobs.audit import AuditOptions, run_audit
    from pipelines.jobs.fit import FitOptions, run_fits

    t0 = time.perf_counter()
    specs = [c.model_string for c in cands]
    outs = [join(dirs["translators"], f"{c.slug}.safetensors") for c in cands]
    reports = run_fits(sub_options(FitOptions, opts, models=specs, outs=outs, clip=None, clip_embeddings=dirs["clip"],
                                   shards=list(opts.fit_shards), class_text=texts[0]))
    man = run_audit(sub_options(AuditOptions, opts, models=specs, translators=outs, shards=list(opts.shards),
                                out=dirs["results"], class_text=texts[0], concepts=texts[1]))
    seconds = (time.perf_counter() - t0) / len(cands)  # the pass's time, shared by its models
    for c, rep in zip(cands, reports):
        row = {**summary.planned_fields(c), "status": "ok", "reason": "", "translator_id": rep["translator_id"],
               "heldout_cosine": rep["heldout"].get("mean_cosine"), "heldout_r2": rep["heldout"].get("r2"),
               "audit_run": man["run_id"], "seconds": round(seconds, 3)}
        row.update(summary.audit_numbers(dirs["results"], c.slug, man["run_id"], opts.bootstrap_resamples,
                                         opts.top_concepts))
        summary.write_row(dirs["results"], c.slug, board, row)
        log.info("leaderboard: %s done (median |AS| %s, median IS %s)", c.model_string, row["median_abs_as"],
                 row["median_is"])


def _pass_or_each(opts, dirs, cands, board, texts) -> list[str]:
    """_run_pass; when it fails, each model alone, so one model's failure is its own row.
    Returns the failures' reasons."""
    try:
        _run_pass(opts, dirs, cands, board, texts)
        return []
    except (BadInput, RunFailed, ValueError, RuntimeError) as exc:
        if len(cands) == 1:
            reason = f"{type(exc).__name__}: {exc}"[:400]
            log.warning("leaderboard: %s failed: %s", cands[0].model_string, reason)
            summary.write_row(dirs["results"], cands[0].slug, board,
                              {**summary.planned_fields(cands[0]), "status": "failed", "reason": reason})
            return [reason]
        log.warning("leaderboard: a pass of %d models failed (%s); running them one by one", len(cands), exc)
    return [r for c in cands for r in _pass_or_each(opts, dirs, [c], board, texts)]


def run_leaderboard(opts: LeaderboardOptions) -> dict:
    from pipelines.jobs.leaderboard.plan import passes, plan_models
    from pipelines.jobs.leaderboard.selection import expand
    from pipelines.options import check

    check(opts)
    started, t0 = utc_now(), time.perf_counter()
    dirs = _dirs(opts)
    cands = plan_models(expand(opts.models))
    texts = _texts(opts, dirs)
    cache = _clip_cache(opts, dirs)
    board = _board_id(opts, cache)
    status = {c.slug: summary.read_status(dirs["results"], c.slug, board) for c in cands}
    for c in cands:
        if not c.runnable:  # planning may judge otherwise next time (weights brought in): rewritten each run
            summary.write_row(dirs["results"], c.slug, board,
                              {**summary.planned_fields(c), "status": "skipped", "reason": c.reason})
    todo = [c for c in cands if c.runnable and status[c.slug] != "ok"]
    failures = []
    for group in passes(todo, opts.models_per_pass):
        failures += _pass_or_each(opts, dirs, group, board, texts)
    final = {c.slug: summary.read_status(dirs["results"], c.slug, board) for c in cands}
    man = {"kind": "leaderboard", "board_id": board, "started_at": started, "finished_at": utc_now(),
           "code_version": code_version(), "clip": cache.get("clip_identity"), "models": len(cands),
           "counts": {s: sum(v == s for v in final.values()) for s in ("ok", "skipped", "failed")},
           "done_before": sorted(s for s, v in status.items() if v == "ok"),
           "computed": sorted(c.slug for c in todo if final[c.slug] == "ok"),
           # the CLIP image tower ran once per fit image over every run, whatever the number of models
           "clip_forwards": cache.get("clip_forwards"), "fit_images": cache.get("images"),
           "class_text": texts[0], "concepts": texts[1], "results": dirs["results"],
           "wall_seconds": round(time.perf_counter() - t0, 3)}
    write_json_atomic(man, join(opts.out, "leaderboard.json"))
    if failures:
        log.warning("leaderboard: %d model(s) failed; their rows say why", len(failures))
    return man
