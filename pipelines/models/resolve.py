"""One resolver from a MODEL string to everything about it, as timm's pretrained cfg is one
record per tag, instead of a trip through the loader for each fact.

    resolve(spec)    -> Resolved: the parsed spec, its Source (pipelines.models.sources: the
                        library's facts), its eval transform and crop_pct. Checks the name and
                        tag; builds nothing, fetches nothing. `Resolved.build()` builds the module
                        with its weights: the library's pretrained load (after a fast check that
                        the weights can be had), a seeded random init, or a local checkpoint / URL
    check(spec)      the architecture exists (no tag, weights or preprocessing needed)
    describe(spec)   -> Described: also where its weights come from and whether they can be had
                        now (without fetching them), its family and training recipe, and its
                        shapes (feature and class counts, parameters, whether its head is one
                        linear layer) from a build on the meta device: no memory, no weights, a
                        fraction of a second even for ViT-L
    family_of(spec)  the architecture family (timm's model module, e.g. resnet, vision_transformer)
    pretrain_of(tag) the training recipe a pretrained tag names, coarsely (clip, distilled,
                     in21k_ft_in1k, in1k, ...)

`load_classifier` (pipelines.models.classifiers) is `resolve(spec).build()` plus the head; the
leaderboard plans every model of a zoo with `describe`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from pipelines.models.preprocess import PreprocessSpec
from pipelines.models.sources import Source, source_of
from pipelines.models.spec import ModelSpec, UnknownModelError, parse_model_spec


def _spec(spec) -> ModelSpec:
    ms = parse_model_spec(spec) if isinstance(spec, str) else spec
    if ms.source == "openclip":
        raise UnknownModelError(f"{ms.raw!r} is a CLIP model, not a classifier: load it with "
                                "pipelines.models.clip.load_clip")
    return ms


def check(spec) -> ModelSpec:
    """The parsed spec, once its architecture is known to exist (tags are checked by resolve)."""
    ms = _spec(spec)
    source_of(ms).check_arch(ms)
    return ms


@dataclass(frozen=True)
class Resolved:
    spec: ModelSpec
    source: Source
    preprocess: PreprocessSpec
    crop_pct: float

    @property
    def model_id(self) -> str:
        return self.spec.model_id

    def build(self):
        """-> (module, sha256 of the weights file, or None where the caller hashes the state
        dict): the architecture with its weights, in train mode as the library returns it."""
        from pipelines.io.manifest import file_sha256
        from pipelines.io.remote import local_copy
        from pipelines.models.weights import require_weights
        from pipelines.models.registry import download_error, offline_error, seeded

        ms, src = self.spec, self.source
        if ms.weights == "pretrained":
            require_weights(ms)  # not cached and no network: fail now, not after the hub's retries
            try:
                return src.pretrained(ms)
            except Exception as e:  # noqa: BLE001
                if download_error(e):
                    raise offline_error(ms, e) from e
                raise
        model = seeded(ms, lambda: src.architecture(ms))  # same random weights in every process
        if ms.weights == "random":
            return model, None
        path = local_copy(ms.path)  # a URL is downloaded to this node's cache
        return src.load_file(ms, model, path), file_sha256(path)


def resolve(spec) -> Resolved:
    """The Resolved record of a classifier MODEL string (or ModelSpec); UnknownModelError for a
    string that does not parse or names no model or tag."""
    ms = _spec(spec)
    src = source_of(ms)
    src.check(ms)
    try:
        pre, crop_pct = src.preprocess(ms)
    except OSError:
        if ms.weights == "pretrained":  # e.g. hf: the processor config comes with the weights
            from pipelines.models.weights import require_weights

            require_weights(ms)  # uncached and unreachable: say so, and how to provide them
        raise
    return Resolved(ms, src, pre, crop_pct)


def resolve_preprocess(spec) -> tuple[PreprocessSpec, float]:
    """(eval transform, crop_pct) of a MODEL string, as loading it would use, without building it."""
    r = resolve(spec)
    return r.preprocess, r.crop_pct


@dataclass(frozen=True)
class Described:
    spec: ModelSpec
    weights_from: str  # hub:<repo>, url:<url>, file:<path>, package:<name>, seeded random
    weights_ready: bool  # cached, reachable, or none needed
    why_not: str  # why the weights cannot be had ("" when they can)
    preprocess: object | None  # PreprocessSpec (None when the string does not resolve)
    family: str
    pretrain: str
    num_features: int | None = None
    num_classes: int | None = None
    params: int | None = None
    head_problem: str = ""  # why the head is not one final linear layer SING can use ("" when it is)
    problems: list = field(default_factory=list)  # anything else that keeps it from running

    @property
    def model_id(self) -> str:
        return self.spec.model_id

    @property
    def null_dim_bound(self) -> int | None:
        """m - c: the null dimension of a full-rank head (the audit measures the rank itself)."""
        if self.num_features is None or self.num_classes is None:
            return None
        return max(0, self.num_features - self.num_classes)


_PRETRAIN = (("clip", r"clip|laion|openai|dfn|metaclip|datacomp"), ("distilled", r"(^|_)dist(illed)?(_|$)"),
             ("semi_supervised", r"(^|_)(ns|ssl|swsl|wsl|ig1b|ig|jft)(_|$)"),
             ("in21k_ft_in1k", r"in21k|in22k|in12k|(^|_)ft_in1k"), ("in1k", r"in1k|imagenet|tv_"))


def pretrain_of(tag: str | None, name: str = "") -> str:
    """The recipe a pretrained tag (and the architecture's name: deit_*_distilled) names,
    coarsely: the first of clip, distilled, semi_supervised (noisy student, instagram, JFT),
    in21k_ft_in1k (a larger ImageNet first), in1k; "unknown" for other tags, "" for none."""
    if not tag:
        return ""
    for recipe, pattern in _PRETRAIN:
        if re.search(pattern, tag.lower()) or (recipe == "distilled" and "distilled" in name.lower()):
            return recipe
    return "unknown"


def family_of(ms: ModelSpec) -> str:
    """The architecture family, as its source names it (timm's model module: resnet,
    vision_transformer, convnext, ...; else the name with its size digits dropped)."""
    return source_of(ms).family(ms)


def _weights(ms: ModelSpec) -> tuple[str, bool, str]:
    from pipelines.models.hub import HubWeights, WeightsUnavailableError, check_sources
    from pipelines.models.weights import weight_sources

    if ms.weights == "random":
        return "seeded random", True, ""
    if ms.weights == "file":
        return f"file:{ms.path}", True, ""  # a local file or URL: its loader says when it is missing
    label = source_of(ms).weights_label(ms)
    if label:
        return label, True, ""
    sources = weight_sources(ms)
    where = ", ".join(f"hub:{s.repo_id}" if isinstance(s, HubWeights) else f"url:{s.url}" for s in sources)
    try:
        check_sources(ms.model_id, ms.arch_ref, sources)
    except WeightsUnavailableError as exc:
        return where or "unknown", False, str(exc)
    return where or "unknown", True, ""


def _meta_shapes(ms: ModelSpec, hw) -> tuple[int | None, int | None, int | None, str]:
    """(num_features, num_classes, params, head problem) of the architecture built on the meta
    device (timm, torchvision, lite0) and run there on one image of size hw (shapes only: a head
    whose input is spatial, or that the forward never calls, shows); (None, None, None, "")
    where that is not possible."""
    import torch

    from pipelines.models.heads import find_head, forward_capture

    src = source_of(ms)
    if not src.builds_on_meta:
        return None, None, None, ""
    try:
        with torch.device("meta"):
            module = src.architecture(ms)
    except Exception as exc:  # noqa: BLE001 - an architecture that does not build says why
        return None, None, None, f"the architecture does not build: {type(exc).__name__}: {exc}"
    params = sum(p.numel() for p in module.parameters())
    try:
        head = find_head(module)
        if hw is not None:
            forward_capture(module.eval(), head, torch.empty(1, 3, *hw, device="meta"), verify=False)
    except Exception as exc:  # noqa: BLE001 - ValueError/BadInput from the head checks, or the meta forward
        return None, None, params, str(exc)
    w = head.weight
    return int(w.reshape(w.shape[0], -1).shape[1]), int(w.shape[0]), int(params), ""


def describe(spec: str, shapes: bool = True) -> Described:
    """Everything knowable about a classifier MODEL string without its weights (see the module
    docstring). A string that does not parse or names no model raises UnknownModelError."""
    ms = check(spec)
    problems = []
    try:
        pre, _ = resolve_preprocess(ms)
    except (UnknownModelError, ValueError, OSError) as exc:  # e.g. an unknown tag: a row saying why
        pre = None
        problems.append(f"no eval transform: {exc}")
    where, ready, why = _weights(ms)
    m = c = params = None
    head = ""
    if shapes:
        m, c, params, head = _meta_shapes(ms, pre.crop_hw if pre is not None else None)
    return Described(ms, where, ready, why, pre, family_of(ms), _recipe(ms), m, c, params, head, problems)


def _recipe(ms: ModelSpec) -> str:
    """The training recipe column: random weights and user checkpoints say so; an untagged
    pretrained string is the architecture's default weights."""
    if ms.weights == "random":
        return "random"
    if ms.weights == "file":
        return "checkpoint"
    return pretrain_of(ms.tag, ms.name) or "default"


def parse(spec: str) -> ModelSpec:
    return parse_model_spec(spec)
