"""Scores, the batched scorer and steering against naive float64 loops."""
import math

import numpy as np
import pytest
import torch

from sing_ops import (AuditScorer, HeadDecomposition, ScoreError, SteerError, Translator, TranslatorMismatch,
                      angle_deg, attribute_score, concept_angles, image_score, logit_drift, steer)


def _naive_angle(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    c = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    return math.degrees(math.acos(max(-1.0, min(1.0, c))))


def test_angle_matches_naive_and_is_safe_at_extremes():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(50, 7, generator=g, dtype=torch.float64), torch.randn(50, 7, generator=g, dtype=torch.float64)
    got = angle_deg(a, b)
    for i in range(50):
        assert got[i].item() == pytest.approx(_naive_angle(a[i], b[i]), abs=1e-9)
    v = torch.randn(3, 5)
    assert torch.all(angle_deg(v, 2.5 * v) < 1e-3) and not torch.isnan(angle_deg(v, v)).any()
    assert torch.allclose(angle_deg(v, -v), torch.full((3,), 180.0), atol=1e-3)
    # tiny angles stay accurate in float64 (arccos of a cosine would return 0 here)
    x = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    y = torch.tensor([[1.0, 1e-9]], dtype=torch.float64)
    assert angle_deg(x, y).item() == pytest.approx(math.degrees(1e-9), rel=1e-6)
    with pytest.raises(ScoreError, match="zero vector"):
        angle_deg(torch.zeros(1, 3), torch.ones(1, 3))
    with pytest.raises(ScoreError, match="NaN"):
        angle_deg(torch.tensor([[float("nan"), 1.0]]), torch.ones(1, 2))


def test_attribute_and_image_score_definitions():
    g = torch.Generator().manual_seed(1)
    z, z_eq = torch.randn(8, 6, generator=g, dtype=torch.float64), torch.randn(8, 6, generator=g, dtype=torch.float64)
    t_one = torch.randn(6, generator=g, dtype=torch.float64)
    t_rows = torch.randn(8, 6, generator=g, dtype=torch.float64)
    a1, a2, i = attribute_score(z, z_eq, t_one), attribute_score(z, z_eq, t_rows), image_score(z, z_eq)
    for k in range(8):
        assert a1[k].item() == pytest.approx(_naive_angle(z[k], t_one) - _naive_angle(z_eq[k], t_one), abs=1e-9)
        assert a2[k].item() == pytest.approx(_naive_angle(z[k], t_rows[k]) - _naive_angle(z_eq[k], t_rows[k]), abs=1e-9)
        assert i[k].item() == pytest.approx(_naive_angle(z[k], z_eq[k]), abs=1e-9)
    with pytest.raises(ScoreError, match="one vector"):
        attribute_score(z, z_eq, torch.randn(3, 6))
    with pytest.raises(ScoreError, match="5 dims"):
        attribute_score(z, z_eq, torch.randn(5))
    ca = concept_angles(z, t_rows[:3])
    assert ca.shape == (8, 3) and ca[2, 1].item() == pytest.approx(_naive_angle(z[2], t_rows[1]), abs=1e-6)


def _setup(c=10, m=40, d=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(c, m, generator=g, dtype=torch.float64)
    t = Translator(torch.randn(d, m, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64))
    f = torch.randn(32, m, generator=g, dtype=torch.float64).abs()
    text = torch.randn(c, d, generator=g, dtype=torch.float64)
    return w, HeadDecomposition.from_weight(w), t, f, text, g


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-9), (torch.float32, 2e-2)])
def test_scorer_matches_naive_per_image_loop(dtype, tol):
    w, dec, t, f, text, g = _setup()
    labels = torch.randint(0, 10, (32,), generator=g)
    concepts = torch.randn(5, 12, generator=g, dtype=torch.float64)
    out = AuditScorer(w, dec, t, text, concepts, dtype=dtype).score(f, labels)
    p_n = dec.null_basis @ dec.null_basis.T
    for i in range(32):
        fi = f[i].numpy()
        f_eq = fi - p_n.numpy() @ fi
        z, z_eq = t.weight.numpy() @ fi + t.bias.numpy(), t.weight.numpy() @ f_eq + t.bias.numpy()
        y, pred = int(labels[i]), int(np.argmax(w.numpy() @ fi))
        assert int(out["pred"][i]) == pred
        exp_as = _naive_angle(z, text[y]) - _naive_angle(z_eq, text[y])
        assert out["as_deg"][i].item() == pytest.approx(exp_as, abs=tol)
        assert out["pred_as_deg"][i].item() == pytest.approx(
            _naive_angle(z, text[pred]) - _naive_angle(z_eq, text[pred]), abs=tol)
        assert out["is_deg"][i].item() == pytest.approx(_naive_angle(z, z_eq), abs=tol)
        assert out["null_norm_frac"][i].item() == pytest.approx(
            np.linalg.norm(p_n.numpy() @ fi) / np.linalg.norm(fi), abs=1e-5)
        for k in range(5):
            assert out["concept_before"][i, k].item() == pytest.approx(_naive_angle(z, concepts[k]), abs=tol)
            assert out["concept_after"][i, k].item() == pytest.approx(_naive_angle(z_eq, concepts[k]), abs=tol)
    assert out["logit_drift"].max() < (1e-9 if dtype == torch.float64 else 1e-3)


def test_scorer_reports_undefined_scores_without_null_space():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(50, 20, generator=g)  # m < c: no null space
    t = Translator(torch.randn(8, 20, generator=g), torch.zeros(8))
    out = AuditScorer(w, HeadDecomposition.from_weight(w), t, torch.randn(50, 8), torch.randn(3, 8)).score(
        torch.randn(4, 20, generator=g), torch.tensor([0, 1, 2, 3]))
    for col in ("as_deg", "is_deg", "pred_as_deg"):
        assert torch.isnan(out[col]).all(), col  # undefined, never 0
    assert torch.isnan(out["concept_after"]).all() and not torch.isnan(out["concept_before"]).any()
    assert torch.all(out["null_norm_frac"] == 0)


def test_scorer_bad_input():
    w, dec, t, f, text, _ = _setup()
    with pytest.raises(TranslatorMismatch, match="translator expects 40-d"):
        AuditScorer(torch.randn(10, 41), HeadDecomposition.from_weight(torch.randn(10, 41)), t, text)
    with pytest.raises(ScoreError, match="class text embeddings must be"):
        AuditScorer(w, dec, t, text[:5])
    sc = AuditScorer(w, dec, t, text)
    with pytest.raises(ScoreError, match="NaN/Inf in features"):
        sc.score(torch.full((2, 40), float("nan")), torch.tensor([0, 1]))
    with pytest.raises(ScoreError, match="labels must be in"):
        sc.score(f[:2], torch.tensor([0, 10]))
    with pytest.raises(ScoreError, match=r"features must be \(B, 40\)"):
        sc.score(torch.randn(2, 39), torch.tensor([0, 1]))
    # checked=True (the caller filtered its rows) skips the value checks, not the shape check,
    # and gives the same numbers
    a, b = sc.score(f[:4], torch.tensor([0, 1, 2, 3])), sc.score(f[:4], torch.tensor([0, 1, 2, 3]), checked=True)
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert torch.isnan(sc.score(torch.full((1, 40), float("nan")), torch.tensor([0]), checked=True)["is_deg"]).all()
    with pytest.raises(ScoreError, match=r"features must be \(B, 40\)"):
        sc.score(torch.randn(2, 39), torch.tensor([0, 1]), checked=True)


@pytest.mark.parametrize("target", [5.0, 25.0, 40.0])
def test_steer_hits_requested_image_score_without_moving_logits(target):
    w, dec, t, f, text, _ = _setup(c=10, m=60, d=12, seed=4)
    res = steer(f, dec, t, text[3], is_deg=target)
    assert res.reachable.any()
    r = res.reachable
    assert torch.all((res.is_deg[r] - target).abs() < 1e-3)
    assert torch.all(res.max_is_deg[~r] <= target + 1e-9)  # unreachable ones say so, honestly
    assert torch.isnan(res.eps[~r]).all() and torch.isnan(res.is_deg[~r]).all()
    drift = logit_drift(w, f, res.f_steered)
    assert drift.max() < 1e-9 * (f @ w.T).abs().max()
    # the step is along the null space only
    assert torch.allclose(dec.remove_null(res.f_steered), dec.remove_null(f), atol=1e-9)
    # moving along the cosine gradient brings T(f) closer to the target text
    assert torch.all(res.as_deg[r] > 0)


def test_steer_unreachable_and_fixed_eps():
    w, dec, t, f, text, _ = _setup(seed=5)
    res = steer(f, dec, t, text[0], is_deg=179.0)
    assert not res.reachable.any() and torch.all(res.max_is_deg < 179.0)
    fixed = steer(f, dec, t, text[0], eps=0.5)
    assert torch.all(fixed.eps == 0.5)
    assert torch.allclose(torch.linalg.vector_norm(fixed.f_steered - f, dim=-1), torch.full((32,), 0.5, dtype=torch.float64))
    # the exact solver agrees with the fixed-step path: steering by the found eps gives the same IS
    exact = steer(f, dec, t, text[0], is_deg=10.0)
    again = steer(f, dec, t, text[0], eps=exact.eps)
    r = exact.reachable
    assert torch.allclose(again.is_deg[r], exact.is_deg[r], atol=1e-9)


def test_steer_bad_input():
    w, dec, t, f, text, _ = _setup()
    with pytest.raises(SteerError, match="exactly one"):
        steer(f, dec, t, text[0])
    with pytest.raises(SteerError, match=r"\(0, 180\)"):
        steer(f, dec, t, text[0], is_deg=0.0)
    full = HeadDecomposition.from_weight(torch.randn(50, 40))
    with pytest.raises(SteerError, match="no null space"):
        steer(f, full, t, text[0], eps=1.0)


def test_checked_scoring_reads_nothing_back_from_the_device(monkeypatch):
    """Every tensor -> Python value (bool, item, int, float) is a device sync on a GPU. The
    unchecked path does ~30 per batch; checked=True (rows already filtered) must do none."""
    w, dec, t, f, text, g = _setup()
    sc = AuditScorer(w, dec, t, text, torch.randn(5, 12, generator=g, dtype=torch.float64))
    labels = torch.randint(0, 10, (32,), generator=g)
    reads = []
    for name in ("__bool__", "item", "__int__", "__float__"):
        orig = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name,
                            lambda self, *a, _o=orig, _n=name, **k: reads.append(_n) or _o(self, *a, **k))
    sc.score(f, labels)
    assert len(reads) > 10  # the count works
    reads.clear()
    sc.score(f, labels, checked=True)
    assert reads == []
