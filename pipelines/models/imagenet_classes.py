"""ImageNet-1k class names and synsets, offline (timm ships the metadata).

`imagenet_class_names()` gives short, unique names usable in prompts ("an image of a {}."):
the first comma-separated part of timm's description, with the two ImageNet name clashes
made unique (134/517 'crane' -> 'crane (bird)'/'crane (machine)', 639 'maillot' -> 'tank suit').
"""

from __future__ import annotations

import functools

_CLASH_FIX = {134: "crane (bird)", 517: "crane (machine)", 639: "tank suit"}


@functools.lru_cache(maxsize=1)
def _info():
    from timm.data import ImageNetInfo

    return ImageNetInfo("imagenet-1k")


@functools.lru_cache(maxsize=1)
def imagenet_synsets() -> tuple[str, ...]:
    """The 1000 WordNet ids in standard ImageNet-1k index order (n01440764 = 0)."""
    return tuple(_info().label_names())


@functools.lru_cache(maxsize=1)
def imagenet_descriptions() -> tuple[str, ...]:
    """timm's full descriptions ('goldfish, Carassius auratus')."""
    info = _info()
    return tuple(info.index_to_description(i) for i in range(1000))


@functools.lru_cache(maxsize=1)
def imagenet_class_names() -> tuple[str, ...]:
    """Short unique class names, index order."""
    names = [d.split(",")[0].strip() for d in imagenet_descriptions()]
    for i, n in _CLASH_FIX.items():
        names[i] = n
    assert len(set(names)) == 1000
    return tuple(names)


@functools.lru_cache(maxsize=1)
def synset_to_index() -> dict[str, int]:
    return {s: i for i, s in enumerate(imagenet_synsets())}
