"""HeadDecomposition against explicit float64 projectors."""
import pytest
import torch

from sing_ops import HeadDecomposition, HeadError, logit_drift, matched_perturbations

SHAPES = [(10, 64), (64, 64), (100, 40), (1000, 2048), (7, 3)]


def _explicit_projectors(w: torch.Tensor, tol: float):
    # Independent route: eigenvectors of W^T W instead of the SVD of W.
    evals, evecs = torch.linalg.eigh(w.T.double() @ w.double())
    keep = evals > tol**2
    vp = evecs[:, keep]
    return vp @ vp.T, torch.eye(w.shape[1], dtype=torch.float64) - vp @ vp.T


@pytest.mark.parametrize("shape", SHAPES)
def test_decomposition_matches_explicit_projectors(shape):
    g = torch.Generator().manual_seed(sum(shape))
    w = torch.randn(*shape, generator=g)
    dec = HeadDecomposition.from_weight(w)
    c, m = shape
    assert dec.rank == min(c, m)
    assert dec.null_dim == m - min(c, m)
    assert dec.rank + dec.null_dim == m
    p_p, p_n = _explicit_projectors(w, 1e-5)
    assert torch.allclose(dec.principal_basis @ dec.principal_basis.T, p_p, atol=1e-9)
    f = torch.randn(5, m, generator=g, dtype=torch.float64)
    assert torch.allclose(dec.null_part(f), f @ p_n, atol=1e-9)
    assert torch.allclose(dec.remove_null(f), f @ p_p, atol=1e-9)
    # W f~ == W f: the whole point.
    drift = logit_drift(w.double(), f, dec.remove_null(f))
    assert drift.max() < 1e-9 * w.abs().max() * f.abs().max() * m
    # float32 path keeps logits within float tolerance too.
    f32 = f.float()
    d32 = logit_drift(w, f32, dec.to(dtype=torch.float32).remove_null(f32))
    assert d32.max() < 1e-3 * (f32 @ w.T).abs().max()


def test_rank_deficient_head_has_larger_null_space():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(20, 5, generator=g, dtype=torch.float64) @ torch.randn(5, 30, generator=g, dtype=torch.float64)
    dec = HeadDecomposition.from_weight(w)  # rank 5
    assert (dec.rank, dec.null_dim) == (5, 25)
    assert torch.allclose(w @ dec.null_basis, torch.zeros(20, 25, dtype=torch.float64), atol=1e-9)


def test_relative_tolerance_and_recorded_threshold():
    s = torch.tensor([10.0, 1.0, 1e-3, 1e-7])
    u, _ = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    w = u @ torch.diag(s.double()) @ v[:, :4].T
    assert HeadDecomposition.from_weight(w).rank == 3  # absolute 1e-5 keeps 1e-3
    dec = HeadDecomposition.from_weight(w, atol=None, rtol=1e-2)
    assert dec.rank == 2 and dec.threshold == pytest.approx(0.1)
    assert dec.summary()["rank_rtol"] == 1e-2


def test_no_null_space_when_classes_exceed_features():
    dec = HeadDecomposition.from_weight(torch.randn(1000, 512))
    assert dec.null_dim == 0 and not dec.has_null_space
    f = torch.randn(3, 512, dtype=torch.float64)
    assert torch.equal(dec.remove_null(f), f)


def test_from_module_linear_and_1x1_conv():
    lin = torch.nn.Linear(32, 10)
    conv = torch.nn.Conv2d(32, 10, kernel_size=1)
    with torch.no_grad():
        conv.weight.copy_(lin.weight[:, :, None, None])
    a, b = HeadDecomposition.from_module(lin), HeadDecomposition.from_module(conv)
    assert a.null_dim == b.null_dim == 22
    assert torch.allclose(a.null_basis @ a.null_basis.T, b.null_basis @ b.null_basis.T, atol=1e-9)
    with pytest.raises(HeadError, match="1x1"):
        HeadDecomposition.from_module(torch.nn.Conv2d(32, 10, kernel_size=3))
    with pytest.raises(HeadError, match="unsupported head"):
        HeadDecomposition.from_module(torch.nn.ReLU())


@pytest.mark.parametrize("bad,match", [
    (torch.randn(10), "2-D"),
    (torch.randn(2, 3, 4), "2-D"),
    (torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), "NaN/Inf"),
    (torch.tensor([[1.0, float("inf")], [0.0, 1.0]]), "NaN/Inf"),
    (torch.zeros(0, 4), "empty"),
])
def test_bad_weights_are_refused(bad, match):
    with pytest.raises(HeadError, match=match):
        HeadDecomposition.from_weight(bad)


def test_feature_dimension_mismatch_is_clear():
    dec = HeadDecomposition.from_weight(torch.randn(10, 64))
    with pytest.raises(HeadError, match="features have 63 dims, head expects 64"):
        dec.remove_null(torch.randn(2, 63))


def test_matched_perturbations_move_logits_far_more_than_null_removal():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(100, 256, generator=g, dtype=torch.float64)
    dec = HeadDecomposition.from_weight(w)
    f = torch.randn(64, 256, generator=g, dtype=torch.float64).abs()
    f_eq, f_rnd, f_pri = matched_perturbations(f, dec, generator=g)
    size = torch.linalg.vector_norm(f - f_eq, dim=-1)
    assert torch.allclose(torch.linalg.vector_norm(f_rnd - f, dim=-1), size)
    assert torch.allclose(torch.linalg.vector_norm(f_pri - f, dim=-1), size)
    null_drift = logit_drift(w, f, f_eq)
    assert logit_drift(w, f, f_rnd).min() > 1e6 * null_drift.max()
    assert logit_drift(w, f, f_pri).min() > 1e6 * null_drift.max()
    # a principal perturbation lies entirely in the row space: nothing in the null space
    assert torch.allclose(dec.null_part(f_pri - f), torch.zeros_like(f), atol=1e-10)
