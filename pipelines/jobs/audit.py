"""`sing audit`: webdataset shards -> decode once -> classifier actors -> per-shard Parquet.

Everything that can be checked is checked on the driver before Ray starts any work:
shards exist, model names resolve, each translator fits its model (dims and source
model), text embeddings fit the translator's CLIP space.
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from pipelines.stages.actor_pool import DEFAULT_ACTORS_PER_GPU, DEFAULT_GPU_ACTOR_THREADS, actor_pool
from pipelines.stages.collect import ModelTarget, ShardCollector
from pipelines.io.layout import check_run_id, count_rows, derive_run_id, is_done
from pipelines.io.manifest import code_version, load_manifest, utc_now, write_manifest
from pipelines.models.precision import DEFAULT_PRECISION, check_precision
from pipelines.io.translator_file import load_translator
from pipelines.stages.watchdog import with_stall_timeout

log = logging.getLogger("sing.audit")


@dataclass
class AuditConfig:
    models: list[str]
    translators: list[str]  # one per model, or one shared by all
    shards: list[str]
    out: str
    concepts: str | None = None
    run_id: str | None = None
    templates: str = "single"
    class_text: str | None = None  # cached `sing embed-text` Parquet for the class prompts
    batch_size: int = 64
    num_actors: int | None = None
    rank_atol: float | None = 1e-5
    rank_rtol: float | None = None
    device: str | None = None
    threads: int | None = None
    max_pixels: int | None = None
    progress: bool = True
    # "exact": a translator must have been fitted on this very model id (checkpoint file name
    # included); "arch": any checkpoint of the same architecture with the same feature dim
    # will do (nightly audits reusing one translator across a training run).
    translator_match: str = "exact"
    # "host": the read stage decodes (PIL, pixel-exact eval transforms); "device": the model
    # actors decode JPEGs on their device (nvJPEG on GPUs), see pipelines.stages.device_decode
    decode: str = "host"
    # device mode: this share of the device-decodable JPEGs is decoded by the read tasks on
    # the CPU anyway, so idle host cores and the GPU's JPEG decoder work side by side
    host_decode_share: float = 0.0
    # model actors sharing each GPU: while one runs its forward, the others deserialise
    # their next batch, decode it and build results (one actor leaves the GPU idle then)
    actors_per_gpu: int = DEFAULT_ACTORS_PER_GPU
    # batches each model actor works on at once, in threads with a CUDA stream each: one
    # thread's JPEG decode (the GPU's decoder engines) overlaps another's forward (the SMs)
    # inside one CUDA context, where separate actor processes only time-slice the GPU.
    # None: DEFAULT_GPU_ACTOR_THREADS on GPUs, 1 on CPUs (the forward already uses every core)
    actor_threads: int | None = None
    # end the run (exit 1, rerun resumes) when no batch arrives for this long; 0: never
    stall_timeout_s: float | None = 1800
    # cap on the object-store bytes in flight between read tasks and actors (None: Ray's
    # budget, half the object store), see ray_session.configure_data_context
    buffer_gb: float | None = None
    # numeric precision of the forward (pipelines.models.precision): part of the run id
    precision: str = DEFAULT_PRECISION
    extra: dict = field(default_factory=dict)


@dataclass
class _Prepared:
    spec: str
    model_id: str
    slug: str
    sha256: str | None
    preprocess: object
    class_names: list[str]
    decomposition: object
    translator_path: str
    translator: object
    class_text: np.ndarray
    concept_text: np.ndarray | None
    class_text_info: dict = field(default_factory=dict)  # file (sha256, name differences) or how computed
    concept_info: dict | None = None


def prepare_models(cfg: AuditConfig, concepts: list[str] | None):
    """Load each classifier once on the driver (CPU) to validate and describe it."""
    from sing_ops import HeadDecomposition

    from pipelines.models.clip import TEMPLATES, load_clip
    from pipelines.models.classifiers import load_classifier
    from pipelines.models.text import (CONCEPT_TEMPLATES, embed_texts, is_embeddings_file, load_class_text,
                       load_concept_embeddings)

    if len(cfg.translators) not in (1, len(cfg.models)):
        raise ValueError(f"give one --translator, or one per --model ({len(cfg.models)}), "
                         f"got {len(cfg.translators)}")
    if cfg.decode not in ("host", "device"):
        raise ValueError(f"unknown decode mode {cfg.decode!r}; choose host or device")
    if not 0.0 <= cfg.host_decode_share <= 1.0:
        raise ValueError(f"--host-decode-share must be within [0, 1], got {cfg.host_decode_share}")
    if cfg.host_decode_share and cfg.decode != "device":
        raise ValueError("--host-decode-share applies to --decode device (host mode decodes everything on the host)")
    if cfg.buffer_gb is not None and not cfg.buffer_gb > 0:
        raise ValueError(f"--buffer-gb must be positive, got {cfg.buffer_gb}")
    if (cfg.actor_threads is not None and cfg.actor_threads < 1) or cfg.actors_per_gpu < 1:
        raise ValueError(f"--actor-threads and --actors-per-gpu must be at least 1, got {cfg.actor_threads} "
                         f"and {cfg.actors_per_gpu}")
    if cfg.templates not in TEMPLATES:
        raise ValueError(f"unknown prompt templates {cfg.templates!r}; choose from {sorted(TEMPLATES)}")
    check_precision(cfg.precision)
    clip_cache: dict[str, object] = {}

    def clip_for(clip_id):
        return clip_cache.get(clip_id) or clip_cache.setdefault(clip_id, load_clip(clip_id))

    prepared = []
    for i, spec in enumerate(cfg.models):
        clf = load_classifier(spec)
        tpath = cfg.translators[i if len(cfg.translators) > 1 else 0]
        tr = load_translator_for(tpath, spec, clf, cfg.translator_match)
        clip_id = tr.metadata.get("clip_model")
        if cfg.class_text:
            # by index: row i is class i, whatever its spelling (recorded in the manifest)
            class_text, text_info = load_class_text(cfg.class_text, clip_id, list(clf.class_names), tr.out_dim)
        else:
            class_text = embed_texts(clip_for(clip_id), list(clf.class_names), TEMPLATES[cfg.templates])
            text_info = {"computed_with": clip_id, "templates": cfg.templates}
        concept_text = concept_info = None
        if concepts and is_embeddings_file(cfg.concepts):
            names, concept_text, concept_info = load_concept_embeddings(cfg.concepts, clip_id, tr.out_dim)
            if names != concepts:
                raise ValueError(f"--concepts {cfg.concepts} changed while the run was being prepared")
        elif concepts:
            concept_text = embed_texts(clip_for(clip_id), concepts, CONCEPT_TEMPLATES)
            concept_info = {"computed_with": clip_id, "templates": CONCEPT_TEMPLATES}
        if class_text.shape[1] != tr.out_dim:
            raise ValueError(f"class text embeddings are {class_text.shape[1]}-d but translator {tpath} "
                             f"outputs {tr.out_dim}-d")
        dec = HeadDecomposition.from_weight(clf.head_weight, atol=cfg.rank_atol, rtol=cfg.rank_rtol)
        if dec.null_dim == 0:
            log.warning("%s: the head has no null space (%d classes >= %d features); AS/IS will be NULL",
                        clf.model_id, clf.num_classes, clf.num_features)
        prepared.append(_Prepared(spec, clf.model_id, clf.slug, clf.checkpoint_sha256, clf.preprocess,
                                  list(clf.class_names), dec, tpath, tr, class_text, concept_text, text_info,
                                  concept_info))
    slugs = [p.slug for p in prepared]
    if len(set(slugs)) != len(slugs):
        raise ValueError(f"the same model is given twice: {slugs}")
    return prepared


def load_translator_for(path, spec: str, clf, match: str = "exact"):
    """Load a translator (local path or fsspec URL) and check it fits `clf` (see
    AuditConfig.translator_match). Runs on the driver and in every actor: a URL is fetched
    into the cache of the node it runs on."""
    from sing_ops.translator import TranslatorMismatch

    from pipelines.models.spec import parse_model_spec
    from pipelines.io.remote import local_copy

    if match not in ("exact", "arch"):
        raise ValueError(f"unknown translator match {match!r}; choose exact or arch")
    local = local_copy(path)
    if match == "exact":
        return load_translator(local, in_dim=clf.num_features, source_model=clf.model_id)
    tr = load_translator(local, in_dim=clf.num_features)
    fitted_on = tr.metadata.get("source_model") or ""
    try:
        fitted_arch = parse_model_spec(fitted_on).arch_ref
    except ValueError:
        fitted_arch = fitted_on
    arch = parse_model_spec(spec).arch_ref
    if fitted_arch != arch:
        raise TranslatorMismatch(f"translator {path} was fitted on {fitted_on!r} (architecture {fitted_arch}), "
                                 f"but is used with {clf.model_id!r} (architecture {arch})")
    return tr


def run_audit(cfg: AuditConfig) -> dict:
    from pipelines.stages.actors import ScoreActor
    from pipelines.stages.read import encoded_columns, read_decode, unique_views, view_column
    from pipelines.stages.ray_session import actor_gpus, cluster_cpus, configure_data_context, ensure_ray
    from pipelines.io.shards import expand_shards, shard_name
    from pipelines.models.text import concept_names

    started = utc_now()
    shards = expand_shards(cfg.shards)
    names = [shard_name(s) for s in shards]
    if len(set(names)) != len(names):
        raise ValueError("two shards share a file name; shard names key the output files")
    concepts = concept_names(cfg.concepts) if cfg.concepts else None
    prepared = prepare_models(cfg, concepts)
    run_id = check_run_id(cfg.run_id) if cfg.run_id else derive_run_id("audit", {
        "models": [p.model_id for p in prepared], "sha": [p.sha256 for p in prepared],
        "translators": [p.translator.id for p in prepared], "shards": names, "concepts": concepts,
        "templates": cfg.templates, "rank_atol": cfg.rank_atol, "rank_rtol": cfg.rank_rtol,
        "precision": cfg.precision,
        # embedding files change the scores: their content keys the run (absent = as before)
        **({"class_text": prepared[0].class_text_info["sha256"]} if cfg.class_text else {}),
        **({"concept_text": prepared[0].concept_info["sha256"]}
           if concepts and "sha256" in (prepared[0].concept_info or {}) else {}),
        **({"decode": cfg.decode} if cfg.decode != "host" else {}),
        **({"host_decode_share": cfg.host_decode_share} if cfg.host_decode_share else {})})
    targets = []
    for i, p in enumerate(prepared):
        done = {n for n in names if is_done(cfg.out, p.slug, run_id, n)}
        targets.append(ModelTarget(f"m{i}", p.slug, p.class_names, p.decomposition.null_dim,
                                   concepts or [], done))
    todo = [s for s, n in zip(shards, names) if any(n not in t.skip_shards for t in targets)]
    skipped = len(shards) - len(todo)
    modes = decode_modes([p.preprocess.view_key for p in prepared], cfg.decode)
    manifest = {
        "kind": "audit", "status": "running", "started_at": started, "code_version": code_version(),
        "precision": cfg.precision,
        "models": [{"model_id": p.model_id, "slug": p.slug, "checkpoint_sha256": p.sha256,
                    "num_features": p.decomposition.num_features, "num_classes": len(p.class_names),
                    **p.decomposition.summary(), "preprocess": asdict(p.preprocess), "decode": modes[i][0],
                    "translator": {"path": str(p.translator_path), "id": p.translator.id,
                                   "clip_model": p.translator.metadata.get("clip_model"),
                                   "lambda": p.translator.metadata.get("lambda"),
                                   **({"official": p.translator.metadata["official"]}
                                      if "official" in p.translator.metadata else {})},
                    "class_text": p.class_text_info, **({"concept_text": p.concept_info} if p.concept_info else {})}
                   for i, p in enumerate(prepared)],
        "config": {**{k: v for k, v in asdict(cfg).items() if k != "extra"}, **cfg.extra, "argv": sys.argv},
        "shards": {"total": len(shards), "skipped_done": skipped, "todo": len(todo)},
        "concepts": concepts,
    }
    previous = load_manifest(cfg.out, run_id)
    if previous:
        manifest["resumed_from"] = {k: previous.get(k) for k in ("started_at", "status", "stage_seconds")}
    write_manifest(cfg.out, run_id, manifest)
    log.info("run %s: %d shards, %d already done, %d to do", run_id, len(shards), skipped, len(todo))

    collector = ShardCollector(cfg.out, run_id, targets, on_shard_done=_progress(len(todo)))
    t0 = time.perf_counter()
    if todo:
        ray = ensure_ray()
        configure_data_context(cfg.progress, cfg.buffer_gb)
        views = unique_views([p.preprocess for p in prepared])
        gpus = actor_gpus(cfg.device)
        # Leave CPUs for the read/decode tasks: actors take fractional CPUs (two 1-CPU
        # actors on a 2-core box starve the read stage forever).
        per_gpu = cfg.actors_per_gpu if gpus else 1  # >= 1, checked up front
        n_actors = cfg.num_actors or max(1, int(gpus) * per_gpu if gpus else 1)
        threads = cfg.actor_threads or (DEFAULT_GPU_ACTOR_THREADS if gpus else 1)
        gpu_share = min(1.0, gpus / n_actors) / len(prepared) if gpus else 0
        manifest["actor_pool"] = {"actors_per_model": n_actors, "threads_per_actor": threads,
                                  "gpus_per_actor": gpu_share}
        ds = ray.data.from_items([{"path": s} for s in todo], override_num_blocks=len(todo))
        device_decode = cfg.decode == "device"
        ds = ds.map_batches(read_decode, batch_size=1, num_cpus=1,
                            fn_kwargs={"views": views, "max_pixels": cfg.max_pixels,
                                       "encoded": device_decode, "host_share": cfg.host_decode_share})
        drop = encoded_columns(views) if device_decode else [view_column(v) for v in views]
        for i, p in enumerate(prepared):
            last = i == len(prepared) - 1
            ds = ds.map_batches(
                ScoreActor, batch_size=cfg.batch_size,
                compute=actor_pool(n_actors, threads),
                num_cpus=0.5 if not gpus else 1,
                num_gpus=gpu_share,
                fn_constructor_kwargs=dict(
                    prefix=f"m{i}", model_spec=p.spec, translator_path=str(p.translator_path),
                    class_text=p.class_text, concept_text=p.concept_text, rank_atol=cfg.rank_atol,
                    rank_rtol=cfg.rank_rtol, view=p.preprocess, device=cfg.device,
                    translator_match=cfg.translator_match, decode=modes[i][0], share_decoded=modes[i][1],
                    max_pixels=cfg.max_pixels, precision=cfg.precision,
                    threads=cfg.threads or (None if gpus else max(1, int(cluster_cpus()))),
                    drop_views=drop if last else ()))
        batches = ds.iter_batches(batch_size=None, batch_format="numpy")
        for batch in with_stall_timeout(batches, cfg.stall_timeout_s, "the audit stream"):
            collector.add(batch)
        if collector.unfinished():
            raise RuntimeError(f"stream ended with incomplete shards {collector.unfinished()}; rerun to retry them")
    wall = time.perf_counter() - t0
    stream = collector.stream_rate()
    manifest.update({
        "status": "complete", "finished_at": utc_now(), "wall_seconds": round(wall, 3),
        "stage_seconds": {k: round(v, 3) for k, v in collector.stage_seconds.items()},
        # end to end, Ray and actor start-up included; `sing bench` derives the steady rate
        # from two run sizes (start-up cancels out)
        "images_per_second": round(collector.rows_written / wall, 3) if wall > 0 else None,
        # after the first result arrived: start-up excluded, one run suffices
        "stream_images_per_second": None if stream is None else round(stream, 3),
        "shards": {**manifest["shards"], "written": len(collector.done_shards)},
        "counts": {p.slug: {"images": count_rows(cfg.out, "images", p.slug, run_id),
                            "errors": count_rows(cfg.out, "errors", p.slug, run_id),
                            "images_this_session": collector.counts.get(f"{p.slug}/images", 0)}
                   for p in prepared},
        "run_id": run_id,
    })
    write_manifest(cfg.out, run_id, manifest)
    return manifest


def decode_modes(view_keys: list[str], decode: str) -> list[tuple[str, bool]]:
    """(decode mode, share_decoded) of each model actor in chain order. Host mode: the read
    stage decodes each view once. Device mode: the first model of each view decodes on its
    device and, when later models have the same view, hands the decoded images on to them
    ("shared"), so a night auditing several checkpoints of one architecture decodes once."""
    if decode != "device":
        return [(decode, False)] * len(view_keys)
    out = []
    for i, k in enumerate(view_keys):
        if k in view_keys[:i]:
            out.append(("shared", False))
        else:
            out.append(("device", k in view_keys[i + 1:]))
    return out


def _progress(total: int):
    state = {"n": 0, "rows": 0, "t0": time.perf_counter()}

    def cb(shard: str, rows: int):
        state["n"] += 1
        state["rows"] += rows
        rate = state["rows"] / max(time.perf_counter() - state["t0"], 1e-9)
        log.info("shard %s written (%d/%d shards, %d images, %.1f img/s)", shard, state["n"], total,
                 state["rows"], rate)
    return cb
