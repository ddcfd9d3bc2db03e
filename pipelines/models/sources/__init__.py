"""Where each classifier library's facts live: one `Source` per MODEL source (timm,
torchvision, lite0, hf), as timm's pretrained cfg is one record per tag.

A source knows, for a parsed MODEL string: whether its name (and tag) exist, its eval
transform without building anything, where pretrained weights come from, how to build the
bare architecture (seeded random init, or on the meta device for shapes), how the library
loads its own pretrained weights, and how a local checkpoint goes in. `pipelines.models.resolve`
is the one resolver on top; the loader, the planner and the hub checks all ask it.

Imports nothing heavy at module level (pipelines.models.hub imports it).
"""
from __future__ import annotations

from pipelines.models.sources.base import Source
from pipelines.models.spec import ModelSpec, UnknownModelError

__all__ = ["Source", "source_of"]


def source_of(ms: ModelSpec) -> Source:
    """The Source of a parsed classifier MODEL string (a CLIP string is refused)."""
    if ms.source == "timm":
        from pipelines.models.sources.timm_source import TIMM as src
    elif ms.source == "torchvision":
        from pipelines.models.sources.torchvision_source import TORCHVISION as src
    elif ms.source == "lite0":
        from pipelines.models.sources.lite0_source import LITE0 as src
    elif ms.source == "hf":
        from pipelines.models.sources.hf_source import HF as src
    else:
        raise UnknownModelError(f"{ms.raw!r} is a CLIP model, not a classifier: load it with "
                                "pipelines.models.clip.load_clip")
    return src
