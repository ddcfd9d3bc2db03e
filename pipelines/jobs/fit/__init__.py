"""`sing fit-translator`: one streaming pass computing every model's classifier features and the
CLIP image embeddings side by side (one decode feeds all), or reading the embeddings from a
`sing embed-images` cache (no CLIP runs), reduced on the workers to each model's RidgeStats
(Ray Data aggregate: per-block sums, merged), then solved once per model on the driver.
Held-out shards choose lambda and measure translation quality and zero-shot accuracy.

    options.py  FitOptions, input checks, the held-out split
    stats.py    the sums per block and model, packed between workers
    passes.py   the training aggregation and the held-out stream, side by side when they fit
    run.py      run_fits / run_fit: load, both passes (healing), solve, write
"""
from __future__ import annotations

from pipelines.jobs.fit.options import FitError, FitOptions
from pipelines.jobs.fit.run import run_fit, run_fits

__all__ = ["FitError", "FitOptions", "run_fit", "run_fits", "cli_args", "cli_run"]


def cli_args(p) -> None:
    from pipelines.models.spec import MODEL_EPILOG
    from pipelines.options import add_arguments

    add_arguments(p, FitOptions)
    p.epilog = MODEL_EPILOG


def cli_run(a) -> int:
    from pipelines.options import from_namespace

    for rep in run_fits(from_namespace(FitOptions, a, progress=not a.quiet)):
        h, zs = rep["heldout"], rep["zero_shot_top1"]
        print(f"translator {rep['translator_path']} (id {rep['translator_id']}): {rep['n_train']} train / "
              f"{rep['n_heldout']} held-out images, lambda={rep['lambda']:.4g}")
        print(f"  held-out MSE {h['mse']:.4g}  R^2 {h['r2']:.3f}  mean cosine {h['mean_cosine']:.3f}")
        if "translated" in zs:
            print(f"  zero-shot top-1: T(f) {zs['translated']:.3f}  CLIP {zs['clip']:.3f}  (classifier "
                  f"{zs['classifier']:.3f})")
        else:
            print(f"  zero-shot top-1: classifier {zs['classifier']:.3f}; T(f) and CLIP not measured "
                  f"({zs['class_text']['skipped']})")
    return 0
