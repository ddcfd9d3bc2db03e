"""SING core: pure tensor math, no I/O and no Ray.

Each function's docstring names the formula it implements (SING, Yadid et al., CVPR 2026,
arXiv 2603.14610); docs/ARCHITECTURE.md lists the API.
"""
from .head import DEFAULT_ATOL, HeadDecomposition, HeadError
from .ridge import LambdaSelection, RidgeError, RidgeStats, select_lambda, translation_quality
from .scorer import AuditScorer
from .scores import ScoreError, angle_deg, attribute_score, concept_angles, image_score
from .steering import (SteerError, SteerResult, cosine_gradient, logit_drift, matched_perturbations,
                       null_direction, steer)
from .translator import Translator, TranslatorMismatch

__all__ = [
    "DEFAULT_ATOL", "HeadDecomposition", "HeadError", "LambdaSelection", "RidgeError", "RidgeStats",
    "select_lambda", "translation_quality", "AuditScorer", "ScoreError", "angle_deg", "attribute_score",
    "concept_angles", "image_score", "SteerError", "SteerResult", "cosine_gradient", "logit_drift",
    "matched_perturbations", "null_direction", "steer", "Translator", "TranslatorMismatch",
]
