"""Every model of a leaderboard planned before any work: what it is (pipelines.models.resolve),
whether it can take part, and which decode passes the runnable ones share.

A model that cannot take part becomes a `skipped` row saying why: its name does not resolve,
its weights can be had neither from the local cache nor from the network, its head is not one
final linear layer on one feature vector (two heads of a distilled model, a 1x1 conv before
pooling), its head has other than 1000 classes (the evaluation shards are ImageNet), or it has
no null space (no more features than classes). Runnable models are grouped by eval transform:
models of one transform share each decoded image, K to a pass.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger("sing.leaderboard")

NUM_CLASSES = 1000
REASON_CHARS = 400  # a reason fits a table cell; the log has the whole text


@dataclass
class Candidate:
    model_string: str
    described: object | None  # resolve.Described, None when the string does not resolve
    reason: str = ""  # why it is skipped ("" when it runs)

    @property
    def runnable(self) -> bool:
        return not self.reason

    @property
    def slug(self) -> str:
        from pipelines.models.spec import parse_model_spec, slug

        if self.described is not None:
            return self.described.spec.slug
        try:
            return parse_model_spec(self.model_string).slug
        except Exception:  # noqa: BLE001 - a string that does not even parse keys its row by itself
            return slug(self.model_string)

    @property
    def view_key(self) -> str:
        d = self.described
        return d.preprocess.view_key if d is not None and d.preprocess is not None else ""


def _why_not(d) -> str:
    if d.problems:
        return "; ".join(d.problems)
    if not d.weights_ready:  # the first sentence; the ways to provide them are in the log and `sing models`
        return f"weights not available: {d.why_not.split('. Provide them')[0]}"
    if d.head_problem:
        return f"no single linear head: {d.head_problem}"
    if d.num_classes is not None and d.num_classes != NUM_CLASSES:
        return f"its head has {d.num_classes} classes; the leaderboard ranks ImageNet-1k ({NUM_CLASSES}) heads"
    if d.null_dim_bound == 0:
        return f"no null space: {d.num_features} features for {d.num_classes} classes"
    return ""


def plan_models(models: list[str]) -> list[Candidate]:
    """A Candidate per MODEL string, in order; none raises."""
    from pipelines.models.resolve import describe

    out = []
    for s in models:
        try:
            d = describe(s)
        except Exception as exc:  # noqa: BLE001 - an unknown model or tag is a row, not the end of the board
            out.append(Candidate(s, None, _cell(f"{type(exc).__name__}: {exc}")))
            continue
        why = _why_not(d)
        if why:
            log.info("leaderboard: %s is skipped: %s", s, why)
        out.append(Candidate(s, d, _cell(why)))
    return out


def _cell(why: str) -> str:
    return why if len(why) <= REASON_CHARS else why[:REASON_CHARS - 3] + "..."


def passes(candidates: list[Candidate], per_pass: int) -> list[list[Candidate]]:
    """The runnable models in decode passes: models of one eval transform together (each image
    decoded once for them), at most `per_pass` to a pass, in first-appearance order."""
    groups: dict[str, list[Candidate]] = {}
    for c in candidates:
        if c.runnable:
            groups.setdefault(c.view_key, []).append(c)
    return [g[i:i + per_pass] for g in groups.values() for i in range(0, len(g), max(1, per_pass))]
