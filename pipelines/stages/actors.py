"""Ray Data stage 2: actors that hold a model and turn decoded images into numbers.

`ScoreActor`   classifier forward + SING ops -> per-image score columns (audit).
`FeatureActor` classifier (or CLIP image tower) forward -> raw embedding column (fit).
Several actors can be chained on one decoded stream (one decode, many models): each
writes columns under its own prefix `<prefix>/...` and passes the rest through.
Rows that are not "ok" pass through untouched; a row a model cannot score (NaN feature,
label outside the head) gets `<prefix>/error` instead of failing the batch.
"""
from __future__ import annotations

import contextlib
import threading
import time

import numpy as np
import torch

from pipelines.options import ActorDecode
from pipelines.models.compiled import CompiledClassifier, torch_mode
from pipelines.models.precision import DEFAULT_PRECISION, autocast, model_inputs
from pipelines.models.precision import configure as configure_precision
from pipelines.models.precision import features_and_logits as forward
from pipelines.stages.read import ENC_COLUMN, decode_error_column, u8_column, view_column
from pipelines.stages.windows import ShardWindows, concat, take
from pipelines.timeline import STARTUP_COLUMNS


def pick_device(requested: str | None = None) -> torch.device:
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _set_threads(threads: int | None):
    # Ray pins OMP_NUM_THREADS to the actor's logical CPUs; on a small CPU-only box we
    # want the forward to use the cores the read stage leaves idle.
    if threads:
        torch.set_num_threads(threads)


DEGENERATE = ("score: the translated feature T(f) or T(f~) is zero or not finite, so the angles are undefined "
              "(a degenerate translator or feature)")


class _ModelActor:
    """Common to the model actors: device, CUDA stream per thread, precision, inputs."""

    def __init__(self, prefix: str, view, drop_views=(), device=None, threads=None, decode="host",
                 max_pixels=None, share_decoded=False, precision=DEFAULT_PRECISION, writer=None, final=False,
                 window=None):
        _set_threads(threads)
        configure_precision(precision)  # this actor process runs one precision
        self.precision = precision
        self.prefix, self.view, self.col = prefix, view, view_column(view)
        self.drop = set(drop_views)
        self.device = pick_device(device)
        self.cuda = self.device.type == "cuda"
        self.decode, self.max_pixels = ActorDecode(decode), max_pixels
        self.share_decoded = bool(share_decoded) and self.decode == ActorDecode.DEVICE
        self._local = threading.local()
        self._startup_lock, self._startup = threading.Lock(), None
        # writer: a shard_writer.WriterSpec: this actor writes its model's files of each shard and
        # hands on records; final: the stream's last actor, whose output is the records alone
        from pipelines.stages.shard_writer import ShardWriter

        self.writer = ShardWriter(prefix, writer) if writer is not None else None
        self.final = bool(final)
        # window: forward batches of `window` rows fixed by position in the shard (stages.windows)
        self.windows = ShardWindows(window) if window else None

    def __call__(self, batch: dict) -> dict:
        """This batch's rows, computed in the windows they complete (rows of a window that is
        not full yet wait for the rest of their shard); without windows, as they came."""
        with self._on_stream():
            if self.windows is None or "seq" not in batch:
                return self._compute(batch)
            parts = [self._compute(w) for w in self.windows.add(batch)]
            return concat(parts) if parts else self._compute(take(batch, slice(0, 0)))

    def _compute(self, batch: dict) -> dict:
        raise NotImplementedError

    def _started(self, t_enter: float, t_warmup: float = 0.0) -> None:
        """The constructor is done: its seconds ride on this actor's first batch to the driver
        (pipelines.timeline.ActorStartup), which breaks the run's fixed cost down."""
        from pipelines.timeline import process_start

        now = time.time()
        self._startup = {"t_ready": now, "t_setup": now - t_enter, "t_warmup": t_warmup, "t_spawned": process_start()}

    def _startup_columns(self, out: dict, rows: np.ndarray) -> None:
        """The start-up numbers on the first of `rows` (a mask over the batch) of one batch."""
        first = np.flatnonzero(rows)[:1]
        with self._startup_lock:  # threaded actors: exactly one batch carries the numbers
            s, self._startup = (self._startup, None) if len(first) else (None, self._startup)
        for c in STARTUP_COLUMNS:
            out[f"{self.prefix}/{c}"] = col = np.zeros(len(rows), dtype=np.float64)
            if s:
                col[first] = s[c]

    def _emit(self, batch: dict, out: dict, own: dict, seconds: dict) -> dict:
        """This batch's results. With a writer they stay here until each shard's end row,
        when the shard's files are written, and only the records travel on (the last actor's
        output is the records alone); without one, per-row columns `<prefix>/<name>`."""
        n, p = len(batch["key"]), self.prefix
        if self.writer is None:
            out.update({f"{p}/{k}": v for k, v in own.items()})
            out.update({f"{p}/{k}": _first_only(n, v) for k, v in seconds.items()})
            self._startup_columns(out, np.arange(n) == 0)
            return out
        self.writer.add_timings(**seconds)
        rec, end = self.writer.add(batch, own)
        out.update(rec)
        self._startup_columns(out, end)
        return {k: v[end] for k, v in out.items()} if self.final else out

    def _on_stream(self):
        """Each calling thread works on its own CUDA stream (Ray runs several batches of one
        actor at once with --actor-threads), so one batch's decode overlaps another's forward."""
        if not self.cuda:
            return contextlib.nullcontext()
        stream = getattr(self._local, "stream", None)
        if stream is None:
            stream = self._local.stream = torch.cuda.Stream(self.device)
        return torch.cuda.stream(stream)

    def _inputs(self, batch, ok):
        return model_inputs(batch[self.col][ok], self.view, self.precision, self.device)

    def _model_inputs(self, batch, ok, run, out) -> tuple[torch.Tensor, np.ndarray, dict[int, str], float]:
        """Normalised inputs of the `run` rows that decoded, their row indices, {row: reason} of
        `run` rows that failed to decode (device and shared modes), seconds spent decoding."""
        if self.decode == ActorDecode.HOST:
            return self._inputs(batch, run), np.flatnonzero(run), {}, 0.0
        if self.decode == ActorDecode.SHARED:
            reasons = batch[decode_error_column(self.view)]
            keep = run & (reasons == "")
            failed = {int(i): str(reasons[i]) for i in np.flatnonzero(run & ~keep)}
            return self._inputs(batch, keep), np.flatnonzero(keep), failed, 0.0
        from pipelines.stages.device_decode import decode_batch

        t0 = time.perf_counter()
        # every ok row, not only this model's: a later model of this view may score rows
        # this one cannot (a label outside its head)
        rows = np.flatnonzero(ok if self.share_decoded else run)
        host = batch.get(u8_column(self.view))
        u8, bad = decode_batch(batch[ENC_COLUMN][rows], self.view, self.device, self.max_pixels,
                               decoded=None if host is None else host[rows], checked=True)
        decoded = np.delete(rows, sorted(bad))
        failed = {int(rows[j]): reason for j, reason in bad.items()}
        if self.share_decoded:
            n = len(batch["key"])
            full = np.zeros((n, *self.view.crop_hw, 3), dtype=np.uint8)
            full[decoded] = u8.cpu().numpy()
            reasons = np.full(n, "", dtype=object)
            for i, reason in failed.items():
                reasons[i] = reason
            out[self.col], out[decode_error_column(self.view)] = full, reasons
            mine = run[decoded]
            if not mine.all():
                u8, decoded = u8[torch.from_numpy(mine).to(u8.device)], decoded[mine]
            failed = {i: r for i, r in failed.items() if run[i]}
        x = model_inputs(u8, self.view, self.precision, self.device)
        self._sync()
        return x, decoded, failed, time.perf_counter() - t0

    def _autocast(self):
        return autocast(self.precision, self.device)

    def _warm_up(self, compile_mode: str = "off", batch_size: int | None = None) -> float:
        """Pay the first batch's one-off costs in the constructor, while the read tasks decode
        the first images: torch.compile (self.fwd becomes the compiled forward), or on CUDA
        the context, cuBLAS/cuDNN handles and kernel loading. Eager on a CPU needs none (its
        first batch measured no slower). Returns the seconds spent."""
        t0 = time.perf_counter()
        self.fwd = self.clf
        if torch_mode(compile_mode):
            self.fwd = CompiledClassifier(self.clf, compile_mode, batch_size or 64)
            self.fwd.warm_up(self.precision, self.device)
        elif self.cuda:
            u8 = torch.zeros(min(batch_size or 64, 64), *self.view.crop_hw, 3, dtype=torch.uint8)
            forward(self.fwd, model_inputs(u8, self.view, self.precision, self.device), self.precision)
            self._sync()
        return time.perf_counter() - t0

    def _passthrough(self, batch):
        return {k: v for k, v in batch.items() if k not in self.drop}

    def _sync(self):
        # this thread's stream only: a device-wide sync would also wait on the other threads
        if self.cuda:
            torch.cuda.current_stream(self.device).synchronize()


class ScoreActor(_ModelActor):
    """Holds one classifier, its head decomposition, the translator and text embeddings.

    prepared: the driver's PreparedModel (an object-store reference, pipelines.stages.prepared):
    the classifier, decomposition and translator as the driver built them, so no actor
    rebuilds the model or repeats the head's float64 SVD. Without it the actor builds them
    from model_spec and translator_path. compile: pipelines.models.compiled (the batch size
    is the static shape)."""

    def __init__(self, prefix, model_spec, translator_path, class_text, concept_text=None, rank_atol=1e-5,
                 rank_rtol=None, drop_views=(), device=None, threads=None, view=None, translator_match="exact",
                 decode="host", max_pixels=None, share_decoded=False, precision=DEFAULT_PRECISION, prepared=None,
                 compile="off", batch_size=64, writer=None, final=False, window=None):
        t_enter = time.time()
        from sing_ops import AuditScorer

        if prepared is not None:
            from pipelines.stages.prepared import take

            p = take(prepared)
            clf, dec, tr = p.model, p.decomposition, p.translator
        else:
            clf, dec, tr = _build_score_parts(model_spec, translator_path, translator_match, rank_atol, rank_rtol)
        super().__init__(prefix, view or clf.preprocess, drop_views, device, threads, decode, max_pixels,
                         share_decoded, precision, writer, final, window)
        self.clf = clf.to(self.device, channels_last=self.cuda)
        self.scorer = AuditScorer(clf.head_weight, dec, tr, class_text, concept_text, device=self.device)
        self.num_classes = clf.num_classes
        self._started(t_enter, self._warm_up(compile, batch_size))

    def _compute(self, batch: dict) -> dict:
        out = self._passthrough(batch)
        n = len(batch["key"])
        ok = batch["status"] == "ok"
        labels = batch["label"]
        bad_label = ok & ((labels < 0) | (labels >= self.num_classes))
        run = ok & ~bad_label
        err = np.full(n, "", dtype=object)
        err[bad_label] = [f"label {int(v)} outside the head's {self.num_classes} classes" for v in labels[bad_label]]
        cols = {k: np.full(n, np.nan, dtype=np.float32) for k in
                ("as_deg", "is_deg", "pred_as_deg", "logit_drift", "null_norm_frac")}
        cols["pred"] = np.full(n, -1, dtype=np.int64)
        k = 0 if self.scorer.concept_text is None else self.scorer.concept_text.shape[0]
        before = np.full((n, k), np.nan, dtype=np.float32)
        after = np.full((n, k), np.nan, dtype=np.float32)
        t_fwd = t_ops = t_dec = 0.0
        idx = np.flatnonzero(run)
        if self.share_decoded and not n:  # nothing to decode, but the columns it hands on
            out[self.col] = np.zeros((0, *self.view.crop_hw, 3), dtype=np.uint8)
            out[decode_error_column(self.view)] = np.zeros(0, dtype=object)
        elif len(idx) or self.share_decoded:  # a sharing decoder always hands its columns on
            x, idx, failed, t_dec = self._model_inputs(batch, ok, run, out)
            for i, reason in failed.items():
                err[i] = reason
        t0 = time.perf_counter()
        if len(idx):
            f, logits = forward(self.fwd, x, self.precision)
            self._sync()
            t_fwd = time.perf_counter() - t0
            finite = torch.isfinite(f).all(-1).cpu().numpy()
            if not finite.all():
                err[idx[~finite]] = "non-finite (NaN/Inf) classifier features"
                idx, f, logits = idx[finite], f[torch.from_numpy(finite).to(f.device)], logits[
                    torch.from_numpy(finite).to(f.device)]
            if len(idx):  # rows filtered above: finite features, labels inside the head
                res = self.scorer.score(f, torch.from_numpy(labels[idx]), logits, checked=True)
                # one device-to-host copy for every column (each .cpu() is a sync, and syncs
                # wait on the other actors sharing the GPU); pred rides along as float32,
                # exact below 2**24 classes
                names = list(cols)
                parts = [res[name].to(torch.float32).reshape(len(idx), 1) for name in names]
                if k:
                    parts += [res["concept_before"].to(torch.float32), res["concept_after"].to(torch.float32)]
                host = torch.cat(parts, 1).cpu().numpy()
                for j, name in enumerate(names):
                    cols[name][idx] = host[:, j]
                if self.scorer.null_dim:  # undefined angles (T(f) zero or not finite) are errors, not NULLs
                    degenerate = idx[~(np.isfinite(cols["as_deg"][idx]) & np.isfinite(cols["is_deg"][idx]))]
                    err[degenerate] = DEGENERATE
                if k:
                    before[idx] = host[:, len(names):len(names) + k]
                    after[idx] = host[:, len(names) + k:]
            self._sync()
            t_ops = time.perf_counter() - t0 - t_fwd
        own = {**cols, "error": err, **({"concept_before": before, "concept_after": after} if k else {})}
        seconds = {"t_forward": t_fwd, "t_ops": t_ops, **({"t_decode": t_dec} if self.decode == ActorDecode.DEVICE else {})}
        return self._emit(batch, out, own, seconds)


class FeatureActor(_ModelActor):
    """Classifier penultimate features (kind="classifier") or CLIP image embeddings (kind="clip").
    prepared: the driver's model through the object store (pipelines.stages.prepared)."""

    def __init__(self, prefix, kind, model_spec, drop_views=(), device=None, threads=None,
                 precision=DEFAULT_PRECISION, prepared=None, batch_size=64, writer=None, final=False, window=None):
        t_enter = time.time()
        if kind not in ("classifier", "clip"):
            raise ValueError(f"unknown feature kind {kind!r}")
        if prepared is not None:
            from pipelines.stages.prepared import take

            model = take(prepared).model
        elif kind == "classifier":
            from pipelines.models.classifiers import load_classifier

            model = load_classifier(model_spec)
        else:
            from pipelines.models.clip import load_clip

            model = load_clip(model_spec)
        super().__init__(prefix, model.preprocess, drop_views, device, threads, precision=precision, writer=writer,
                         final=final, window=window)
        self.kind = kind
        self.dim = model.num_features if kind == "classifier" else model.embed_dim
        self.model = self.clf = model.to(self.device)
        self._started(t_enter, self._warm_up(batch_size=batch_size) if kind == "classifier" else 0.0)

    def _compute(self, batch: dict) -> dict:
        out = self._passthrough(batch)
        n = len(batch["key"])
        ok = batch["status"] == "ok"
        t0 = time.perf_counter()
        emb = np.zeros((n, self.dim), dtype=np.float32)
        if ok.any():
            x = self._inputs(batch, ok)
            if self.kind == "classifier":
                e = forward(self.model, x, self.precision)[0]
            else:
                with torch.inference_mode(), self._autocast():
                    e = self.model.encode_image(x)
            emb[ok] = e.float().cpu().numpy()
        return self._emit(batch, out, {"emb": emb, **self._extra(batch, ok)},
                          {"t_forward": time.perf_counter() - t0})

    def _extra(self, batch: dict, ok: np.ndarray) -> dict:
        """More per-row columns of a subclass (the index's thumbnails)."""
        return {}


class ChainActor:
    """Several model actors in one actor process, each batch passed through them in order as
    through a chain of pools (fit-translator: the classifiers' and CLIP's FeatureActors; a
    multi-model audit's ScoreActors). One process start and one set of imports (seconds each:
    torch, timm, open_clip) instead of one per model, and one actor task per shard instead of
    one per model: the driver's cost per shard is per task (`sing bench-scale`: ~10 ms of
    driver CPU per actor task on two cores). parts: [(actor class, its kwargs)]; the last one
    drops the image columns and, when the actors write, hands on the records alone."""

    def __init__(self, parts, drop_views=(), final=False, **common):
        last = len(parts) - 1
        self.parts = [cls(**common, **kw, **({"drop_views": drop_views, "final": final} if i == last
                                             else {"drop_views": ()}))
                      for i, (cls, kw) in enumerate(parts)]

    def __call__(self, batch: dict) -> dict:
        for part in self.parts:
            batch = part(batch)
        return batch


def _build_score_parts(model_spec, translator_path, translator_match, rank_atol, rank_rtol):
    """(classifier, head decomposition, translator) built in the actor (no prepared model)."""
    from sing_ops import HeadDecomposition

    from pipelines.models.translator_file import load_translator_for
    from pipelines.models.classifiers import load_classifier

    clf = load_classifier(model_spec)
    dec = HeadDecomposition.from_weight(clf.head_weight, atol=rank_atol, rtol=rank_rtol)
    return clf, dec, load_translator_for(translator_path, model_spec, clf, translator_match)


def _first_only(n: int, value: float) -> np.ndarray:
    """A per-batch number stored on the batch's first row (so sums over rows are exact)."""
    a = np.zeros(n, dtype=np.float64)
    if n:
        a[0] = value
    return a

