"""`sing audit`: webdataset shards -> decode once -> classifier actors -> per-shard Parquet.

Everything that can be checked is checked on the driver before Ray starts any work:
shards exist, model names resolve, each translator fits its model (dims and source
model), text embeddings fit the translator's CLIP space.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field

import numpy as np

from pipelines.errors import BadInput
from pipelines.io.layout import count_rows, done_shards
from pipelines import timeline
from pipelines.jobs import spine
from pipelines.models.compiled import COMPILE_HELP, COMPILE_MODES
from pipelines.options import (ActorDecode, Decode, DecodeOptions, OutputOptions, PrecisionOptions, RankOptions, StreamOptions,
                               _templates, add_arguments, check, from_namespace, opt)
from pipelines.stages.collect import ShardTally, Writer

log = logging.getLogger("sing.audit")


@dataclass
class AuditOptions(PrecisionOptions, RankOptions, DecodeOptions, StreamOptions, OutputOptions):
    models: list[str] = opt([], "classifier MODEL string; repeat to audit several models in one decode",
                            flag="--model", append=True, required=True, yaml=False, metavar="MODEL")
    translators: list[str] = opt([], "translator file (local or URL): one, or one per --model", flag="--translator",
                                 append=True, required=True, yaml=False, metavar="PATH")
    translator_match: str = opt("exact", "exact: translator fitted on this very model id; arch: on any checkpoint of "
                                         "the same architecture and feature dim (one translator across a training "
                                         "run)", choices=("exact", "arch"), identity=False, yaml=False)
    concepts: str | None = opt(None, "concepts: a text file (one per line) or a text-embedding Parquet")
    class_text: str | None = opt(None, "class prompt embeddings (`sing embed-text` or `sing import embeddings` "
                                       "Parquet), matched by index (default: computed with the translator's CLIP)")
    templates: str = opt("single", "class prompt templates when computed: single | ensemble", check=_templates)
    # not in the run id: compiled and eager scores agree within the precision budget
    # (measured: sing bench-precision --compile), like two batch sizes
    compile: str = opt("off", COMPILE_HELP, identity=False, choices=COMPILE_MODES)
    extra: dict = field(default_factory=dict)  # recorded in the manifest's config (e.g. nightly's name)


@dataclass
class _Prepared:
    spec: str
    clf: object  # pipelines.models.classifiers.Classifier (CPU)
    decomposition: object
    translator_path: str
    translator: object
    class_text: np.ndarray
    concept_text: np.ndarray | None
    class_text_info: dict = field(default_factory=dict)  # file (sha256, name differences) or how computed
    concept_info: dict | None = None


def _texts(opts: AuditOptions, clf, tr, concepts, clip_for, what: str = "the translator"):
    """Class and concept text embeddings: from files, or computed with the translator's CLIP
    through the node's derived cache (CLIP is loaded only when an embedding is not cached)."""
    from pipelines.models.clip import TEMPLATES
    from pipelines.models.clip_source import identity_now
    from pipelines.models.derived_cache import text_embeddings
    from pipelines.models.text import CONCEPT_TEMPLATES, is_embeddings_file, load_class_text, load_concept_embeddings

    clip_id = tr.metadata.get("clip_model")
    tr_clip = tr.metadata.get("clip_identity") or clip_id  # load_translator refused a wrongly built one
    now: dict = {}

    def embed_texts(get_clip, names, templates):  # with the CLIP as it builds now: the translator's, or refused
        if not now:
            now.update(identity_now(tr.metadata.get("clip_identity"), clip_id, what))
        return text_embeddings(now, names, templates, lambda: get_clip(clip_id))

    if opts.class_text:  # by index: row i is class i, whatever its spelling (recorded in the manifest)
        class_text, info = load_class_text(opts.class_text, tr_clip, list(clf.class_names), tr.out_dim)
    else:
        class_text = embed_texts(clip_for, list(clf.class_names), TEMPLATES[opts.templates])
        info = {"computed_with": clip_id, "clip_identity": dict(now), "templates": opts.templates}
    concept_text = concept_info = None
    if concepts and is_embeddings_file(opts.concepts):
        names, concept_text, concept_info = load_concept_embeddings(opts.concepts, tr_clip, tr.out_dim)
        if names != concepts:
            raise BadInput(f"--concepts {opts.concepts} changed while the run was being prepared")
    elif concepts:
        concept_text = embed_texts(clip_for, concepts, CONCEPT_TEMPLATES)
        concept_info = {"computed_with": clip_id, "clip_identity": dict(now), "templates": CONCEPT_TEMPLATES}
    if class_text.shape[1] != tr.out_dim:
        raise BadInput(f"class text embeddings are {class_text.shape[1]}-d but the translator outputs {tr.out_dim}-d")
    return class_text, info, concept_text, concept_info


def prepare_models(opts: AuditOptions, concepts: list[str] | None) -> list[_Prepared]:
    """Load each classifier once on the driver (CPU) to validate and describe it; decompose
    its head and embed its texts (both cached per node); the actors take all of it from the
    object store (pipelines.stages.prepared)."""
    from pipelines.models.translator_file import load_translator_for
    from pipelines.models.classifiers import load_classifier
    from pipelines.models.clip import load_clip
    from pipelines.models.derived_cache import head_decomposition

    if not opts.models:
        raise BadInput("give at least one --model")
    if len(opts.translators) not in (1, len(opts.models)):
        raise BadInput(f"give one --translator, or one per --model ({len(opts.models)}), got {len(opts.translators)}")
    clips: dict[str, object] = {}

    def clip_for(clip_id):
        return clips.get(clip_id) or clips.setdefault(clip_id, load_clip(clip_id))

    prepared = []
    for i, spec in enumerate(opts.models):
        with timeline.span("model_load"):
            clf = load_classifier(spec)
            tpath = opts.translators[i if len(opts.translators) > 1 else 0]
            tr = load_translator_for(tpath, spec, clf, opts.translator_match)
        with timeline.span("text_embed"):  # loading CLIP included
            class_text, info, concept_text, concept_info = _texts(opts, clf, tr, concepts, clip_for,
                                                                  f"translator {tpath}")
        with timeline.span("head_svd"):  # cached per node by the head's bytes
            dec = head_decomposition(clf.head_weight, atol=opts.rank_atol, rtol=opts.rank_rtol)
        if dec.null_dim == 0:
            log.warning("%s: the head has no null space (%d classes >= %d features); AS/IS will be NULL",
                        clf.model_id, clf.num_classes, clf.num_features)
        prepared.append(_Prepared(spec, clf, dec, tpath, tr, class_text, concept_text, info, concept_info))
    slugs = [p.clf.slug for p in prepared]
    if len(set(slugs)) != len(slugs):
        raise BadInput(f"the same model is given twice: {slugs}")
    timeline.mark("models_prepared")
    return prepared


def _prepare_while_ray_starts(opts: AuditOptions, concepts) -> list[_Prepared]:
    """prepare_models while Ray starts (ray_session.while_ray_starts). The shards were
    expanded first, so a bad glob, or weights that cannot be had, still exit before Ray starts."""
    from pipelines.models.weights import require_weights
    from pipelines.stages.ray_session import while_ray_starts

    for spec in opts.models:  # weights that cannot be had: exit 2 in seconds, before Ray starts
        require_weights(spec)
    return while_ray_starts(lambda: prepare_models(opts, concepts))


def decode_modes(view_keys: list[str], decode: Decode) -> list[tuple[ActorDecode, bool]]:
    """(actor decode mode, share_decoded) of each model actor in chain order. Host mode: the
    read stage decodes each view once. Device mode: the first model of each view decodes on
    its device and, when later models have the same view, hands the decoded images on to them
    (SHARED), so a night auditing several checkpoints of one architecture decodes once."""
    if decode != Decode.DEVICE:
        return [(ActorDecode.HOST, False)] * len(view_keys)
    return [(ActorDecode.SHARED, False) if k in view_keys[:i] else (ActorDecode.DEVICE, k in view_keys[i + 1:])
            for i, k in enumerate(view_keys)]


def _model_record(p: _Prepared, mode: ActorDecode) -> dict:
    tr = p.translator
    return {"model_id": p.clf.model_id, "slug": p.clf.slug, "checkpoint_sha256": p.clf.checkpoint_sha256,
            "num_classes": p.clf.num_classes, **p.decomposition.summary(),
            "preprocess": dataclasses.asdict(p.clf.preprocess), "decode": mode.value,
            "translator": {"path": str(p.translator_path), "id": tr.id, "clip_model": tr.metadata.get("clip_model"),
                           "clip_identity": tr.metadata.get("clip_identity"), "lambda": tr.metadata.get("lambda"),
                           **({"official": tr.metadata["official"]} if "official" in tr.metadata else {})},
            "class_text": p.class_text_info, **({"concept_text": p.concept_info} if p.concept_info else {})}


def _resolved(prepared: list[_Prepared], concepts) -> dict:
    """What the run id keys instead of the raw options: model ids and weights, translator
    contents, the text embeddings' contents."""
    first = prepared[0]
    return {"models": [p.clf.model_id for p in prepared], "sha": [p.clf.checkpoint_sha256 for p in prepared],
            "translators": [p.translator.id for p in prepared], "concepts": concepts,
            "class_text": first.class_text_info.get("sha256"),
            # computed class text: the CLIP as it built (a hub repo that moved changes the texts)
            "clip": [p.class_text_info.get("clip_identity") for p in prepared],
            "concept_text": (first.concept_info or {}).get("sha256")}


def _writers(opts: AuditOptions, plan, prepared: list[_Prepared], concepts) -> list:
    """Each model actor's WriterSpec: its model's files of every shard (stages.shard_writer),
    shards an earlier run finished for that model skipped; the run's concept vocabulary is
    written first, once per model."""
    import functools

    from pipelines.io.layout import vocab_file, write_table_atomic
    from pipelines.stages.audit_tables import audit_files, vocab_table
    from pipelines.stages.shard_writer import WriterSpec

    specs = []
    for i, p in enumerate(prepared):
        if concepts:
            write_table_atomic(vocab_table(concepts), vocab_file(opts.out, p.clf.slug, plan.run_id))
        build = functools.partial(audit_files, out=opts.out, run_id=plan.run_id, slug=p.clf.slug, prefix=f"m{i}",
                                  class_names=tuple(p.clf.class_names), null_dim=p.decomposition.null_dim,
                                  concepts=bool(concepts))
        specs.append(WriterSpec(build, frozenset(done_shards(opts.out, "images", p.clf.slug, plan.run_id))))
    return specs


def _stream(opts: AuditOptions, plan, prepared: list[_Prepared], concepts, tally: ShardTally) -> None:
    """The stream of the shards to do: one decode, a chain of model actors that each score and
    write their model's files (healing spine)."""
    from pipelines.stages.actors import ScoreActor
    from pipelines.stages.prepared import share
    from pipelines.stages.read import encoded_columns, unique_views, view_column

    modes = decode_modes([p.clf.preprocess.view_key for p in prepared], opts.decode)
    views = unique_views([p.clf.preprocess for p in prepared])
    device = opts.decode == Decode.DEVICE
    refs = [share(p.clf, p.decomposition, p.translator) for p in prepared]  # held until the stream ends
    actors = [spine.ActorSpec(ScoreActor, dict(
        prefix=f"m{i}", model_spec=p.spec, translator_path=str(p.translator_path), class_text=p.class_text,
        concept_text=p.concept_text, rank_atol=opts.rank_atol, rank_rtol=opts.rank_rtol, view=p.clf.preprocess,
        translator_match=opts.translator_match, decode=mode, share_decoded=share_, max_pixels=opts.max_pixels,
        precision=opts.precision, prepared=ref, compile=opts.compile, batch_size=opts.batch_size, writer=writer))
        for i, (p, (mode, share_), ref, writer) in enumerate(zip(prepared, modes, refs,
                                                               _writers(opts, plan, prepared, concepts)))]
    drop = encoded_columns(views) if device else [view_column(v) for v in views]

    def build(todo):  # per attempt: a restart sizes the pool for the nodes left
        ap = spine.ActorPlan.resolve(opts, 1)  # the models run as one chain of actors
        plan.manifest["actor_pool"] = ap.as_manifest()
        ds = spine.stream(todo, opts, views, spine.chained(actors), ap, drop,
                          {"encoded": device, "host_share": opts.host_decode_share})
        timeline.mark("stream_started")  # Ray Data executes lazily: from the first pull on
        return ds

    startup = timeline.ActorStartup([f"m{i}" for i in range(len(prepared))])
    spine.run(plan, opts, "the audit stream", build, [f"m{i}" for i in range(len(prepared))],
              lambda b: (tally.batch(b), startup(b)), tally.shard)
    timeline.mark("last_result")
    plan.manifest["startup_seconds"] = startup.finish()


def run_audit(opts: AuditOptions) -> dict:
    from pipelines.models.text import concept_names

    check(opts)  # options built in Python (nightly, reproduce, demo) get the CLI's checks too
    timeline.begin_run()
    shards = spine.expand(opts.shards)
    concepts = concept_names(opts.concepts) if opts.concepts else None
    prepared = _prepare_while_ray_starts(opts, concepts)
    modes = decode_modes([p.clf.preprocess.view_key for p in prepared], opts.decode)
    slugs = [p.clf.slug for p in prepared]
    plan = spine.plan("audit", opts, _resolved(prepared, concepts),
                      lambda run: set.intersection(*(done_shards(opts.out, "images", s, run) for s in slugs)),
                      {"precision": opts.precision, "concepts": concepts, **opts.extra,
                       "models": [_model_record(p, m) for p, (m, _) in zip(prepared, modes)]}, shards)
    timeline.mark("planned")
    tally = ShardTally([Writer(f"m{i}", s) for i, s in enumerate(slugs)], total=len(plan.todo))
    if plan.todo:
        _stream(opts, plan, prepared, concepts, tally)
    wall = time.perf_counter() - plan.t0
    stream = tally.stream_rate()
    timeline.mark("finished")
    plan.manifest["timeline"] = timeline.marks()
    plan.manifest["startup_seconds"] = {**timeline.spans(), **plan.manifest.get("startup_seconds", {})}
    return spine.finish(
        plan, stage_seconds={k: round(v, 3) for k, v in tally.stage_seconds.items()},
        # end to end, Ray and actor start-up included; `sing bench` derives the steady rate
        # from two run sizes (start-up cancels out)
        images_per_second=round(tally.rows_written / wall, 3) if wall > 0 else None,
        # after the first result arrived: start-up excluded, one run suffices
        stream_images_per_second=None if stream is None else round(stream, 3),
        shards={**plan.manifest["shards"], "written": len(tally.done_shards)},
        counts={s: {"images": count_rows(opts.out, "images", s, plan.run_id),
                    "errors": count_rows(opts.out, "errors", s, plan.run_id),
                    "images_this_session": tally.counts.get(f"{s}/images", 0)} for s in slugs})


def cli_args(p) -> None:
    from pipelines.models.spec import MODEL_EPILOG

    add_arguments(p, AuditOptions)
    p.epilog = MODEL_EPILOG


def cli_run(args) -> int:
    man = run_audit(from_namespace(AuditOptions, args, progress=not args.quiet))
    print(f"run {man['run_id']}: {man['shards']['total']} shards ({man['shards']['skipped_done']} already done)")
    for slug, c in man["counts"].items():
        print(f"  {slug}: {c['images']} images, {c['errors']} errors")
    print(f"manifest: {args.out.rstrip('/')}/runs/{man['run_id']}.json")
    return 0
