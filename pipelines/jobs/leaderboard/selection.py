"""Which models a leaderboard ranks: SELECTION strings expanded to MODEL strings.

    FILE          a text file of MODEL strings, one per line (# comments, blank lines)
    timm:PATTERN  timm's pretrained tags with a 1000-class head whose name matches the fnmatch
                  PATTERN (`timm:*` is the whole ImageNet zoo: 1,321 tags in timm 1.0.31);
                  a name without a wildcard is an ordinary MODEL string
    paper         the paper's 13 classifiers (pipelines.models.zoo)
    NAME          a zoo name (resnet, dinovit1, ...) or any MODEL string

Order is kept and duplicates dropped, so adding models to a selection keeps the others' order.
"""
from __future__ import annotations

import fnmatch
from pathlib import Path

from pipelines.errors import BadInput


class SelectionError(BadInput):
    """A SELECTION that names no model (exit 2)."""


def timm_imagenet_tags(pattern: str = "*") -> list[str]:
    """timm's pretrained tags whose head has 1000 classes, matching `pattern`, as MODEL strings."""
    import timm

    out = []
    for name in timm.list_pretrained():
        if fnmatch.fnmatchcase(name, pattern):
            cfg = timm.models.get_pretrained_cfg(name)
            if cfg is not None and (cfg.num_classes or 0) == 1000:
                out.append(f"timm:{name}")
    return out


def _lines(path: Path) -> list[str]:
    out = []
    for ln in path.read_text(encoding="utf-8").splitlines():
        ln = ln.split("#", 1)[0].strip()
        if ln:
            out.append(ln)
    return out


def expand(selections: list[str]) -> list[str]:
    """The MODEL strings of every SELECTION, in order, each once."""
    from pipelines.models.zoo import BY_NAME, PAPER_MODELS

    models: list[str] = []
    for sel in selections:
        sel = sel.strip()
        if not sel:
            continue
        if sel == "paper":
            found = [m.model for m in PAPER_MODELS]
        elif sel.startswith("timm:") and any(c in sel for c in "*?["):
            found = timm_imagenet_tags(sel[len("timm:"):])
            if not found:
                raise SelectionError(f"{sel!r} matches no timm pretrained tag with a 1000-class head")
        elif Path(sel).is_file():
            found = _lines(Path(sel))
            if not found:
                raise SelectionError(f"{sel} lists no MODEL string")
        elif sel.lower() in BY_NAME:
            found = [BY_NAME[sel.lower()].model]
        else:
            found = [sel]
        models += found
    models = list(dict.fromkeys(models))
    if not models:
        raise SelectionError("give at least one --models SELECTION (a file, timm:PATTERN, paper or MODEL strings)")
    return models
