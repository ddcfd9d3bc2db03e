"""`sing steer`: null-space steering of every image of one class toward a text prompt
(paper Table 1) as a Ray Data job.

    shards -> read (only samples of the requested class are decoded) -> SteerActor
           -> driver regroups rows per shard -> OUT/steer/model=<slug>/run=<run_id>/<shard>.parquet

Per image the actor computes f, then (sing_ops.steer, float64) the unit null direction of
the cosine gradient toward the prompt's CLIP text embedding and the exact step eps giving
the requested Image Score (or a fixed eps), and reports IS reached, AS toward the target
(angle(T(f), t) - angle(T(f_eps), t)) and the logit drift max |W f_eps - W f| (~0).
Images of other classes are skipped (not decoded, not errors); read/decode/model problems
go to the `errors` table. Each shard's steer file is written atomically, after its errors
file; a shard whose steer file exists is done, so rerunning the command resumes.
"""
from __future__ import annotations

import logging
import math
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import torch

from pipelines.stages.actors import _first_only, _ModelActor
from pipelines.models.precision import DEFAULT_PRECISION, check_precision
from pipelines.models.precision import features_and_logits as forward
from pipelines.stages.read import read_decode
from pipelines.stages.regroup import ShardGrouper
from pipelines.io.translator_file import load_translator
from pipelines.stages.watchdog import DEFAULT_STALL_S, with_stall_timeout

log = logging.getLogger("sing.steer")

STEER_SCHEMA = pa.schema([
    ("key", pa.string()), ("shard", pa.string()), ("label", pa.int32()), ("target", pa.string()),
    ("eps", pa.float32()), ("is_deg", pa.float32()), ("as_deg", pa.float32()), ("abs_as_deg", pa.float32()),
    ("logit_drift", pa.float32()), ("reachable", pa.bool_()),
])


class SteerConfigError(ValueError):
    """Bad `sing steer` input (user-facing, exit 2)."""


# ----------------------------------------------------------------------------- stream helpers


# ----------------------------------------------------------------------------- the actor


class SteerActor(_ModelActor):
    """Holds one classifier, its head decomposition, the translator and the target text;
    steers every "ok" row of the requested class (float64 on the CPU: exact IS calibration)."""

    COLS = ("eps", "is_deg", "as_deg", "logit_drift")

    def __init__(self, prefix, model_spec, translator_path, target_text, class_index, eps=None, is_deg=None,
                 rank_atol=1e-5, rank_rtol=None, drop_views=(), device=None, threads=None, view=None,
                 precision="fp32"):
        from sing_ops import HeadDecomposition

        from pipelines.models.classifiers import load_classifier
        from pipelines.io.remote import local_copy

        clf = load_classifier(model_spec)
        super().__init__(prefix, view or clf.preprocess, drop_views, device, threads, precision=precision)
        self.clf = clf.to(self.device, channels_last=self.cuda)
        self.dec = HeadDecomposition.from_weight(clf.head_weight, atol=rank_atol, rtol=rank_rtol)
        # local_copy here too: the actor may run on another node, whose cache is its own
        self.tr = load_translator(local_copy(translator_path), in_dim=clf.num_features,
                                  source_model=clf.model_id).to(dtype=torch.float64)
        self.w = clf.head_weight.to(torch.float64)
        self.text = torch.tensor(np.array(target_text, dtype=np.float64)).reshape(-1)
        self.class_index, self.eps, self.is_deg = int(class_index), eps, is_deg

    def __call__(self, batch: dict) -> dict:
        from sing_ops import logit_drift, steer

        out = self._passthrough(batch)
        n, p = len(batch["key"]), self.prefix
        sel = (batch["status"] == "ok") & (batch["label"] == self.class_index)
        cols = {k: np.full(n, np.nan, dtype=np.float64) for k in self.COLS}
        reachable = np.zeros(n, dtype=bool)
        err = np.full(n, "", dtype=object)
        t0 = time.perf_counter()
        t_fwd = t_ops = 0.0
        if sel.any():
            idx = np.flatnonzero(sel)
            f = forward(self.clf, self._inputs(batch, sel), self.precision)[0].cpu().to(torch.float64)
            t_fwd = time.perf_counter() - t0
            finite = torch.isfinite(f).all(-1).numpy()
            err[idx[~finite]] = "non-finite (NaN/Inf) classifier features"
            idx, f = idx[finite], f[torch.from_numpy(finite)]
            if len(idx):
                with torch.inference_mode():
                    res = steer(f, self.dec, self.tr, self.text, eps=self.eps, is_deg=self.is_deg)
                    drift = logit_drift(self.w, f, res.f_steered)
                cols["eps"][idx] = res.eps.numpy()
                cols["is_deg"][idx] = res.is_deg.numpy()
                cols["as_deg"][idx] = res.as_deg.numpy()
                cols["logit_drift"][idx] = drift.numpy()
                reachable[idx] = res.reachable.numpy()
            t_ops = time.perf_counter() - t0 - t_fwd
        for k, v in cols.items():
            out[f"{p}/{k}"] = v
        out[f"{p}/reachable"] = reachable
        out[f"{p}/selected"] = sel
        out[f"{p}/error"] = err
        out[f"{p}/t_forward"] = _first_only(n, t_fwd)
        out[f"{p}/t_ops"] = _first_only(n, t_ops)
        return out


# ----------------------------------------------------------------------------- the job


@dataclass
class SteerConfig:
    model: str
    translator: str
    shards: list[str]
    out: str
    target_class: str  # class name, alias or index
    prompt: str  # free text embedded with the translator's CLIP, or a row name of prompt_embeddings
    is_deg: float | None = None
    eps: float | None = None
    run_id: str | None = None
    batch_size: int = 64
    rank_atol: float | None = 1e-5
    rank_rtol: float | None = None
    device: str | None = None
    threads: int | None = None
    max_pixels: int | None = None
    progress: bool = True
    precision: str = DEFAULT_PRECISION
    # a text-embedding Parquet (`sing embed-text`, `sing import embeddings`): the target is its
    # row named `prompt`, no CLIP model is loaded (offline use of the official embeddings)
    prompt_embeddings: str | None = None


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


def target_embedding(prompt: str, prompt_embeddings, clip_id: str, out_dim: int) -> tuple[np.ndarray, dict]:
    """The target text embedding and a record of where it came from (manifest)."""
    if prompt_embeddings:
        from pipelines.models.text import embeddings_info, load_embeddings

        names, emb, meta = load_embeddings(prompt_embeddings, clip_model=clip_id)
        i = pick_row(names, prompt, prompt_embeddings)
        info = {"source": "embeddings", "row": i, "name": names[i],
                **embeddings_info(prompt_embeddings, names, meta)}
        text = emb[i]
    else:
        from pipelines.models.clip import load_clip
        from pipelines.models.text import embed_texts

        text = embed_texts(load_clip(clip_id), [prompt], ["{}"])[0]
        info = {"source": "clip", "clip_model": clip_id, "templates": "raw prompt (no template)"}
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


def prepare(cfg: SteerConfig):
    """Every check that can fail on the user's input, before any work (exit 2)."""
    from sing_ops import HeadDecomposition

    from pipelines.jobs.explain import resolve_class
    from pipelines.models.classifiers import load_classifier
    from pipelines.io.remote import local_copy
    from pipelines.io.shards import expand_shards, shard_name

    check_step(cfg.is_deg, cfg.eps)
    check_precision(cfg.precision)
    if not cfg.prompt or not cfg.prompt.strip():
        raise SteerConfigError("--prompt must be a non-empty text, e.g. 'an image of a jellyfish'")
    shards = expand_shards(cfg.shards)
    names = [shard_name(s) for s in shards]
    if len(set(names)) != len(names):
        raise SteerConfigError("two shards share a file name; shard names key the output files")
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
    text, text_info = target_embedding(cfg.prompt.strip(), cfg.prompt_embeddings, clip_id, tr.out_dim)
    return shards, names, clf, dec, class_index, tr, clip_id, text, text_info


def run_steer(cfg: SteerConfig) -> dict:
    from pipelines.stages.collect import ERRORS_SCHEMA
    from pipelines.io.layout import check_run_id, count_rows, derive_run_id, is_done, shard_file, write_table_atomic
    from pipelines.io.manifest import code_version, file_sha256, load_manifest, utc_now, write_manifest
    from pipelines.stages.ray_session import actor_gpus, cluster_cpus, configure_data_context, ensure_ray
    from pipelines.io.remote import local_copy

    started = utc_now()
    shards, names, clf, dec, class_index, tr, clip_id, text, text_info = prepare(cfg)
    target = cfg.prompt.strip()
    run_id = check_run_id(cfg.run_id) if cfg.run_id else derive_run_id("steer", {
        "model": clf.model_id, "sha": clf.checkpoint_sha256, "translator": tr.id, "shards": names,
        "class": class_index, "prompt": target, "is_deg": cfg.is_deg, "eps": cfg.eps,
        "rank_atol": cfg.rank_atol, "rank_rtol": cfg.rank_rtol, "precision": cfg.precision,
        **({"prompt_embeddings": text_info["sha256"]} if cfg.prompt_embeddings else {})})
    done = {n for n in names if is_done(cfg.out, clf.slug, run_id, n, table="steer")}
    todo = [s for s, n in zip(shards, names) if n not in done]
    manifest = {
        "kind": "steer", "status": "running", "started_at": started, "code_version": code_version(),
        "precision": cfg.precision,
        "models": [{"model_id": clf.model_id, "slug": clf.slug, "checkpoint_sha256": clf.checkpoint_sha256,
                    "num_classes": clf.num_classes, **dec.summary()}],
        "translator": {"path": str(cfg.translator), "id": tr.id, "sha256": file_sha256(local_copy(cfg.translator)),
                       "clip_model": clip_id, "lambda": tr.metadata.get("lambda")},
        "target": {"prompt": target, "class_index": class_index, "class_name": clf.class_names[class_index],
                   "is_deg": cfg.is_deg, "eps": cfg.eps,
                   "templates": text_info.get("templates") if cfg.prompt_embeddings else "raw prompt (no template)"},
        "target_text": text_info,
        "config": {**asdict(cfg), "argv": sys.argv},
        "shards": {"total": len(shards), "skipped_done": len(done), "todo": len(todo)},
    }
    previous = load_manifest(cfg.out, run_id)
    if previous:
        manifest["resumed_from"] = {k: previous.get(k) for k in ("started_at", "status", "stage_seconds")}
    write_manifest(cfg.out, run_id, manifest)
    log.info("steer run %s: class %d (%s) -> %r, %d shards, %d already done", run_id, class_index,
             clf.class_names[class_index], target, len(shards), len(done))
    stage = defaultdict(float)
    written = 0
    t0 = time.perf_counter()
    if todo:
        ray = ensure_ray()
        from ray.data import ActorPoolStrategy

        configure_data_context(cfg.progress)
        gpus = actor_gpus(cfg.device)
        ds = ray.data.from_items([{"path": s} for s in todo], override_num_blocks=len(todo))
        ds = ds.map_batches(read_decode, batch_size=1, num_cpus=1,
                            fn_kwargs={"views": [clf.preprocess], "only_label": class_index,
                                       "max_pixels": cfg.max_pixels})
        n_actors = max(1, int(gpus))
        ds = ds.map_batches(
            SteerActor, batch_size=cfg.batch_size, compute=ActorPoolStrategy(min_size=1, max_size=n_actors),
            num_cpus=0.5 if not gpus else 1, num_gpus=1 if gpus else 0,
            fn_constructor_kwargs=dict(
                prefix="s", model_spec=cfg.model, translator_path=str(cfg.translator), target_text=text,
                class_index=class_index, eps=cfg.eps, is_deg=cfg.is_deg, rank_atol=cfg.rank_atol,
                rank_rtol=cfg.rank_rtol, drop_views=[f"img:{clf.preprocess.view_key}"], device=cfg.device,
                threads=cfg.threads or (None if gpus else max(1, int(cluster_cpus()))), view=clf.preprocess,
                precision=cfg.precision))
        grouper = ShardGrouper()
        batches = ds.iter_batches(batch_size=None, batch_format="numpy")
        for batch in with_stall_timeout(batches, DEFAULT_STALL_S, "the steer stream"):
            for key in ("t_forward", "t_ops"):
                stage["forward" if key == "t_forward" else "sing_ops"] += float(batch[f"s/{key}"].sum())
            for shard, cols, t_read in grouper.add(batch):
                tw = time.perf_counter()
                table, model_err = steer_table(cols, "s", shard, target)
                bad = cols["status"] == "error"
                errors = pa.table({
                    "key": pa.array(cols["key"][bad].tolist() + cols["key"][model_err].tolist(), pa.string()),
                    "shard": pa.array([shard] * int(bad.sum() + model_err.sum()), pa.string()),
                    "stage": pa.array(cols["stage"][bad].tolist() + ["model"] * int(model_err.sum()), pa.string()),
                    "reason": pa.array(cols["reason"][bad].tolist() + cols["s/error"][model_err].tolist(),
                                       pa.string())}, schema=ERRORS_SCHEMA)
                write_table_atomic(errors, shard_file(cfg.out, "errors", clf.slug, run_id, shard))
                write_table_atomic(table, shard_file(cfg.out, "steer", clf.slug, run_id, shard))  # marks done
                stage["read_decode"] += t_read
                stage["write"] += time.perf_counter() - tw
                written += 1
                log.info("steer: shard %s written (%d images of the class)", shard, table.num_rows)
        if grouper.unfinished():
            raise RuntimeError(f"stream ended with incomplete shards {grouper.unfinished()}; rerun to retry them")
    n_rows = count_rows(cfg.out, "steer", clf.slug, run_id)
    if n_rows == 0:
        log.warning("no image of class %d (%s) in the shards", class_index, clf.class_names[class_index])
    manifest.update({
        "status": "complete", "finished_at": utc_now(), "wall_seconds": round(time.perf_counter() - t0, 3),
        "stage_seconds": {k: round(v, 3) for k, v in stage.items()},
        "shards": {**manifest["shards"], "written": written},
        "counts": {"images": n_rows, "errors": count_rows(cfg.out, "errors", clf.slug, run_id),
                   "shards_done": len(done) + written, "shards_skipped": len(done)},
        "run_id": run_id,
    })
    write_manifest(cfg.out, run_id, manifest)
    return manifest
