"""Prepared models travel packed (pipelines.stages.prepared): every tensor's bytes out of band,
rebuilt with its dtype, shape, class and grad flag into writable memory; a model scores
bit for bit as the driver's; through Ray's object store too."""
from __future__ import annotations

import torch

from pipelines.models.classifiers import load_classifier
from pipelines.stages.prepared import PreparedModel, pack, share, take, unpack
from tests.pipeline_data import CLASSIFIER


def test_tensors_of_every_kind_round_trip():
    g = torch.Generator().manual_seed(0)
    obj = {"f32": torch.randn(3, 4, generator=g), "bf16": torch.randn(5, generator=g).to(torch.bfloat16),
           "i64": torch.arange(7), "bool": torch.tensor([True, False]), "scalar": torch.tensor(2.5),
           "empty": torch.zeros(0, 3), "view": torch.randn(4, 6, generator=g).t(),
           "param": torch.nn.Parameter(torch.ones(2), requires_grad=False),
           "trainable": torch.nn.Parameter(torch.ones(2)), "other": ("not a tensor", 3)}
    pk = pack(obj)
    assert len(pk.arrays) == 9 and len(pk.blob) < 4096  # the bytes ride beside the pickle
    back = unpack(pk)
    for k, v in obj.items():
        if isinstance(v, torch.Tensor):
            assert type(back[k]) is type(v) and back[k].dtype == v.dtype and back[k].shape == v.shape, k
            assert torch.equal(back[k], v) and back[k].requires_grad == v.requires_grad, k
    assert back["other"] == ("not a tensor", 3)
    back["f32"].add_(1)  # writable, and not the original's memory
    assert torch.equal(back["f32"], obj["f32"] + 1)


def test_a_classifier_scores_bit_for_bit_after_the_object_store(ray_session):
    clf = load_classifier(CLASSIFIER)
    x = torch.randn(3, 3, *clf.preprocess.crop_hw, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        f, logits = clf.features_and_logits(x)
    ref = share(clf)
    got = take(ref).model
    assert got is not clf and got.checkpoint_sha256 == clf.checkpoint_sha256
    with torch.inference_mode():
        f2, logits2 = got.features_and_logits(x)
    assert torch.equal(f, f2) and torch.equal(logits, logits2)
    assert torch.equal(got.head_weight, clf.head_weight)
    # an unpacked object passes through take() as it is (in-process callers)
    p = PreparedModel(clf)
    assert take(p) is p
