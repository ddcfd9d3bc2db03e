"""What the classifier, CLIP and HF loaders share: close-match suggestions for unknown names,
the seed of a random init, and telling a failed download from any other error."""
from __future__ import annotations

import difflib
import hashlib
import os

from pipelines.errors import BadInput


def suggest(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=5, cutoff=0.6)
    return f" Did you mean: {', '.join(close)}?" if close else ""


def seed_for(model_id: str) -> int:
    return int.from_bytes(hashlib.sha256(model_id.encode()).digest()[:8], "little") & ((1 << 63) - 1)


def seeded(ms, make):
    """make() under a seed from the model id: every process builds the same random weights."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed_for(ms.model_id))
        return make()


def download_error(e: BaseException) -> bool:
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        mod = type(e).__module__ or ""
        if isinstance(e, (OSError, ConnectionError, TimeoutError)) or mod.split(".")[0] in (
                "huggingface_hub", "urllib", "requests", "httpx", "urllib3", "http"):
            return True
        e = e.__cause__ or e.__context__
    return False


def offline_error(ms, e: BaseException) -> BadInput:
    return BadInput(
        f"could not download the pretrained weights for {ms.model_id} (offline? "
        f"HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '')!r}): {type(e).__name__}: "
        f"{str(e)[:300]}. Put the weights in the local cache, or pass a local checkpoint "
        f"instead: {ms.arch_ref}@/path/to/weights.safetensors (or .pt/.pth/.bin)")
