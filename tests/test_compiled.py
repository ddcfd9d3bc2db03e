"""`--compile` (pipelines.models.compiled): the compiled forward gives eager's (f, logits) for
short, full and long batches, and after the warm-up no batch recompiles: a padded batch
made under inference_mode and a full batch that is an inference tensor used to each cost a
recompile inside the stream (Dynamo guards on inference tensors and on the capture slot)."""
from __future__ import annotations

import pytest
import torch

from pipelines.models.classifiers import load_classifier
from pipelines.models.compiled import CompiledClassifier
from pipelines.models.precision import features_and_logits
from tests.pipeline_data import CLASSIFIER

B = 4


@pytest.fixture(scope="module")
def compiled():
    torch._dynamo.reset()
    clf = load_classifier(CLASSIFIER)
    c = CompiledClassifier(clf, "default", B)
    c.warm_up("fp32", "cpu")
    yield clf, c
    c.close()


def _frames(compiled_counter) -> int:
    return int(compiled_counter["stats"]["unique_graphs"])


def test_no_batch_recompiles_after_the_warm_up(compiled):
    from torch._dynamo.utils import counters

    _, c = compiled
    before = _frames(counters)
    g = torch.Generator().manual_seed(0)
    shape = (3, *c.clf.preprocess.crop_hw)
    features_and_logits(c, torch.randn(B - 1, *shape, generator=g), "fp32")  # padded
    with torch.inference_mode():
        inf = torch.randn(B, *shape, generator=g)
    features_and_logits(c, inf, "fp32")  # an inference tensor, full
    features_and_logits(c, torch.randn(B, *shape, generator=g), "fp32")  # a normal tensor, full
    features_and_logits(c, torch.randn(1, *shape, generator=g), "fp32")  # a last batch of one
    assert _frames(counters) == before  # each recompile adds a graph


@pytest.mark.parametrize("n", [1, B - 1, B, 2 * B + 1])
def test_compiled_matches_eager(compiled, n):
    clf, c = compiled
    x = torch.randn(n, 3, *clf.preprocess.crop_hw, generator=torch.Generator().manual_seed(n))
    f_e, l_e = features_and_logits(clf, x, "fp32")
    f_c, l_c = features_and_logits(c, x, "fp32")
    assert f_c.shape == f_e.shape == (n, clf.num_features) and l_c.shape == (n, clf.num_classes)
    torch.testing.assert_close(f_c, f_e, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(l_c, l_e, rtol=1e-4, atol=1e-4)
