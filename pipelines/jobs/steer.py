"""`sing steer`: null-space steering of every image of one class toward a text prompt
(paper Table 1) as a Ray Data job.

    shards -> read (only samples of the requested class are decoded) -> SteerActor, which
           writes each shard -> OUT/steer/model=<slug>/run=<run_id>/<shard>.parquet

Per image the actor computes f, then (sing_ops.steer, float64) the unit null direction of
the cosine gradient toward the prompt's CLIP text embedding and the exact step eps giving
the requested Image Score (or a fixed eps), and reports IS reached, AS toward the target
(angle(T(f), t) - angle(T(f_eps), t)) and the logit drift max |W f_eps - W f| (~0).
Images of other classes are skipped (not decoded, not errors); read/decode/model problems
go to the `errors` table. Each shard's steer file is written atomically, after its errors
file; a shard whose steer file exists is done, so rerunning the command resumes.
"""
from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pipelines.errors import BadInput
from pipelines.io.layout import count_rows, done_shards, shard_file
from pipelines.jobs import spine
from pipelines.stages.collect import ShardTally, Writer
from pipelines.options import (OutputOptions, PrecisionOptions, RankOptions, StreamOptions, add_arguments, check,
                               from_namespace, opt)

log = logging.getLogger("sing.steer")

STEER_SCHEMA = pa.schema([
    ("key", pa.string()), ("shard", pa.string()), ("label", pa.int32()), ("target", pa.string()),
    ("eps", pa.float32()), ("is_deg", pa.float32()), ("as_deg", pa.float32()), ("abs_as_deg", pa.float32()),
    ("logit_drift", pa.float32()), ("reachable", pa.bool_()),
])


class SteerConfigError(BadInput):
    """Bad `sing steer` input (exit 2)."""


@dataclass
class SteerOptions(PrecisionOptions, RankOptions, StreamOptions, OutputOptions):
    model: str = opt(help="classifier MODEL string")
    translator: str = opt(help="translator file (local or URL)", identity=False)  # keyed by its content
    # keyed by the class index it resolves to
    target_class: str = opt(help="the class whose images are steered: name, alias or index", flag="--class",
                            metavar="NAME_OR_INDEX", identity=False)
    prompt: str = opt(help='target text, e.g. "an image of a jellyfish" (embedded raw, no template); with '
                           "--prompt-embeddings the name of a row")
    is_deg: float | None = opt(None, "target Image Score in degrees, in (0, 180) (paper: 40)")
    eps: float | None = opt(None, "fixed step length along the unit null direction instead of --is-deg")
    prompt_embeddings: str | None = opt(None, "take the target from this text-embedding Parquet (`sing embed-text`, "
                                              "`sing import embeddings`): no CLIP model is loaded", identity=False)


def pick_row(names: list[str], wanted: str, path) -> int:
    """Index of the row named `wanted` (exact, else the one case-insensitive match)."""
    import difflib

    if wanted in names:
        if names.count(wanted) > 1:
            raise SteerConfigError(f"--prompt-embeddings {path} has several rows named {wanted!r}")
        return names.index(wanted)
    low = [i for i, n in enumerate(names) if n.lower() == wanted.lower()]
    if len(low) == 1:
        return low[0]
    close = difflib.get_close_matches(wanted, names, n=5, cutoff=0.5)
    hint = f"; close: {close}" if close else ""
    raise SteerConfigError(f"--prompt-embeddings {path} has no row named {wanted!r} ({len(names)} rows{hint})")


def target_embedding(prompt: str, prompt_embeddings, clip_id: str, out_dim: int, tr_clip: dict | None = None,
                     what: str = "the translator") -> tuple[np.ndarray, dict]:
    """The target text embedding and a record of where it came from (manifest). tr_clip: the
    CLIP identity the translator records; embeddings of another CLIP are refused."""
    if prompt_embeddings:
        from pipelines.models.text import embeddings_info, load_embeddings

        names, emb, meta = load_embeddings(prompt_embeddings, clip_model=tr_clip or clip_id)
        i = pick_row(names, prompt, prompt_embeddings)
        info = {"source": "embeddings", "row": i, "name": names[i],
                **embeddings_info(prompt_embeddings, names, meta)}
        text = emb[i]
    else:
        from pipelines.models.clip import load_clip
        from pipelines.models.clip_source import check_same_clip
        from pipelines.models.text import embed_texts

        clip = load_clip(clip_id)
        check_same_clip(tr_clip, clip.identity, what, "refit it (`sing fit-translator`) with this CLIP")
        text = embed_texts(clip, [prompt], ["{}"])[0]
        info = {"source": "clip", "clip_model": clip_id, "clip_identity": clip.identity,
                "templates": "raw prompt (no template)"}
    if text.shape[0] != out_dim:
        raise SteerConfigError(f"the target text embedding is {text.shape[0]}-d but the translator outputs "
                               f"{out_dim}-d")
    if not np.isfinite(text).all() or not np.linalg.norm(text) > 0:
        raise SteerConfigError("the target text embedding is zero or not finite: angles are undefined")
    return text, info


def check_step(is_deg, eps) -> None:
    if (is_deg is None) == (eps is None):
        raise SteerConfigError("give exactly one of --is-deg (target Image Score, degrees) or --eps (fixed step)"
                               + (", not both" if is_deg is not None else ""))
    if is_deg is not None and not (math.isfinite(is_deg) and 0 < is_deg < 180):
        raise SteerConfigError(f"--is-deg must be strictly between 0 and 180 degrees, got {is_deg}")
    if eps is not None and not (math.isfinite(eps) and eps > 0):
        raise SteerConfigError(f"--eps must be a positive finite step length, got {eps}")


def _f32(a) -> pa.Array:
    a = np.asarray(a, dtype=np.float32)
    return pa.array(a, mask=np.isnan(a), type=pa.float32())


def steer_table(cols: dict, prefix: str, shard: str, target: str) -> tuple[pa.Table, np.ndarray]:
    """Steer rows of one shard (selected, ok, no model error) -> (table, mask of model errors)."""
    p = prefix
    model_err = (cols["status"] == "ok") & (cols[f"{p}/error"] != "")
    good = (cols["status"] == "ok") & cols[f"{p}/selected"].astype(bool) & ~model_err
    n = int(good.sum())
    as_deg = cols[f"{p}/as_deg"][good]
    table = pa.table({
        "key": pa.array(cols["key"][good].tolist(), pa.string()),
        "shard": pa.array([shard] * n, pa.string()),
        "label": pa.array(cols["label"][good].astype(np.int32), pa.int32()),
        "target": pa.array([target] * n, pa.string()),
        "eps": _f32(cols[f"{p}/eps"][good]),
        "is_deg": _f32(cols[f"{p}/is_deg"][good]),
        "as_deg": _f32(as_deg),
        "abs_as_deg": _f32(np.abs(as_deg)),
        "logit_drift": _f32(cols[f"{p}/logit_drift"][good]),
        "reachable": pa.array(cols[f"{p}/reachable"][good].astype(bool), pa.bool_()),
    }, schema=STEER_SCHEMA)
    return table, model_err


def prepare(cfg: SteerOptions):
    """Every check that can fail on the user's input, before any work (exit 2)."""
    from sing_ops import HeadDecomposition

    from pipelines.models.class_names import resolve_class
    from pipelines.models.classifiers import load_classifier
    from pipelines.io.remote import local_copy
    from pipelines.models.translator_file import load_translator

    check_step(cfg.is_deg, cfg.eps)
    if not cfg.prompt or not cfg.prompt.strip():
        raise SteerConfigError("--prompt must be a non-empty text, e.g. 'an image of a jellyfish'")
    shards = spine.expand(cfg.shards)
    clf = load_classifier(cfg.model)
    dec = HeadDecomposition.from_weight(clf.head_weight, atol=cfg.rank_atol, rtol=cfg.rank_rtol)
    if dec.null_dim == 0:
        raise SteerConfigError(f"{clf.model_id} has no null space (rank {dec.rank} = {clf.num_features} features, "
                               f"{clf.num_classes} classes): null-space steering is undefined")
    class_index = resolve_class(cfg.target_class, clf.class_names)
    tr = load_translator(local_copy(cfg.translator), in_dim=clf.num_features, source_model=clf.model_id)
    clip_id = tr.metadata.get("clip_model")
    if not clip_id:
        raise SteerConfigError(f"translator {cfg.translator} does not name its CLIP model (metadata 'clip_model')")
    text, text_info = target_embedding(cfg.prompt.strip(), cfg.prompt_embeddings, clip_id, tr.out_dim,
                                       tr.metadata.get("clip_identity"), f"translator {cfg.translator}")
    return shards, clf, dec, class_index, tr, clip_id, text, text_info


def steer_files(cols: dict, shard: str, out: str, slug: str, run_id: str, target: str) -> list[tuple]:
    """One shard's steer files (built and written by the steer actor: stages.shard_writer): its
    errors, then its steer table (the marker)."""
    from pipelines.stages.audit_tables import error_table

    table, model_err = steer_table(cols, "s", shard, target)
    errors = error_table(cols, shard, np.where(model_err, cols["s/error"], ""))
    return [("errors", shard_file(out, "errors", slug, run_id, shard), errors),
            ("steer", shard_file(out, "steer", slug, run_id, shard), table)]


def run_steer(cfg: SteerOptions) -> dict:
    from pipelines.io.manifest import file_sha256
    from pipelines.io.remote import local_copy
    from pipelines.stages.steer_actor import SteerActor

    check(cfg)
    shards, clf, dec, class_index, tr, clip_id, text, text_info = prepare(cfg)
    target = cfg.prompt.strip()
    resolved = {"model": clf.model_id, "sha": clf.checkpoint_sha256, "translator": tr.id, "class": class_index,
                **({"prompt_embeddings": text_info["sha256"]} if cfg.prompt_embeddings else {})}
    man = {"precision": cfg.precision,
           "models": [{"model_id": clf.model_id, "slug": clf.slug, "checkpoint_sha256": clf.checkpoint_sha256,
                       "num_classes": clf.num_classes, **dec.summary()}],
           "translator": {"path": str(cfg.translator), "id": tr.id, "sha256": file_sha256(local_copy(cfg.translator)),
                          "clip_model": clip_id, "clip_identity": tr.metadata.get("clip_identity"),
                          "lambda": tr.metadata.get("lambda")},
           "target": {"prompt": target, "class_index": class_index, "class_name": clf.class_names[class_index],
                      "is_deg": cfg.is_deg, "eps": cfg.eps, "templates": "raw prompt (no template)"},
           "target_text": text_info}
    plan = spine.plan("steer", cfg, resolved, lambda run: done_shards(cfg.out, "steer", clf.slug, run), man, shards)
    log.info("steer: class %d (%s) -> %r", class_index, clf.class_names[class_index], target)
    tally = ShardTally([Writer("s", clf.slug)], total=len(plan.todo), what="steer: shard")
    if plan.todo:
        from pipelines.stages.shard_writer import WriterSpec

        writer = WriterSpec(functools.partial(steer_files, out=cfg.out, slug=clf.slug, run_id=plan.run_id,
                                              target=target), frozenset(plan.done))
        actor = spine.ActorSpec(SteerActor, dict(
            prefix="s", model_spec=cfg.model, translator_path=str(cfg.translator), target_text=text,
            class_index=class_index, eps=cfg.eps, is_deg=cfg.is_deg, rank_atol=cfg.rank_atol, rank_rtol=cfg.rank_rtol,
            view=clf.preprocess, precision=cfg.precision, writer=writer))

        def build(todo):
            return spine.stream(todo, cfg, [clf.preprocess], [actor], spine.ActorPlan.resolve(cfg),
                                [f"img:{clf.preprocess.view_key}"], {"only_label": class_index})

        spine.run(plan, cfg, "the steer stream", build, ["s"], tally.batch, tally.shard)
    n_rows = count_rows(cfg.out, "steer", clf.slug, plan.run_id)
    if n_rows == 0:
        log.warning("no image of class %d (%s) in the shards", class_index, clf.class_names[class_index])
    written = len(tally.done_shards)
    return spine.finish(plan, stage_seconds={k: round(v, 3) for k, v in tally.stage_seconds.items()},
                        shards={**plan.manifest["shards"], "written": written},
                        counts={"images": n_rows, "errors": count_rows(cfg.out, "errors", clf.slug, plan.run_id),
                                "shards_done": len(plan.done), "shards_skipped": plan.manifest["shards"]["skipped_done"]})


def cli_args(p) -> None:
    from pipelines.models.spec import MODEL_EPILOG

    add_arguments(p, SteerOptions)
    p.epilog = MODEL_EPILOG


def cli_run(a) -> int:
    from pipelines.io.remote import is_url

    man = run_steer(from_namespace(SteerOptions, a, progress=not a.quiet))
    t = man["target"]
    print(f"steer run {man['run_id']}: class {t['class_index']} ({t['class_name']}) -> {t['prompt']!r}: "
          f"{man['counts']['images']} images, {man['counts']['errors']} errors")
    if man["counts"]["images"] and not is_url(a.out):  # the query engine reads local results only
        from queries import format_frame, steer_summary

        print(format_frame(steer_summary(a.out, run=man["run_id"], model=man["models"][0]["slug"])))
    print(f"manifest: {a.out.rstrip('/')}/runs/{man['run_id']}.json")
    return 0
