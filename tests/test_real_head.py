"""The null-space invariance on a real ImageNet head (EfficientNet-Lite0 from PyPI) and
real photos shipped with scikit-image."""
import numpy as np
import pytest
import torch

from sing_ops import HeadDecomposition, logit_drift, matched_perturbations


@pytest.fixture(scope="module")
def lite0_features():
    import skimage.data
    from PIL import Image

    from pipelines.io.images import normalise, to_uint8_view
    from pipelines.models.classifiers import load_classifier

    clf = load_classifier("lite0")
    imgs = [Image.fromarray(getattr(skimage.data, n)()) for n in ("chelsea", "coffee", "astronaut", "rocket")]
    x = torch.from_numpy(np.stack([to_uint8_view(i, clf.preprocess) for i in imgs]))
    with torch.inference_mode():
        f, logits = clf.features_and_logits(normalise(x, clf.preprocess))
    return clf, f, logits


def test_real_head_null_removal_keeps_logits(lite0_features):
    clf, f, logits = lite0_features
    dec = HeadDecomposition.from_weight(clf.head_weight)
    assert clf.head_weight.shape == (1000, 1280)
    assert (dec.rank, dec.null_dim) == (1000, 280)
    f64 = f.double()
    f_eq = dec.remove_null(f64)
    assert torch.linalg.vector_norm(f64 - f_eq, dim=-1).min() > 0.05 * torch.linalg.vector_norm(f64, dim=-1).min()
    w = clf.head_weight.double()
    drift = logit_drift(w, f64, f_eq)
    assert drift.max() < 1e-9 * logits.abs().max()
    # the same check in float32, as the pipeline computes it
    f_eq32 = dec.to(dtype=torch.float32).remove_null(f)
    assert logit_drift(clf.head_weight, f, f_eq32).max() < 1e-3
    # top-1 unchanged and the real photos are recognised (Egyptian cat 285, espresso 967)
    pred = (f_eq @ w.T + clf.head_bias.double()).argmax(-1)
    assert torch.equal(pred, logits.argmax(-1))
    assert pred[0].item() == 285 and pred[1].item() == 967


def test_real_head_perturbations_of_equal_norm_move_logits_orders_of_magnitude_more(lite0_features):
    clf, f, _ = lite0_features
    dec = HeadDecomposition.from_weight(clf.head_weight)
    w = clf.head_weight.double()
    f_eq, f_rnd, f_pri = matched_perturbations(f.double(), dec, generator=torch.Generator().manual_seed(0))
    null = logit_drift(w, f.double(), f_eq).max()
    assert logit_drift(w, f.double(), f_rnd).min() > 1e6 * null
    assert logit_drift(w, f.double(), f_pri).min() > 1e6 * null
