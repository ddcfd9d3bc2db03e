"""Known-answer test of the whole method on the planted-leakage world."""
import torch

from sing_ops import AuditScorer, select_lambda
from sing_ops.synthetic import make_world


def _scores(leak):
    world = make_world(leak=leak)
    held = make_world(leak=leak, seed=99)  # same geometry, fresh samples
    sel = select_lambda(world.ridge_stats(), (held.features, held.clip))
    scorer = AuditScorer(world.weight, world.decomposition, sel.translator, world.class_text, dtype=torch.float64)
    out = scorer.score(held.features, held.labels)
    assert (out["pred"] == held.labels).float().mean() > 0.95  # the head classifies well
    assert out["logit_drift"].max() < 1e-9
    return out, sel


def test_planted_leakage_is_recovered():
    knobs = [0.0, 0.5, 1.0, 2.0, 3.0]
    results = [_scores(k) for k in knobs]
    med_abs = [r["as_deg"].abs().median().item() for r, _ in results]
    mean_as = [r["as_deg"].mean().item() for r, _ in results]
    mean_is = [r["is_deg"].mean().item() for r, _ in results]
    # the translator is good in every world
    assert all(sel.table[[row["lambda"] for row in sel.table].index(sel.best_lambda)]["r2"] > 0.9
               for _, sel in results)
    # no leakage: class meaning is not in the null space, |AS| is small next to IS
    assert med_abs[0] < 0.5 and mean_is[0] > 10
    # leakage pulls T(f~) away from the class text: signed AS falls monotonically, and
    # |AS| grows once the planted signal dominates the geometric nuisance effect
    assert all(a > b for a, b in zip(mean_as, mean_as[1:])), mean_as
    assert all(a < b for a, b in zip(med_abs[2:], med_abs[3:])), med_abs
    assert med_abs[-1] > 5 * med_abs[0]
    # ordering of worlds by IS/|AS| (both definitions) is recovered
    ratio_of_means = [i / r["as_deg"].abs().mean().item() for i, (r, _) in zip(mean_is, results)]
    median_ratio = [(r["is_deg"] / r["as_deg"].abs()).median().item() for r, _ in results]
    assert ratio_of_means[0] > ratio_of_means[-1] and median_ratio[0] > median_ratio[-1]
    assert ratio_of_means[0] > 3 * ratio_of_means[2]
