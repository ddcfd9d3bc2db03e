"""`sing fit-translator`'s options and input checks."""
from __future__ import annotations

from dataclasses import dataclass

from pipelines.errors import BadInput
from pipelines.options import PrecisionOptions, StreamOptions, _templates, opt


class FitError(BadInput):
    pass


@dataclass
class FitOptions(PrecisionOptions, StreamOptions):
    models: list[str] = opt([], "classifier MODEL string; repeat to fit several translators in one decode pass "
                                "(each model's own sums, one --out each)", flag="--model", append=True,
                            required=True, metavar="MODEL")
    outs: list[str] = opt([], "translator .safetensors path or URL, one per --model (its report: OUT.report.json)",
                          flag="--out", append=True, required=True, identity=False, metavar="OUT")
    clip: str | None = opt(None, "CLIP model whose image embeddings are the targets (openclip:ARCH@TAG); not "
                                 "needed with --clip-embeddings")
    clip_embeddings: str | None = opt(None, "read the targets from this `sing embed-images` directory: no CLIP "
                                            "model runs (its identity comes from the directory)")
    class_text: str | None = opt(None, "class prompt embeddings for the zero-shot check (`sing embed-text` "
                                       "Parquet; default: computed with the CLIP, or from the node's cache)")
    heldout_shards: list[str] | None = opt(None, "shards held out to choose lambda (default: 10%% of the shards, "
                                                 "evenly spaced)")
    heldout_fraction: float = opt(0.1, "share of the shards held out when --heldout-shards is not given", cli=False)
    lambdas: list[float] | None = opt(None, "ridge penalties to try (default: a grid relative to the data)")
    templates: str = opt("single", "class prompt templates for the zero-shot check: single | ensemble",
                         check=_templates)


def check_fit(cfg: FitOptions) -> None:
    if not cfg.models:
        raise FitError("give at least one --model")
    if len(cfg.outs) != len(cfg.models):
        raise FitError(f"give one --out per --model ({len(cfg.models)} models, {len(cfg.outs)} --out)")
    if len(set(cfg.outs)) != len(cfg.outs):
        raise FitError("two --out paths are the same: each model's translator needs its own")
    if not cfg.clip and not cfg.clip_embeddings:
        raise FitError("give --clip (the CLIP that computes the targets) or --clip-embeddings DIR (made by "
                       "`sing embed-images`)")


def split_shards(cfg: FitOptions):
    from pipelines.io.shards import expand_shards

    train = expand_shards(cfg.shards)
    if cfg.heldout_shards:
        held = expand_shards(cfg.heldout_shards)
        held_set = set(held)
        train = [s for s in train if s not in held_set]
    else:
        if len(train) < 2:
            raise FitError(f"need at least 2 shards (some are held out to choose lambda), got {len(train)}; "
                           "add shards or pass --heldout-shards")
        # evenly spaced, not the last k: shards are often class-contiguous (`sing shards
        # make` writes them so), and the tail would hold out whole classes instead of a sample
        k = max(1, int(round(len(train) * cfg.heldout_fraction)))
        pick = {min(len(train) - 1, int((i + 0.5) * len(train) / k)) for i in range(k)}
        held = [s for i, s in enumerate(train) if i in pick]
        train = [s for i, s in enumerate(train) if i not in pick]
    if not train:
        raise FitError("no training shards left after holding out")
    return train, held
