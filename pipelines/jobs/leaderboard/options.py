"""`sing leaderboard`'s options (one declaration for the CLI and the run id)."""
from __future__ import annotations

from dataclasses import dataclass

from pipelines.options import (DecodeOptions, PrecisionOptions, RankOptions, StreamOptions, _at_least, _templates,
                               opt)


@dataclass
class LeaderboardOptions(PrecisionOptions, RankOptions, DecodeOptions, StreamOptions):
    # not in the board's id: a board grows by models; each model's row is its own
    models: list[str] = opt([], "which models: a file of MODEL strings, timm:PATTERN (timm's 1000-class tags), "
                                "paper, zoo names or MODEL strings; repeat to add", flag="--models", append=True,
                            required=True, identity=False, metavar="SELECTION")
    clip: str = opt(help="the CLIP whose space the translators map into (openclip:ARCH@TAG; the paper's: "
                         "openclip:ViT-L-14@openai)")
    fit_shards: list[str] = opt(help="shards the translators are fitted on (their CLIP embeddings are computed "
                                     "once, for every model)", nargs="+")
    shards: list[str] = opt(help="evaluation shards every model is audited on (e.g. ImageNet val)", nargs="+",
                            flag="--eval-shards")
    heldout_shards: list[str] | None = opt(None, "fit shards held out to choose lambda (default: 10%% of "
                                                 "--fit-shards, evenly spaced)")
    out: str = opt(help="the leaderboard's directory (local path or fsspec URL): CLIP cache, translators, results, "
                        "summary rows", identity=False)
    concepts: str | None = opt(None, "concept vocabulary (text file or text-embedding Parquet) for each model's "
                                     "concepts that move most (default: the project's vocabulary)")
    class_text: str | None = opt(None, "class prompt embeddings (`sing embed-text` Parquet; default: computed "
                                       "once with --clip)")
    templates: str = opt("single", "class prompt templates when computed: single | ensemble", check=_templates)
    lambdas: list[float] | None = opt(None, "ridge penalties to try (default: a grid relative to each model's data)")
    models_per_pass: int = opt(4, "models that share one decode pass (models of one eval transform)",
                               identity=False, check=_at_least(1))
    bootstrap_resamples: int = opt(1000, "resamples of the ratios' bootstrap intervals", check=_at_least(100))
    top_concepts: int = opt(5, "concepts listed per model (those whose mean AS moves most)", check=_at_least(0))


def sub_options(cls, opts: LeaderboardOptions, **fields):
    """A job's options (FitOptions, AuditOptions, EmbedImagesOptions) with the leaderboard's
    values for every option they share, then `fields`."""
    from pipelines.options import declared

    names = {f.name for f in declared(cls)}
    shared = {f.name: getattr(opts, f.name) for f in declared(type(opts)) if f.name in names}
    shared.pop("shards", None)
    return cls(**{**shared, **fields})
