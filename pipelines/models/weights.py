"""Where a pretrained MODEL or CLIP string's weights come from, and whether they can be had now.

- `weight_sources(ms)`: the hub repos / URLs its loader would read, as the library resolves
  them (a classifier's source says so: pipelines.models.sources; open_clip's pretrained cfg).
- `require_weights(spec)`: checks a pretrained string before it is built: its weights are in the
  local cache, or their source can be reached (pipelines.models.hub); else
  WeightsUnavailableError (exit 2, one line naming the model and the ways to provide the
  weights). Callers run it on the driver, before any Ray work.
"""
from __future__ import annotations

import os

from pipelines.models.hub import HubWeights, UrlWeights, check_sources, hf_alternatives


def require_weights(spec) -> str | None:
    """check_sources for a MODEL or CLIP string (or ModelSpec). Non-pretrained strings and
    strings naming unknown models/tags pass: the loaders report those precisely."""
    from pipelines.models.spec import parse_model_spec

    ms = parse_model_spec(spec) if isinstance(spec, str) else spec
    if ms.weights != "pretrained":
        return None
    return check_sources(ms.model_id, ms.arch_ref, weight_sources(ms))


def weight_sources(ms) -> list:
    """Where a pretrained ModelSpec's weights come from, as its loader resolves them."""
    if ms.weights != "pretrained":
        return []
    if ms.source != "openclip":
        from pipelines.models.sources import source_of

        return source_of(ms).weight_sources(ms)
    import open_clip

    cfg = open_clip.get_pretrained_cfg(ms.name, ms.tag) if ms.tag else {}
    if not cfg or cfg.get("file"):
        return []
    if cfg.get("hf_hub"):  # 'org/name/' (default file) or 'org/name/file.bin'
        repo, filename = os.path.split(cfg["hf_hub"])
        files = hf_alternatives(filename or "open_clip_pytorch_model.bin", "open_clip_pytorch_model.bin",
                                "open_clip_model.safetensors")
        return [HubWeights(repo, files)]
    if cfg.get("url"):  # open_clip's own download cache
        url = cfg["url"]
        return [UrlWeights(url, os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(url)))]
    return []
