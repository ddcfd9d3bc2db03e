"""Class indices from what users type: an index, a class name, or (ImageNet heads) an alias."""
from __future__ import annotations

import difflib
import functools
from pathlib import Path

IMAGENET_ALIASES = Path(__file__).resolve().parents[1] / "vocab" / "imagenet_aliases.txt"


@functools.lru_cache(maxsize=1)
def imagenet_aliases() -> dict[int, tuple[str, list[str]]]:
    """{index: (name, [aliases])} from pipelines/vocab/imagenet_aliases.txt
    (index<TAB>name<TAB>aliases separated by '; ')."""
    out: dict[int, tuple[str, list[str]]] = {}
    for line in IMAGENET_ALIASES.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        idx, name, *rest = line.split("\t")
        aliases = [a.strip() for a in (rest[0] if rest else "").split(";") if a.strip()]
        out[int(idx)] = (name, aliases)
    return out


def resolve_class(value, class_names) -> int:
    """A class index from an index ("817"), a class name ("sports car", case-insensitive) or,
    for 1000-class ImageNet heads, an alias ("sport car"). Unknown or ambiguous names raise
    ValueError with close matches."""
    names = list(class_names)
    text = str(value).strip()
    if text.lstrip("-").isdigit():
        i = int(text)
        if not 0 <= i < len(names):
            raise ValueError(f"class index {i} is outside the head's {len(names)} classes (0..{len(names) - 1})")
        return i
    low = text.lower()
    exact = [i for i, n in enumerate(names) if n.lower() == low]
    if len(exact) == 1:
        return exact[0]
    table: dict[str, set[int]] = {}
    for i, n in enumerate(names):
        table.setdefault(n.lower(), set()).add(i)
    if len(names) == 1000:
        from pipelines.models.imagenet_classes import imagenet_class_names

        if tuple(names) == imagenet_class_names():
            for i, (_, aliases) in imagenet_aliases().items():
                for a in aliases:
                    table.setdefault(a.lower(), set()).add(i)
    hits = sorted(table.get(low, ()))
    if len(hits) == 1:
        return hits[0]
    if len(hits) > 1:
        raise ValueError(f"class name {text!r} is ambiguous: it names "
                         + ", ".join(f"{i} ({names[i]})" for i in hits) + "; give the index or the full name")
    close = difflib.get_close_matches(low, list(table), n=5, cutoff=0.6)
    hint = (" Did you mean: " + ", ".join(f"{c!r} ({', '.join(str(i) for i in sorted(table[c]))})"
                                          for c in close) + "?") if close else ""
    raise ValueError(f"unknown class {text!r} for a head with {len(names)} classes.{hint}")
