"""The steer job's model actor: each image of the requested class steered along the null
space toward the target text (pipelines.jobs.steer)."""
from __future__ import annotations

import time

import numpy as np
import torch

from pipelines.models.translator_file import load_translator
from pipelines.models.precision import features_and_logits as forward
from pipelines.stages.actors import _ModelActor


class SteerActor(_ModelActor):
    """Holds one classifier, its head decomposition, the translator and the target text;
    steers every "ok" row of the requested class (float64 on the CPU: exact IS calibration)."""

    COLS = ("eps", "is_deg", "as_deg", "logit_drift")

    def __init__(self, prefix, model_spec, translator_path, target_text, class_index, eps=None, is_deg=None,
                 rank_atol=1e-5, rank_rtol=None, drop_views=(), device=None, threads=None, view=None,
                 precision="fp32", writer=None, final=False, window=None):
        from sing_ops import HeadDecomposition

        from pipelines.models.classifiers import load_classifier
        from pipelines.io.remote import local_copy

        clf = load_classifier(model_spec)
        super().__init__(prefix, view or clf.preprocess, drop_views, device, threads, precision=precision,
                         writer=writer, final=final, window=window)
        self.clf = clf.to(self.device, channels_last=self.cuda)
        self.dec = HeadDecomposition.from_weight(clf.head_weight, atol=rank_atol, rtol=rank_rtol)
        # local_copy here too: the actor may run on another node, whose cache is its own
        self.tr = load_translator(local_copy(translator_path), in_dim=clf.num_features,
                                  source_model=clf.model_id).to(dtype=torch.float64)
        self.w = clf.head_weight.to(torch.float64)
        self.text = torch.tensor(np.array(target_text, dtype=np.float64)).reshape(-1)
        self.class_index, self.eps, self.is_deg = int(class_index), eps, is_deg

    def _compute(self, batch: dict) -> dict:
        from sing_ops import logit_drift, steer

        out = self._passthrough(batch)
        n = len(batch["key"])
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
        return self._emit(batch, out, {**cols, "reachable": reachable, "selected": sel, "error": err},
                          {"t_forward": t_fwd, "t_ops": t_ops})
