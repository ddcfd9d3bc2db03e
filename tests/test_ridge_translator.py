"""RidgeStats against a direct float64 solve; Translator save/load checks."""
import json

import numpy as np
import pytest
import torch

from pipelines.models.translator_file import load_translator, save_translator
from sing_ops import RidgeError, RidgeStats, Translator, TranslatorMismatch, select_lambda, translation_quality


def _data(n=300, m=20, d=6, seed=0):
    g = np.random.default_rng(seed)
    f = g.normal(size=(n, m)) + 3.0  # non-centred, like post-ReLU features
    a = g.normal(size=(d, m))
    z = f @ a.T + 0.5 + 0.1 * g.normal(size=(n, d))
    return f, z


def _direct_ridge(f, z, lam):
    # Independent route: augmented design [f, 1] with an unpenalised intercept, numpy lstsq.
    n, m = f.shape
    x = np.hstack([f, np.ones((n, 1))])
    reg = np.sqrt(lam) * np.hstack([np.eye(m), np.zeros((m, 1))])
    sol, *_ = np.linalg.lstsq(np.vstack([x, reg]), np.vstack([z, np.zeros((m, z.shape[1]))]), rcond=None)
    return sol[:m].T, sol[m]


@pytest.mark.parametrize("lam", [1e-3, 1.0, 50.0])
def test_ridge_equals_direct_solve(lam):
    f, z = _data()
    stats = RidgeStats(20, 6).update(torch.from_numpy(f), torch.from_numpy(z))
    t = stats.solve(lam)
    a, b = _direct_ridge(f, z, lam)
    assert np.allclose(t.weight.double().numpy(), a, atol=1e-5, rtol=1e-5)
    assert np.allclose(t.bias.double().numpy(), b, atol=1e-4, rtol=1e-5)


def test_batches_workers_and_order_do_not_matter():
    f, z = _data(n=257)
    whole = RidgeStats(20, 6).update(f, z)
    perm = np.random.default_rng(1).permutation(257)
    workers = [RidgeStats(20, 6) for _ in range(3)]
    for i, start in enumerate(range(0, 257, 17)):  # uneven batches, shuffled order, 3 workers
        idx = perm[start:start + 17]
        workers[i % 3].update(f[idx], z[idx])
    merged = workers[0].merge(workers[1]).merge(workers[2])
    assert merged.n == 257
    for key in ("sum_f", "sum_z", "sum_ff", "sum_fz", "sum_zz"):
        assert torch.allclose(getattr(merged, key), getattr(whole, key), rtol=1e-12, atol=1e-9)
    assert torch.allclose(merged.solve(0.1).weight, whole.solve(0.1).weight, atol=1e-6)
    # state_dict round trip (how partial sums travel between workers)
    again = RidgeStats.from_state_dict(merged.state_dict())
    assert torch.equal(again.sum_ff, merged.sum_ff) and again.n == merged.n


def test_select_lambda_picks_heldout_minimum_and_reports_every_value():
    f, z = _data(n=400, m=30, seed=2)
    z = z + 2.0 * np.random.default_rng(5).normal(size=z.shape)  # noisy: shrinkage helps
    train = RidgeStats(30, 6).update(f[:300], z[:300])
    grid = [1e-4, 1e-1, 10.0, 1e3, 1e5]
    sel = select_lambda(train, (f[300:], z[300:]), grid, source_model="m", clip_model="c")
    assert [row["lambda"] for row in sel.table] == grid
    mses = [row["mse"] for row in sel.table]
    assert sel.best_lambda == grid[int(np.argmin(mses))]
    # independent check of the reported numbers for the chosen lambda
    a, b = _direct_ridge(f[:300], z[:300], sel.best_lambda)
    pred = f[300:] @ a.T + b
    row = sel.table[int(np.argmin(mses))]
    assert row["mse"] == pytest.approx(np.mean((pred - z[300:]) ** 2), rel=1e-4)
    sst = np.sum((z[300:] - z[300:].mean(0)) ** 2)
    assert row["r2"] == pytest.approx(1 - np.sum((pred - z[300:]) ** 2) / sst, rel=1e-4)
    cos = np.sum(pred * z[300:], 1) / np.linalg.norm(pred, axis=1) / np.linalg.norm(z[300:], axis=1)
    assert row["mean_cosine"] == pytest.approx(cos.mean(), rel=1e-4)
    assert sel.translator.metadata["source_model"] == "m"
    assert sel.translator.metadata["lambda"] == sel.best_lambda


@pytest.mark.parametrize("call,match", [
    (lambda s: s.update(np.ones((3, 5)), np.ones((3, 6))), "dimension mismatch"),
    (lambda s: s.update(np.ones((3, 20)), np.ones((4, 6))), "equal n"),
    (lambda s: s.update(np.full((3, 20), np.nan), np.ones((3, 6))), "NaN"),
    (lambda s: s.solve(1.0), "at least 2 samples"),
    (lambda s: s.merge(RidgeStats(21, 6)), "cannot merge"),
])
def test_ridge_bad_input(call, match):
    with pytest.raises(RidgeError, match=match):
        call(RidgeStats(20, 6))


def test_translator_round_trip_and_refusals(tmp_path):
    f, z = _data()
    t = RidgeStats(20, 6).update(f, z).solve(1.0, source_model="timm:test_resnet", clip_model="openclip:tiny")
    path = save_translator(t, tmp_path / "t.safetensors")
    side = json.loads((tmp_path / "t.safetensors.json").read_text())
    assert side["in_dim"] == 20 and side["id"] == t.id
    back = load_translator(path, in_dim=20, out_dim=6, source_model="timm:test_resnet", clip_model="openclip:tiny")
    x = torch.randn(4, 20)
    assert torch.equal(back(x), t(x))
    assert back.id == t.id
    with pytest.raises(TranslatorMismatch, match="input dim 20.*used with 2048"):
        load_translator(path, in_dim=2048)
    with pytest.raises(TranslatorMismatch, match="source model 'timm:test_resnet'.*'timm:resnet50'"):
        load_translator(path, source_model="timm:resnet50")
    with pytest.raises(TranslatorMismatch, match="made with CLIP openclip:tiny .*used with openclip:ViT-L-14@openai"):
        load_translator(path, clip_model="openclip:ViT-L-14@openai")
    with pytest.raises(TranslatorMismatch, match="feature dimension mismatch"):
        back(torch.randn(2, 19))
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(TranslatorMismatch, match="not a readable"):
        load_translator(tmp_path / "junk.safetensors")
    with pytest.raises(FileNotFoundError):
        load_translator(tmp_path / "missing.safetensors")


def test_translation_quality_perfect_fit():
    f, _ = _data()
    t = Translator(torch.randn(6, 20, dtype=torch.float64), torch.randn(6, dtype=torch.float64))
    z = t(torch.from_numpy(f))
    q = translation_quality(t, f, z)
    assert q["mse"] < 1e-20 and q["r2"] == pytest.approx(1.0) and q["mean_cosine"] == pytest.approx(1.0)
