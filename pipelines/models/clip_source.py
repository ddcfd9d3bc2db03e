"""What a CLIP MODEL string builds, decided in one place, and the identity that files and
manifests record of it.

OpenAI trained its CLIPs with QuickGELU (x * sigmoid(1.702 x)) in every MLP. open_clip's
plain configs (ViT-L-14, RN50, ...) build GELU, and open_clip 3.3's
create_model("ViT-L-14", pretrained="openai") keeps the config's GELU and only warns; the
tag's own record (open_clip.pretrained: quick_gelu=True on every `openai` tag) is what the
weights were trained with. So here the architecture settings a pretrained tag records win
over its config, and every CLIP source states its activation:

    openclip:ViT-L-14@openai                     ViT-L-14 with the tag's quick_gelu=True
    openclip:ViT-L-14-quickgelu@openai           the same network (same identity id)
    openclip:ViT-B-32@/p/ckpt.safetensors?act=quickgelu   a local checkpoint (or URL) trained
                                                 with QuickGELU; without ?act= the config's
    openclip:tiny@random?act=quickgelu           any config, random weights, QuickGELU

A contradiction is BadInput (exit 2): ?act= against the tag or an ARCH-quickgelu config, a
-quickgelu config with a tag trained with GELU, or a checkpoint whose own record (safetensors
metadata `quick_gelu`/`activation`, or an open_clip_config.json beside it, open_clip's
layout) says otherwise. An activation has no weights, so a state dict alone cannot tell.

The identity (`identity`): MODEL string, arch, tag, activation, the built config's hash,
where the weights come from (hub repo + resolved revision, the weights' sha256, or the
random seed) and a short `id` over what fixes the network: the config (activation included),
the tag's preprocessing and the weights' source (hub repo, file sha256 or seed). Two files
agree on a CLIP when their ids agree and, where both know them, their weights' sha256 do.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.errors import BadInput
from pipelines.models.spec import ModelSpec, UnknownModelError, parse_model_spec

TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "patch_size": 16, "width": 64, "layers": 2, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
ACTIVATION_OF = {True: "quickgelu", False: "gelu"}
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_FILE_SHA: dict[tuple, str] = {}  # (realpath, size, mtime_ns) -> sha256: GB checkpoints hashed once a process


class ClipActivationError(BadInput):
    """A stated activation that contradicts the tag, the config or the checkpoint's own record."""


class ClipIdentityMismatch(BadInput):
    """A translator or embeddings file made with another CLIP than the one it is used with."""


@dataclass(frozen=True)
class ClipSource:
    spec: ModelSpec
    model_cfg: dict  # the open_clip config as built: the tag's architecture settings and ?act= applied
    config_quick_gelu: bool  # the arch config's own setting (what open_clip 3.3 built for a tag)
    tag_cfg: dict = field(default_factory=dict)  # open_clip's pretrained cfg of the tag
    overrides: tuple = ()  # names of the model_cfg keys the tag or ?act= set (create_model kwargs)

    @property
    def arch(self) -> str:
        return self.spec.name

    @property
    def quick_gelu(self) -> bool:
        return bool(self.model_cfg.get("quick_gelu", False))

    @property
    def activation(self) -> str:
        return ACTIVATION_OF[self.quick_gelu]

    @property
    def preprocess_cfg(self) -> dict:
        """The tag's preprocessing settings (open_clip's defaults without a tag)."""
        from dataclasses import fields

        from open_clip.transform import PreprocessCfg

        keys = {f.name for f in fields(PreprocessCfg)}
        return {k: v for k, v in self.tag_cfg.items() if k in keys}

    def build_kwargs(self) -> dict:
        """Model keywords for open_clip.create_model: the activation always, stated, plus every
        other setting the tag records."""
        return {**{k: self.model_cfg[k] for k in self.overrides}, "quick_gelu": self.quick_gelu}


def _arch_keys() -> set[str]:
    """Tag settings that are architecture: the keywords open_clip's CLIP takes besides its
    tower configs (quick_gelu, init_logit_scale, ...)."""
    import inspect

    from open_clip.model import CLIP

    return set(inspect.signature(CLIP.__init__).parameters) - {"self", "embed_dim", "vision_cfg", "text_cfg",
                                                                  "cast_dtype", "output_dict"}


def _config(ms: ModelSpec) -> dict:
    if ms.name == "tiny":
        if ms.weights == "pretrained":
            raise UnknownModelError("openclip:tiny has no pretrained weights; use openclip:tiny@random")
        return copy.deepcopy(TINY_CFG)
    import open_clip

    from pipelines.models.registry import suggest

    cfg = open_clip.get_model_config(ms.name) if ms.name in open_clip.list_models() else None
    if cfg is None:
        raise UnknownModelError(f"open_clip has no model {ms.name!r}.{suggest(ms.name, open_clip.list_models())}")
    return cfg


def _tag_cfg(ms: ModelSpec) -> dict:
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(ms.name)
    if ms.tag in tags:
        return dict(open_clip.get_pretrained_cfg(ms.name, ms.tag))
    base = ms.name[: -len("-quickgelu")] if ms.name.endswith("-quickgelu") else None
    if base and ms.tag in open_clip.list_pretrained_tags_by_model(base):
        raise ClipActivationError(f"openclip:{ms.name}@{ms.tag}: the {ms.tag!r} weights of {base} were trained with "
                                  f"GELU, but {ms.name} builds QuickGELU; use openclip:{base}@{ms.tag}")
    raise UnknownModelError(f"open_clip has no pretrained tag {ms.tag!r} for {ms.name}; "
                            f"available: {', '.join(tags) or 'none'}")


def resolve_clip(spec) -> ClipSource:
    """The ClipSource of a CLIP MODEL string (or ModelSpec): config, tag settings, activation."""
    ms = parse_model_spec(spec) if isinstance(spec, str) else spec
    if ms.source != "openclip":
        raise UnknownModelError(f"{ms.raw!r} is not a CLIP model (openclip:ARCH@TAG|random|/path)")
    cfg = _config(ms)
    config_qg = bool(cfg.get("quick_gelu", False))
    tag_cfg = _tag_cfg(ms) if ms.weights == "pretrained" else {}
    # what the tag records wins over the config (a key the tag does not record leaves the config's)
    tag_arch = {k: v for k, v in tag_cfg.items() if k in _arch_keys()}
    overrides = set(tag_arch)
    if ms.act is not None:
        stated = ms.act == "quickgelu"
        if "quick_gelu" in tag_arch and bool(tag_arch["quick_gelu"]) != stated:
            raise ClipActivationError(f"{ms.raw}: ?act={ms.act}, but the {ms.tag!r} weights were trained with "
                                      f"{ACTIVATION_OF[bool(tag_arch['quick_gelu'])]}")
        if ms.name.endswith("-quickgelu") and not stated:
            raise ClipActivationError(f"{ms.raw}: ?act=gelu, but {ms.name} is open_clip's QuickGELU config")
        tag_arch["quick_gelu"] = stated
        overrides.add("quick_gelu")
    cfg.update(tag_arch)
    return ClipSource(ms, cfg, config_qg, tag_cfg, tuple(sorted(overrides)))


# ----------------------------------------------------------------------------- weights


def file_sha256(path) -> str:
    """sha256 of a file, remembered per (path, size, mtime) for this process."""
    from pipelines.io.manifest import file_sha256 as digest

    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    if key not in _FILE_SHA:
        _FILE_SHA[key] = digest(path)
    return _FILE_SHA[key]


def hub_facts(path) -> dict:
    """(hub repo, revision, sha256) of a file in a huggingface_hub cache
    (models--ORG--NAME/snapshots/REV/FILE); a large file's blob is named by its sha256."""
    parts = Path(path).parts
    out = {"hub_repo": None, "hub_revision": None}
    if "snapshots" in parts:
        i = len(parts) - 1 - parts[::-1].index("snapshots")
        if i >= 1 and parts[i - 1].startswith("models--") and i + 1 < len(parts):
            out = {"hub_repo": parts[i - 1][len("models--"):].replace("--", "/"), "hub_revision": parts[i + 1]}
    blob = os.path.basename(os.path.realpath(path))
    out["weights_sha256"] = blob if _SHA256_RE.match(blob) else file_sha256(path)
    return out


def _recorded_quick_gelu(path: str) -> tuple[bool, str] | None:
    """What a checkpoint file says of its activation: its safetensors metadata (quick_gelu:
    true|false, or activation: quickgelu|gelu), else an open_clip_config.json beside it."""
    if path.lower().endswith(".safetensors"):
        from safetensors import safe_open

        try:
            with safe_open(path, framework="pt") as fh:
                meta = fh.metadata() or {}
        except Exception:  # noqa: BLE001 - an unreadable file is reported by the loader
            meta = {}
        if str(meta.get("quick_gelu", "")).lower() in ("true", "false", "1", "0"):
            return meta["quick_gelu"].lower() in ("true", "1"), "its safetensors metadata quick_gelu"
        if meta.get("activation") in ACTIVATION_OF.values():
            return meta["activation"] == "quickgelu", "its safetensors metadata activation"
    side = Path(path).parent / "open_clip_config.json"
    if side.is_file():
        try:
            cfg = json.loads(side.read_text()).get("model_cfg")
        except (OSError, ValueError, AttributeError):
            cfg = None
        if isinstance(cfg, dict):
            return bool(cfg.get("quick_gelu", False)), f"{side} (model_cfg.quick_gelu)"
    return None


def check_checkpoint_activation(src: ClipSource, path: str) -> None:
    rec = _recorded_quick_gelu(path)
    if rec is not None and rec[0] != src.quick_gelu:
        base = src.arch[: -len("-quickgelu")] if src.arch.endswith("-quickgelu") else src.arch
        fix = f"?act={ACTIVATION_OF[rec[0]]}" + (f" (or openclip:{base}-quickgelu@...)" if rec[0] else "")
        raise ClipActivationError(f"{src.spec.raw}: the checkpoint records {ACTIVATION_OF[rec[0]]} ({rec[1]}), but "
                                  f"this MODEL string builds {src.activation}; state it: {fix}")


def weights_file(src: ClipSource) -> str | None:
    """The file the weights load from: the tag's hub (or URL) file, downloaded when not cached
    and the hub can be reached; a local copy of a checkpoint path or URL, its recorded
    activation checked; None for random weights."""
    ms = src.spec
    if ms.weights == "random":
        return None
    if ms.weights == "file":
        from pipelines.io.remote import local_copy

        path = local_copy(ms.path)
        check_checkpoint_activation(src, path)
        return path
    import open_clip.pretrained

    from pipelines.models.registry import download_error, offline_error

    try:
        path = open_clip.pretrained.download_pretrained(src.tag_cfg)
    except Exception as e:  # noqa: BLE001
        if download_error(e) or "download" in str(e).lower():
            raise offline_error(ms, e) from e
        raise
    if not path:  # a tag naming no file would build random weights
        raise UnknownModelError(f"open_clip's tag {ms.tag!r} for {ms.name} names no weights file")
    return path


# ----------------------------------------------------------------------------- identity


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def identity(src: ClipSource, path: str | None = None, resolve_weights: bool = True) -> dict:
    """The CLIP's identity. With resolve_weights, the weights' file is found (weights_file) and
    its hub revision and sha256 recorded; without, only what the MODEL string fixes (an
    official import names OpenAI's CLIP, whose weights it never had)."""
    from pipelines.models.registry import seed_for

    ms = src.spec
    if path is None and resolve_weights:
        path = weights_file(src)
    out = {"model": ms.model_id, "arch": src.arch, "tag": ms.tag, "activation": src.activation,
           "quick_gelu": src.quick_gelu, "config_sha256": _digest(src.model_cfg)[:16], "weights": ms.weights,
           "hub_repo": None, "hub_revision": None, "weights_sha256": None}
    if ms.weights == "random":
        out["seed"] = seed_for(ms.model_id)
        source = f"random:{out['seed']}"
    elif ms.weights == "file":
        out["path"] = ms.path
        if path:
            out["weights_sha256"] = file_sha256(path)
        source = f"sha256:{out['weights_sha256']}" if out["weights_sha256"] else None
    else:
        # 'org/name/' (the default file) or 'org/name/file.bin', as open_clip reads it
        out["hub_repo"] = os.path.split(src.tag_cfg.get("hf_hub") or "")[0] or None
        if path:
            facts = hub_facts(path)
            out.update({k: v for k, v in facts.items() if v})
        source = f"hub:{out['hub_repo']}" if out["hub_repo"] else f"url:{src.tag_cfg.get('url')}"
    out["id"] = None if source is None else "clip-" + _digest(
        [out["config_sha256"], src.preprocess_cfg if ms.weights == "pretrained" else {}, source])[:16]
    return out


def clip_identity(spec, resolve_weights: bool = True) -> dict:
    return identity(resolve_clip(spec), resolve_weights=resolve_weights)


def as_identity(clip) -> dict:
    """An identity as given, or what a MODEL string fixes without its weights (a string sing
    cannot build: its name only, compared by name)."""
    if isinstance(clip, dict):
        return clip
    try:
        return clip_identity(clip, resolve_weights=False)
    except ValueError:
        return {"model": clip, "id": None}


def describe(ident: dict) -> str:
    rev = f", hub revision {ident['hub_revision'][:12]}" if ident.get("hub_revision") else ""
    sha = f", weights sha256 {ident['weights_sha256'][:12]}" if ident.get("weights_sha256") else ""
    return f"{ident.get('model')} ({ident.get('activation') or 'activation not recorded'}{rev}{sha})"


def recorded_identity(meta: dict, what: str, remedy: str, official: bool = False) -> dict | None:
    """The CLIP identity a translator's or embeddings file's metadata records (None: it names
    no CLIP). A file from before identities were recorded has only its MODEL string, and its
    identity is derived from that, except where sing then built another network than the
    tag's weights were trained with (the tag records an activation its config does not: every
    `openai` tag): refused, unless the file is an official import, which came from OpenAI's
    real CLIP."""
    rec = meta.get("clip_identity")
    if isinstance(rec, str):
        rec = json.loads(rec)
    model = meta.get("clip_model")
    if rec:
        if model and rec.get("model") != model:
            raise ClipIdentityMismatch(f"{what} names CLIP {model!r} but records the identity of {rec.get('model')!r}; "
                                       f"{remedy}")
        return rec
    if not model:
        return None
    try:
        src = resolve_clip(model)
    except ValueError:  # no CLIP sing builds (an old test string): compared by name only
        return {"model": model, "id": None}
    if src.spec.weights == "pretrained" and src.quick_gelu != src.config_quick_gelu and not official:
        raise ClipIdentityMismatch(
            f"{what} was made before sing recorded CLIP activations: {model} was then built with "
            f"{ACTIVATION_OF[src.config_quick_gelu]}, but the {src.spec.tag!r} weights were trained with "
            f"{src.activation}; {remedy}")
    return {**identity(src, resolve_weights=False), "derived_from_name": True}


_DIFF_KEYS = ("model", "activation", "config_sha256", "hub_repo", "weights_sha256", "seed")


def check_same_clip(recorded: dict | None, used: dict | None, what: str, remedy: str) -> None:
    """Refuse (exit 2) a file made with another CLIP than `used`: other id (config with its
    activation, preprocessing, weights' source), or other weights' bytes where both know them
    (a hub repo moved to new weights). Ids unknown on either side: the MODEL strings decide."""
    if not recorded or not used:
        return
    same = recorded["id"] == used["id"] if recorded.get("id") and used.get("id") \
        else recorded.get("model") == used.get("model")
    a, b = recorded.get("weights_sha256"), used.get("weights_sha256")
    if same and not (a and b and a != b):
        return
    diff = "; ".join(f"{k} {recorded[k]!r} there vs {used[k]!r} here" for k in _DIFF_KEYS
                     if recorded.get(k) is not None and used.get(k) is not None and recorded[k] != used[k])
    raise ClipIdentityMismatch(f"{what} was made with CLIP {describe(recorded)}, but is used with {describe(used)}"
                               + (f" ({diff})" if diff else "") + f"; {remedy}")


def identity_now(recorded: dict | None, model: str, what: str) -> dict:
    """The identity of the CLIP `model` builds now, its weights resolved (the hub file's
    revision and sha256, a checkpoint's hash), refused where `what` recorded another."""
    now = clip_identity(model)
    check_same_clip(recorded, now, what, "refit it (`sing fit-translator`) with the CLIP it is used with")
    return now
