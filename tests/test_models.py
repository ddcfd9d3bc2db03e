import argparse
import hashlib
import os
import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from pipelines.errors import BadInput
from pipelines.models.spec import UnknownModelError, parse_model_spec, slug
from pipelines.models.checkpoints import UnsafeCheckpointError, load_state_dict_file
from pipelines.models.classifiers import Classifier, load_classifier
from pipelines.models.heads import find_head
from pipelines.models.preprocess import PreprocessSpec

# ----------------------------------------------------------------------------- MODEL strings


@pytest.mark.parametrize("s, source, name, weights, tag, model_id", [
    ("timm:resnet50", "timm", "resnet50", "pretrained", None, "timm:resnet50"),
    ("timm:resnet50.a1_in1k", "timm", "resnet50", "pretrained", "a1_in1k", "timm:resnet50.a1_in1k"),
    (" TIMM:test_resnet@random ", "timm", "test_resnet", "random", None, "timm:test_resnet@random"),
    ("torchvision:resnet50", "torchvision", "resnet50", "pretrained", None, "torchvision:resnet50"),
    ("torchvision:resnet50.IMAGENET1K_V1", "torchvision", "resnet50", "pretrained", "IMAGENET1K_V1",
     "torchvision:resnet50.IMAGENET1K_V1"),
    ("lite0", "lite0", "tf_efficientnet_lite0", "pretrained", None, "lite0"),
    ("openclip:ViT-L-14@openai", "openclip", "ViT-L-14", "pretrained", "openai", "openclip:ViT-L-14@openai"),
    ("openclip:tiny@random", "openclip", "tiny", "random", None, "openclip:tiny@random"),
    # a tag with random weights keeps the tag's preprocessing (rehearsing a paper model offline)
    ("timm:resnet50.a1_in1k@random", "timm", "resnet50", "random", "a1_in1k", "timm:resnet50.a1_in1k@random"),
    ("hf:facebook/dinov2-large-imagenet1k-1-layer", "hf", "facebook/dinov2-large-imagenet1k-1-layer", "pretrained",
     None, "hf:facebook/dinov2-large-imagenet1k-1-layer"),
    ("hf:org/x@random", "hf", "org/x", "random", None, "hf:org/x@random"),
])
def test_parse_valid(s, source, name, weights, tag, model_id):
    ms = parse_model_spec(s)
    assert (ms.source, ms.name, ms.weights, ms.tag, ms.model_id) == (source, name, weights, tag, model_id)
    assert ms.path is None and ms.raw == s.strip()


def test_parse_checkpoint_and_options(tmp_path):
    ms = parse_model_spec(f"timm:resnet50@{tmp_path}/run@3/ep 10.safetensors")
    assert ms.weights == "file" and ms.path == f"{tmp_path}/run@3/ep 10.safetensors"
    assert ms.model_id == "timm:resnet50@ep 10.safetensors"
    assert ms.slug == "timm-resnet50-ep-10.safetensors"
    ms = parse_model_spec("timm:test_vit@random?num_classes=10")
    assert ms.num_classes == 10 and ms.model_id == "timm:test_vit@random?num_classes=10"
    assert slug("openclip:ViT-L-14@openai/x y") == "openclip-ViT-L-14-openai-x-y"


@pytest.mark.parametrize("s, why", [
    ("resnet50", "did you mean timm:resnet50"),
    ("keras:resnet50", "unknown source"),
    ("timm:resnet50@xyz", "neither 'random' nor a checkpoint"),
    ("timm:resnet50@/x/ckpt.txt", "must end with"),
    ("openclip:ViT-L-14", "need @TAG"),
    ("hf:dinov2-large", "expected ORG/NAME"),
    ("timm:test_vit@random?num_classes=0", "bad random option"),
    ("", "empty"),
])
def test_parse_invalid(s, why):
    with pytest.raises(UnknownModelError) as e:
        parse_model_spec(s)
    assert why in str(e.value) and "Accepted forms" in str(e.value)


# ----------------------------------------------------------------------------- tiny models


def _check_linear_head(clf: Classifier, batch=3):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, clf.preprocess.size, clf.preprocess.size, generator=g)
    f, logits = clf.features_and_logits(x)
    assert f.shape == (batch, clf.num_features) and logits.shape == (batch, clf.num_classes)
    assert f.dtype == logits.dtype == torch.float32
    recon = f @ clf.head_weight.T + (clf.head_bias if clf.head_bias is not None else 0)
    scale = logits.abs().max().item()
    assert scale > 0
    torch.testing.assert_close(recon, logits, atol=1e-5 * scale, rtol=1e-4)
    # a real, input-dependent forward (torchvision random inits give ~1e-9 logits: compare relatively)
    assert (logits[0] - logits[1]).abs().max().item() > 1e-3 * scale
    return f, logits


@pytest.mark.parametrize("spec, head_name, shape, view_key", [
    ("timm:test_resnet@random", "fc", (1000, 96), "160c-168r-bilinear"),
    ("timm:test_vit@random", "head", (1000, 64), "160c-168r-bicubic"),
    ("timm:test_efficientnet@random", "classifier", (1000, 256), "160c-168r-bicubic"),
    ("torchvision:mobilenet_v3_small@random", "classifier.3", (1000, 1024), "224c-256r-bilinear"),
])
def test_tiny_classifiers(spec, head_name, shape, view_key):
    clf = load_classifier(spec)
    assert clf.model_id == spec and clf.slug == slug(spec)
    assert clf.head_name == head_name and tuple(clf.head_weight.shape) == shape
    assert clf.head_weight.device.type == "cpu" and clf.head_weight.dtype == torch.float32
    assert clf.preprocess.view_key == view_key
    assert not clf.module.training and not any(p.requires_grad for p in clf.module.parameters())
    assert clf.class_names[285] == "Egyptian cat" and len(clf.class_names) == 1000
    assert len(clf.checkpoint_sha256) == 64
    _check_linear_head(clf)


def test_timm_preprocess_from_data_config():
    import timm
    from timm.data import resolve_data_config

    clf = load_classifier("timm:test_vit@random")
    cfg = resolve_data_config({}, model=clf.module)
    assert clf.preprocess.size == cfg["input_size"][-1] == 160
    assert clf.preprocess.resize == int(160 / cfg["crop_pct"]) == 168
    assert clf.preprocess.mean == tuple(cfg["mean"]) and clf.preprocess.std == tuple(cfg["std"])
    assert timm.is_model("test_vit")


def test_num_classes_option_gives_null_space():
    clf = load_classifier("timm:test_resnet@random?num_classes=10")
    assert tuple(clf.head_weight.shape) == (10, 96) and clf.num_features == 96
    assert clf.class_names == [f"class_{i}" for i in range(10)]
    _check_linear_head(clf)


def test_random_init_is_seeded_from_spec():
    a = load_classifier("timm:test_resnet@random")
    b = load_classifier("timm:test_resnet@random")
    c = load_classifier("timm:test_resnet@random?num_classes=1000")
    assert a.checkpoint_sha256 == b.checkpoint_sha256
    assert torch.equal(a.head_weight, b.head_weight)
    assert c.checkpoint_sha256 != a.checkpoint_sha256  # another spec, other weights
    # the global RNG is neither consumed nor reseeded by loading
    torch.manual_seed(123)
    r1 = torch.rand(3)
    torch.manual_seed(123)
    load_classifier("timm:test_resnet@random")
    assert torch.equal(torch.rand(3), r1)
    # the seed depends on the spec only (sha256, not Python's salted hash()), so every process
    # (Ray actors included) builds these same weights
    from pipelines.models.registry import seed_for

    assert seed_for("timm:test_resnet@random") == int.from_bytes(
        hashlib.sha256(b"timm:test_resnet@random").digest()[:8], "little") & ((1 << 63) - 1)


def test_to_dtype_and_channels_last():
    clf = load_classifier("timm:test_resnet@random").to("cpu", dtype=torch.float64, channels_last=True)
    assert clf.dtype == torch.float64 and next(clf.module.parameters()).dtype == torch.float64
    x = torch.randn(2, 3, 160, 160, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    f, logits = clf.features_and_logits(x)
    torch.testing.assert_close(f @ clf.head_weight.double().T.float() + clf.head_bias, logits,
                               atol=1e-4, rtol=1e-4)


def test_conv_head_before_pooling_is_refused():
    with pytest.raises(ValueError, match="spatial"):
        load_classifier("torchvision:squeezenet1_1@random")


def test_find_head_generic_and_missing():
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    assert find_head(net) is net[2]
    conv = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Conv2d(8, 5, 1), torch.nn.Flatten())
    assert find_head(conv) is conv[1]
    with pytest.raises(ValueError, match="no final nn.Linear"):
        find_head(torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Conv2d(3, 3, 3)))


@pytest.mark.parametrize("spec, suggestion", [
    ("timm:resnet5O@random", "resnet50"),
    ("torchvision:resnet51@random", "resnet50"),
])
def test_unknown_names_suggest(spec, suggestion):
    with pytest.raises(UnknownModelError, match=f"Did you mean: .*{suggestion}"):
        load_classifier(spec)


def test_unknown_pretrained_tag():
    with pytest.raises(UnknownModelError, match="no pretrained tag 'foo'.*a1_in1k"):
        load_classifier("timm:resnet50.foo")
    with pytest.raises(UnknownModelError, match="no weights 'V9'"):
        load_classifier("torchvision:resnet18.V9")
    with pytest.raises(UnknownModelError, match="load_clip"):
        load_classifier("openclip:tiny@random")


def test_pretrained_offline_is_a_clear_error(monkeypatch):
    # not cached and HF_HUB_OFFLINE=1 (conftest): refused before any download (tests/test_hub.py
    # covers the probe, the cache and the CLI)
    from pipelines.models.hub import WeightsUnavailableError

    with pytest.raises(WeightsUnavailableError, match=r"timm:test_resnet are not in the local cache.*"
                                                      r"HF_HUB_OFFLINE=1 is set.*timm:test_resnet@/path"):
        load_classifier("timm:test_resnet")


def test_a_failed_download_is_a_clear_error(monkeypatch):
    # the source looked reachable, then the download failed (a flaky proxy)
    import urllib.error

    import torchvision.models._api

    import pipelines.models.hub

    def no_net(*a, **k):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(pipelines.models.hub, "url_reachable", lambda url: True)
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", no_net)
    monkeypatch.setattr(torch.hub, "_hub_dir", "/nonexistent/torch-hub")  # nothing cached
    with pytest.raises(BadInput, match=r"could not download .*torchvision:mobilenet_v3_small@/path"):
        load_classifier("torchvision:mobilenet_v3_small")


# ----------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def ref():
    return load_classifier("timm:test_resnet@random")


def test_checkpoint_safetensors_roundtrip(ref, tmp_path):
    sd = {k: v.contiguous() for k, v in ref.module.state_dict().items()}
    p = tmp_path / "ck.safetensors"
    save_file(sd, str(p))
    clf = load_classifier(f"timm:test_resnet@{p}")
    assert clf.model_id == "timm:test_resnet@ck.safetensors"
    assert clf.checkpoint_sha256 == hashlib.sha256(p.read_bytes()).hexdigest()
    assert torch.equal(clf.head_weight, ref.head_weight)
    x = torch.randn(2, 3, 160, 160)
    torch.testing.assert_close(clf.features_and_logits(x)[1], ref.features_and_logits(x)[1])


@pytest.mark.parametrize("wrap", ["state_dict", "model", None])
def test_checkpoint_torch_wrappers_and_prefix(ref, tmp_path, wrap):
    sd = {f"module.{k}": v for k, v in ref.module.state_dict().items()}
    obj = {wrap: sd, "epoch": 3} if wrap else sd
    p = tmp_path / "ck.pth"
    torch.save(obj, p)
    clf = load_classifier(f"timm:test_resnet@{p}")
    assert torch.equal(clf.head_weight, ref.head_weight)


def test_checkpoint_with_other_num_classes(tmp_path):
    src = load_classifier("timm:test_resnet@random?num_classes=7")
    p = tmp_path / "c7.pt"
    torch.save(src.module.state_dict(), p)
    clf = load_classifier(f"timm:test_resnet@{p}")
    assert tuple(clf.head_weight.shape) == (7, 96) and torch.equal(clf.head_weight, src.head_weight)
    src_tv = load_classifier("torchvision:mobilenet_v3_small@random?num_classes=5")
    p = tmp_path / "tv5.safetensors"
    save_file({k: v.contiguous() for k, v in src_tv.module.state_dict().items()}, str(p))
    assert tuple(load_classifier(f"torchvision:mobilenet_v3_small@{p}").head_weight.shape) == (5, 1024)


def test_checkpoint_mismatches_are_named(ref, tmp_path):
    sd = dict(ref.module.state_dict())
    sd["conv1.0.weight"] = torch.zeros(3, 3, 3, 3)
    p = tmp_path / "bad.pt"
    torch.save(sd, p)
    with pytest.raises(ValueError, match=r"shape mismatch at 'conv1.0.weight'"):
        load_classifier(f"timm:test_resnet@{p}")
    sd = dict(ref.module.state_dict())
    del sd["fc.bias"]
    sd["extra.weight"] = torch.zeros(1)
    torch.save(sd, p)
    with pytest.raises(ValueError, match=r"1 missing keys .*fc.bias.*1 unexpected keys .*extra.weight"):
        load_classifier(f"timm:test_resnet@{p}")
    with pytest.raises(FileNotFoundError):
        load_classifier(f"timm:test_resnet@{tmp_path}/nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="not a valid torch checkpoint") as e:
        load_classifier(f"timm:test_resnet@{tmp_path}/junk.pt")
    assert not isinstance(e.value, UnsafeCheckpointError)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("how", ["torch.save", "raw pickle", "raw pickle p2", "custom class"])
def test_pickle_with_code_is_refused_and_never_runs(tmp_path, how):
    marker = tmp_path / "PWNED"
    p = tmp_path / f"evil-{how.replace(' ', '_').replace('.', '_')}.pth"
    if how == "torch.save":
        torch.save({"fc.weight": torch.zeros(2, 2), "x": _Evil(marker)}, p)
    elif how == "raw pickle":  # protocol 4: torch's unpickler stops at the framing opcode
        p.write_bytes(pickle.dumps(_Evil(marker), protocol=4))
    elif how == "raw pickle p2":  # protocol 2: rejected at the GLOBAL itself
        p.write_bytes(pickle.dumps(_Evil(marker), protocol=2))
    else:
        torch.save({"state_dict": {"w": torch.zeros(1)}, "args": argparse.Namespace(lr=1)}, p)
    with pytest.raises(UnsafeCheckpointError) as e:
        load_state_dict_file(str(p))
    assert str(p) in str(e.value) and "refusing to unpickle code" in str(e.value)
    assert not marker.exists()
    with pytest.raises(UnsafeCheckpointError):
        load_classifier(f"timm:test_resnet@{p}")
    assert not marker.exists()


# ----------------------------------------------------------------------------- lite0 (real weights)


def test_lite0_real_imagenet_weights(chelsea, coffee):
    from pipelines.io.images import normalise, to_uint8_view

    clf = load_classifier("lite0")
    assert tuple(clf.head_weight.shape) == (1000, 1280) and clf.num_features == 1280
    assert clf.preprocess == PreprocessSpec(224, 256, "bilinear", (0.5,) * 3, (0.5,) * 3)
    assert clf.class_names[285] == "Egyptian cat" and clf.class_names[967] == "espresso"
    u8 = torch.from_numpy(np.stack([to_uint8_view(im, clf.preprocess) for im in (chelsea, coffee)]))
    f, logits = clf.features_and_logits(normalise(u8, clf.preprocess))
    top5 = logits.topk(5).indices.tolist()
    # chelsea: a tabby; tiger cat (282) / Egyptian cat (285) / tabby (281) are within a few
    # percent of each other, so the cat is checked in the top-5; coffee is clear-cut.
    assert 285 in top5[0] and set(top5[0][:3]) == {281, 282, 285}
    assert top5[1][0] == 967
    assert logits.softmax(-1)[1, 967] > 0.5
    recon = f @ clf.head_weight.T + clf.head_bias
    torch.testing.assert_close(recon, logits, atol=1e-3, rtol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_bf16_channels_last(chelsea):
    from pipelines.io.images import normalise, to_uint8_view

    ref = load_classifier("timm:test_resnet@random")
    u8 = torch.from_numpy(to_uint8_view(chelsea, ref.preprocess))[None]
    f32, l32 = ref.features_and_logits(normalise(u8, ref.preprocess))
    clf = load_classifier("timm:test_resnet@random").to("cuda", dtype=torch.bfloat16, channels_last=True)
    x = normalise(u8.cuda(), clf.preprocess, dtype=torch.bfloat16, channels_last=True)
    f, logits = clf.features_and_logits(x)
    assert f.device.type == "cuda" and f.dtype == torch.float32 and clf.head_weight.device.type == "cpu"
    assert torch.nn.functional.cosine_similarity(f.cpu(), f32).item() > 0.99
    assert torch.nn.functional.cosine_similarity(logits.cpu(), l32).item() > 0.99
