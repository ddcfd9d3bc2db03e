"""A stand-in for the audit's model actor (`sing bench-scale`): the rows a real one produces, at a
chosen rate, with no model.

Everything around the model is the audit's own: the read stage in front, and behind it the
same per-row columns as pipelines.stages.actors.ScoreActor (AS, IS, prediction, drift, the
concept angles before and after null removal, errors), handed to the same writer. Only the
forward pass is replaced by a sleep of n / rate seconds per batch, so the rest of the stream
runs at the rate of a GPU that scores `rate` images per second per actor.
"""
from __future__ import annotations

import time

import numpy as np

from pipelines.stages.actors import _ModelActor

SCORE_COLUMNS = ("as_deg", "is_deg", "pred_as_deg", "logit_drift", "null_norm_frac")


def standin_columns(rng: np.random.Generator, labels: np.ndarray, n_concepts: int,
                    n_classes: int = 1000) -> dict[str, np.ndarray]:
    """Per-row result columns shaped like ScoreActor's, with values of the paper's magnitude
    (|AS| ~ 1 deg, IS ~ 20 deg, concept angles ~ 70-80 deg)."""
    n = len(labels)
    as_deg = rng.normal(0.0, 1.2, n).astype(np.float32)
    pred = np.where(rng.random(n) < 0.8, np.clip(labels, 0, n_classes - 1), rng.integers(0, n_classes, n))
    before = rng.normal(75.0, 3.0, (n, n_concepts)).astype(np.float32)
    return {"as_deg": as_deg, "is_deg": np.abs(rng.normal(20.0, 4.0, n)).astype(np.float32),
            "pred_as_deg": (as_deg + rng.normal(0, 0.3, n)).astype(np.float32),
            "logit_drift": np.abs(rng.normal(0, 1e-5, n)).astype(np.float32),
            "null_norm_frac": rng.uniform(0.3, 0.9, n).astype(np.float32),
            "pred": pred.astype(np.int64),
            "concept_before": before,
            "concept_after": (before + rng.normal(0.0, 0.8, (n, n_concepts))).astype(np.float32)}


class StandInActor(_ModelActor):
    """Rows of one stand-in model: `rate` images per second per actor, `n_concepts` concept
    angles per image, written like a real model's (writer: a shard_writer.WriterSpec). Rows the
    read stage could not read pass through as they would."""

    def __init__(self, prefix: str, view, n_concepts: int, rate: float, seed: int = 0, drop_views=(), device=None,
                 threads=None, writer=None, final=False, window=None):
        t_enter = time.time()
        super().__init__(prefix, view, drop_views, device="cpu", threads=threads, writer=writer, final=final,
                         window=window)
        self.k, self.rate = int(n_concepts), float(rate)
        self.rng = np.random.default_rng(seed)
        self._started(t_enter)

    def _compute(self, batch: dict) -> dict:
        t0 = time.perf_counter()
        out = self._passthrough(batch)
        ok = batch["status"] == "ok"
        own = standin_columns(self.rng, batch["label"], self.k)
        for name in (*SCORE_COLUMNS, "pred"):
            own[name][~ok] = -1 if name == "pred" else np.nan
        own["error"] = np.full(len(ok), "", dtype=object)
        if self.rate > 0:  # the GPU's time for this batch
            time.sleep(max(0.0, int(ok.sum()) / self.rate - (time.perf_counter() - t0)))
        return self._emit(batch, out, own, {"t_forward": time.perf_counter() - t0, "t_ops": 0.0})
