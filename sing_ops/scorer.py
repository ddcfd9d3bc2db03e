"""Every per-image SING number for a batch of features, in a few matmuls.

The pipeline's classifier actors call `AuditScorer.score` once per batch. Everything
is precomputed once per (head, translator, texts, device, dtype):
    c = V_n^T f                 null coordinates            (B, k)
    z = A f + b                 T(f)                        (B, d)
    z_eq = z - (A V_n) c        T(f~) without forming f~     (B, d)
    W f~ - W f = -(W V_n) c     the logit drift, ~0 by construction
"""
from __future__ import annotations

import math

import torch

from .head import HeadDecomposition
from .scores import ScoreError, _unit, attribute_score, concept_angles, image_score
from .translator import Translator, TranslatorMismatch


def _tensor(x) -> torch.Tensor:
    # copy arrays: those handed over by Ray are read-only, which torch warns about
    return x if torch.is_tensor(x) else torch.tensor(x)


class AuditScorer:
    def __init__(self, weight, decomposition: HeadDecomposition, translator: Translator, class_text,
                 concept_text=None, device="cpu", dtype=torch.float32):
        w = torch.as_tensor(weight).detach()
        w = w.flatten(1) if w.dim() == 4 else w
        if w.shape[1] != decomposition.num_features:
            raise ScoreError(f"head weight has {w.shape[1]} features, decomposition {decomposition.num_features}")
        if translator.in_dim != decomposition.num_features:
            raise TranslatorMismatch(
                f"translator expects {translator.in_dim}-d features but the classifier head has "
                f"{decomposition.num_features}-d input")
        # a copy: arrays handed over by Ray are read-only, and torch warns on those
        class_text = _tensor(class_text)
        if class_text.shape != (w.shape[0], translator.out_dim):
            raise ScoreError(f"class text embeddings must be ({w.shape[0]}, {translator.out_dim}) "
                             f"(one per class, CLIP dim), got {tuple(class_text.shape)}")
        self.num_classes = w.shape[0]
        self.null_dim = decomposition.null_dim
        self.device, self.dtype = torch.device(device), dtype
        f64 = dict(dtype=torch.float64)
        vn = decomposition.null_basis.to(**f64)
        a = translator.weight.to(**f64)
        cast = lambda t: t.to(device=self.device, dtype=dtype).contiguous()  # noqa: E731
        self.vn = cast(vn)
        self.a_t = cast(a.T)
        self.b = cast(translator.bias)
        self.avn_t = cast((a @ vn).T)  # (k, d)
        self.wvn_t = cast((w.to(**f64) @ vn).T)  # (k, c)
        self.w_t = cast(w.T)
        self.class_text = cast(_unit(class_text.to(**f64), "class text embeddings"))
        if concept_text is not None:
            concept_text = _tensor(concept_text)
            if concept_text.dim() != 2 or concept_text.shape[1] != translator.out_dim:
                raise ScoreError(f"concept embeddings must be (K, {translator.out_dim}), got {tuple(concept_text.shape)}")
            self.concept_text = cast(_unit(concept_text.to(**f64), "concept embeddings"))
        else:
            self.concept_text = None

    @torch.inference_mode()
    def score(self, f: torch.Tensor, labels: torch.Tensor, logits: torch.Tensor | None = None,
              checked: bool = False, embeddings: bool = False) -> dict[str, torch.Tensor]:
        """Per-image columns (see docs/ARCHITECTURE.md 'images'). Undefined scores are NaN.
        embeddings: also return z = T(f) and z_eq = T(f~) (single-image explanations use them).

        checked: the caller has made sure the features are finite and the labels in range;
        the checks here and in the angle functions read values back from the device (a sync
        each, ~30 per batch), so a GPU caller that filtered its rows skips them; a degenerate
        row (zero embedding) then scores NaN instead of failing the batch."""
        check = not checked
        f = f.to(self.device, self.dtype)
        if f.dim() != 2 or f.shape[1] != self.w_t.shape[0]:
            raise ScoreError(f"features must be (B, {self.w_t.shape[0]}), got {tuple(f.shape)}")
        if check and not torch.isfinite(f).all():
            raise ScoreError("NaN/Inf in features")
        labels = torch.as_tensor(labels, device=self.device).long()
        if check and labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ScoreError(f"labels must be in [0, {self.num_classes}), got range "
                             f"[{int(labels.min())}, {int(labels.max())}]")
        if logits is None:
            logits = f @ self.w_t
        pred = logits.argmax(-1)
        c = f @ self.vn
        z = torch.addmm(self.b, f, self.a_t)
        z_eq = z - c @ self.avn_t
        fnorm = torch.linalg.vector_norm(f, dim=-1)
        out = {
            "pred": pred,
            "logit_drift": (c @ self.wvn_t).abs().amax(-1) if self.null_dim else torch.zeros_like(fnorm),
            "null_norm_frac": torch.linalg.vector_norm(c, dim=-1) / fnorm,
        }
        if self.null_dim == 0:  # no null space: every SING score is undefined, not zero
            nan = torch.full_like(fnorm, math.nan)
            out.update(as_deg=nan, is_deg=nan, pred_as_deg=nan)
        else:
            out.update(as_deg=attribute_score(z, z_eq, self.class_text[labels], check),
                       is_deg=image_score(z, z_eq, check),
                       pred_as_deg=attribute_score(z, z_eq, self.class_text[pred], check))
        if embeddings:
            out.update(z=z, z_eq=z_eq)
        if self.concept_text is not None:
            before = concept_angles(z, self.concept_text, check)
            after = concept_angles(z_eq, self.concept_text, check) if self.null_dim else torch.full_like(before, math.nan)
            out.update(concept_before=before, concept_after=after)
        return out

