"""ImageNet-1k class names and synsets, offline (timm ships the metadata).

`imagenet_class_names()` gives short, unique names usable in prompts ("an image of a {}."):
the first comma-separated part of timm's description, with the two ImageNet name clashes
made unique (134/517 'crane' -> 'crane (bird)'/'crane (machine)', 639 'maillot' -> 'tank suit').
"""

from __future__ import annotations

import functools

_CLASH_FIX = {134: "crane (bird)", 517: "crane (machine)", 639: "tank suit"}


def _timm_info_text(name: str) -> str:
    """A metadata file timm ships (timm/data/_info/), read without importing timm: importing
    it imports torch and torchvision, 4 s on a 2-core CPU, which `sing shards make` (a tar
    writer) paid just to map synsets to indices."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("timm")  # finds the package, runs none of it
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("timm is not installed: its ImageNet class metadata is needed")
    return (Path(list(spec.submodule_search_locations)[0]) / "data" / "_info" / name).read_text(encoding="utf-8")


@functools.lru_cache(maxsize=1)
def imagenet_synsets() -> tuple[str, ...]:
    """The 1000 WordNet ids in standard ImageNet-1k index order (n01440764 = 0)."""
    synsets = tuple(_timm_info_text("imagenet_synsets.txt").split())
    assert len(synsets) == 1000, len(synsets)
    return synsets


@functools.lru_cache(maxsize=1)
def imagenet_descriptions() -> tuple[str, ...]:
    """timm's descriptions, its synsets' lemmas ('goldfish, Carassius auratus')."""
    lemmas = dict(line.split("\t", 1) for line in _timm_info_text("imagenet_synset_to_lemma.txt").splitlines()
                  if "\t" in line)
    return tuple(lemmas[s] for s in imagenet_synsets())


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
