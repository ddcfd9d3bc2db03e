"""The official SING release's files, imported into this project's formats.

    sing import translator translators/resnet/linear/best.pt --model resnet --out tr/resnet.safetensors
    sing import embeddings imagenet_class_embeddings.npz --out text/in1k.parquet [--prompt mean]

What the official files are (facts about the formats; none of their code is used here):
  * a translator directory holds `best.pt`, a torch state dict {weight: (768, m), bias: (768,)}
    of a linear map from the classifier's raw head input to the raw CLIP ViT-L/14 image
    embedding (the Karlo unCLIP image encoder, i.e. OpenAI ViT-L/14), possibly wrapped under
    state_dict / model_state_dict / translator_state_dict / model, keys possibly prefixed by
    `_orig_mod.` (torch.compile); and `metadata.yaml` (model_name, translator_name,
    architecture, embedding_backend, in_dim, out_dim, [hidden_dim], checkpoint_file).
    Other architectures (3layer, 4layer, residual) are MLPs, not affine maps: refused.
  * text embeddings are .npz files: `classes` (N,) names, `prompts` (P,) prompt names
    (prompt1..prompt5, then mean) as object arrays, and `embeddings` (N, P, 768) float16;
    each promptK row is an L2-normalised CLIP text embedding, `mean` their plain mean (not
    renormalised; angles are scale free, so it is kept as is).

Loading never executes code: best.pt goes through torch.load(weights_only=True), and the
npz members are parsed here, the object arrays with an unpickler that can only rebuild a
numpy array (any other global is refused) and must hold plain strings.
"""
from __future__ import annotations

import io
import logging
import pickle
import zipfile
from pathlib import Path

import numpy as np

from pipelines.models.zoo import OFFICIAL_PROVENANCE, PAPER_CLIP

log = logging.getLogger("sing.official")

KARLO_BACKEND = "kakao_karlo_v1_alpha_image_variations"
# embedding backends whose CLIP space is known; any other needs an explicit --clip
BACKEND_CLIP = {KARLO_BACKEND: PAPER_CLIP}
WRAPPER_KEYS = ("state_dict", "model_state_dict", "translator_state_dict", "model")
KEY_PREFIXES = ("_orig_mod.", "module.")
PROVENANCE = OFFICIAL_PROVENANCE
PROMPT_CHOICES = ("mean", "prompt1", "prompt2", "prompt3", "prompt4", "prompt5")


class OfficialFormatError(ValueError):
    """An official file that is missing, malformed, unsafe or does not fit (exit 2)."""


# ----------------------------------------------------------------------------- translators


def read_metadata(path) -> dict:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"translator metadata not found: {path} (give --metadata FILE)")
    try:
        meta = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise OfficialFormatError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(meta, dict):
        raise OfficialFormatError(f"{path}: expected a YAML mapping (model_name, architecture, in_dim, ...), "
                                  f"got {type(meta).__name__}")
    arch = meta.get("architecture")
    if arch is None:
        raise OfficialFormatError(f"{path}: no 'architecture' key; an official translator's metadata names it "
                                  "(linear, 3layer, 4layer or residual)")
    if str(arch) != "linear":
        raise OfficialFormatError(
            f"{path}: architecture {arch!r} is an MLP translator; only the official 'linear' translators are "
            "affine maps T(f) = A f + b, which SING's null-space removal and steering assume. Use "
            "translators/<model>/linear/")
    for k in ("in_dim", "out_dim"):
        v = meta.get(k)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise OfficialFormatError(f"{path}: '{k}' must be a positive integer, got {v!r}")
    return meta


def read_state_dict(path) -> dict:
    """The tensors of an official best.pt, unwrapped and with compile/DDP prefixes removed.
    torch.load(weights_only=True): a pickle that needs any Python object beyond tensors and
    plain containers is refused, never run."""
    import torch

    from pipelines.models.checkpoints import UnsafeCheckpointError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"translator checkpoint not found: {path}")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = next((ln.strip() for ln in str(exc).splitlines() if "GLOBAL" in ln), str(exc).splitlines()[0])
        raise UnsafeCheckpointError(f"{path}: refusing to unpickle code (torch.load weights_only=True): "
                                    f"{detail[:200]}") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise OfficialFormatError(f"{path}: not a readable torch checkpoint: {str(exc)[:200]}") from None
    for _ in range(2):  # e.g. {"model_state_dict": {...}} or {"state_dict": {"model": {...}}}
        if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            obj = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), obj)
    if not isinstance(obj, dict):
        raise OfficialFormatError(f"{path}: expected a state dict, got {type(obj).__name__}")
    sd = {}
    for k, v in obj.items():
        if isinstance(v, torch.Tensor):
            k = str(k)
            while k.startswith(KEY_PREFIXES):
                k = next(k[len(p):] for p in KEY_PREFIXES if k.startswith(p))
            sd[k] = v
    if not sd:
        raise OfficialFormatError(f"{path}: holds no tensors (keys: {sorted(map(str, obj))[:8]})")
    return sd


def linear_weight_bias(sd: dict, path) -> tuple:
    """(weight (d, m), bias (d,)) of a linear translator's state dict; anything with more than
    one weight (an MLP) is refused."""
    if set(sd) == {"weight", "bias"}:
        w, b = sd["weight"], sd["bias"]
    else:
        ws = [k for k in sd if k.endswith("weight")]
        bs = [k for k in sd if k.endswith("bias")]
        if len(ws) != 1 or len(bs) != 1 or len(sd) != 2:
            raise OfficialFormatError(f"{path}: expected a linear translator {{weight, bias}}, got tensors "
                                      f"{sorted(sd)[:8]} (an MLP translator is not an affine map)")
        w, b = sd[ws[0]], sd[bs[0]]
    if w.dim() != 2 or b.dim() != 1 or b.shape[0] != w.shape[0]:
        raise OfficialFormatError(f"{path}: weight must be (out, in) and bias (out,), got {tuple(w.shape)} and "
                                  f"{tuple(b.shape)}")
    if not (w.is_floating_point() and b.is_floating_point()):
        raise OfficialFormatError(f"{path}: weight and bias must be floating point, got {w.dtype} and {b.dtype}")
    return w, b


def model_feature_dim(model: str) -> tuple[int, str]:
    """(feature dim, model_id) of MODEL without downloading weights when it is a zoo entry;
    otherwise the classifier is built (random/local weights are cheap; pretrained ones load)."""
    from pipelines.models.spec import parse_model_spec
    from pipelines.models.zoo import PAPER_MODELS

    hit = next((m for m in PAPER_MODELS if m.model == model.strip()), None)
    if hit is not None:
        return hit.feature_dim, parse_model_spec(hit.model).model_id
    from pipelines.models.classifiers import load_classifier

    clf = load_classifier(model)
    return clf.num_features, clf.model_id


def clip_embed_dim(clip: str) -> int:
    """Embedding dim of a CLIP model string, from open_clip's config when it has one (no weights)."""
    from pipelines.models.spec import parse_model_spec

    ms = parse_model_spec(clip)
    if ms.source != "openclip":
        raise OfficialFormatError(f"--clip {clip!r} is not a CLIP model string (openclip:ARCH@TAG)")
    if ms.name != "tiny":
        import open_clip

        cfg = open_clip.get_model_config(ms.name)
        if cfg and "embed_dim" in cfg:
            return int(cfg["embed_dim"])
    from pipelines.models.clip import load_clip

    return load_clip(clip).embed_dim


def official_clip_identity(clip: str) -> dict:
    """The identity of the CLIP an official file came from. The release computed its numbers
    with OpenAI's own CLIP, i.e. exactly the tag's network (QuickGELU for `openai`); its
    weights were never here, so no hub revision or sha256 is recorded."""
    from pipelines.models.clip_source import clip_identity

    return {**clip_identity(clip, resolve_weights=False), "weights_from": "the official release (OpenAI's CLIP)"}


def resolve_model(model: str) -> tuple[str, str | None]:
    """(MODEL string, zoo name or None): an official zoo name ("resnet") stands for its MODEL."""
    from pipelines.models.zoo import BY_NAME, PAPER_MODELS

    key = model.strip()
    if key.lower() in BY_NAME:
        z = BY_NAME[key.lower()]
        return z.model, z.name
    hit = next((m for m in PAPER_MODELS if m.model == key), None)
    return key, (hit.name if hit else None)


def import_translator(src, model: str, out, metadata=None, clip: str | None = None,
                      expect_name: str | None = None, any_name: bool = False) -> dict:
    """Check an official linear translator against MODEL and write it as this project's
    translator file (source_model = MODEL's id, clip_model = the official CLIP space). Every
    check runs before anything is written. Returns a summary (path, id, dims, provenance)."""
    from sing_ops import Translator

    from pipelines.io.manifest import file_sha256
    from pipelines.models.translator_file import save_translator

    src = Path(src)
    if src.is_dir():
        src = src / "best.pt"
    meta_path = Path(metadata) if metadata else src.parent / "metadata.yaml"
    meta = read_metadata(meta_path)
    w, b = linear_weight_bias(read_state_dict(src), src)
    if tuple(w.shape) != (meta["out_dim"], meta["in_dim"]):
        raise OfficialFormatError(f"{src}: weight is {tuple(w.shape)} but {meta_path} says out_dim x in_dim = "
                                  f"({meta['out_dim']}, {meta['in_dim']})")
    backend = meta.get("embedding_backend")
    clip_id = clip or BACKEND_CLIP.get(str(backend))
    if clip_id is None:
        raise OfficialFormatError(f"{meta_path}: embedding_backend {backend!r} is not one whose CLIP space is known "
                                  f"({', '.join(BACKEND_CLIP)} = {PAPER_CLIP}); give --clip")
    model_str, zoo_name = resolve_model(model)
    want_name = expect_name or zoo_name
    got_name = meta.get("model_name")
    if want_name and got_name and str(got_name) != want_name and not any_name:
        # resnet, bitresnet and resnext all have 2048-d heads: dims alone would not catch this
        raise OfficialFormatError(f"{meta_path}: translator of official model {got_name!r}, but {model!r} is "
                                  f"{want_name!r} (pass --any-name to import it anyway)")
    feat_dim, model_id = model_feature_dim(model_str)
    if meta["in_dim"] != feat_dim:
        raise OfficialFormatError(f"{src}: translator input is {meta['in_dim']}-d but {model_str} has "
                                  f"{feat_dim}-d head features")
    d = clip_embed_dim(clip_id)
    if meta["out_dim"] != d:
        raise OfficialFormatError(f"{src}: translator output is {meta['out_dim']}-d but {clip_id} embeddings are "
                                  f"{d}-d")
    provenance = {"note": PROVENANCE, "source_file": str(src.resolve()), "source_sha256": file_sha256(src),
                  "metadata_file": str(meta_path.resolve()),
                  "metadata": {k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool)) or v is None}}
    ident = official_clip_identity(clip_id)
    tr = Translator(w.detach().to("cpu").float().contiguous(), b.detach().to("cpu").float().contiguous(),
                    {"source_model": model_id, "clip_model": ident["model"], "clip_identity": ident, "lambda": None,
                     "fitted_by": "official", "official": provenance})
    path = save_translator(tr, out)
    return {"path": str(path), "id": tr.id, "source_model": model_id, "clip_model": ident["model"],
            "clip_identity": ident,
            "in_dim": tr.in_dim, "out_dim": tr.out_dim, "official_model_name": got_name, **provenance}


# ----------------------------------------------------------------------------- npz text embeddings


def _reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct as fn  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct as fn
    return fn


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Rebuilds a pickled numpy array and nothing else: an object array's pickle needs only
    ndarray, dtype and the array reconstructor; every other global is refused (not imported)."""

    def find_class(self, module, name):
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "_reconstruct":
            return _reconstruct()
        if module == "numpy" and name == "ndarray":
            return np.ndarray
        if module == "numpy" and name == "dtype":
            return np.dtype
        raise OfficialFormatError(f"refusing to unpickle {module}.{name}: the npz holds code, not plain strings")

    def persistent_load(self, pid):
        raise OfficialFormatError("refusing a pickle with persistent ids")


def _read_member(z: zipfile.ZipFile, member: str, where: str) -> np.ndarray:
    fmt = np.lib.format
    fp = io.BytesIO(z.read(member))
    try:
        version = fmt.read_magic(fp)
        if version == (1, 0):
            shape, _fortran, dtype = fmt.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, _fortran, dtype = fmt.read_array_header_2_0(fp)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except ValueError as exc:
        raise OfficialFormatError(f"{where}: member {member} is not a .npy array: {exc}") from None
    if not dtype.hasobject:
        fp.seek(0)
        return fmt.read_array(fp, allow_pickle=False)
    try:
        arr = _ArrayOnlyUnpickler(fp).load()
    except OfficialFormatError as exc:
        raise OfficialFormatError(f"{where}: member {member}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - a malformed pickle stream
        raise OfficialFormatError(f"{where}: member {member} is not a readable object array: {exc}") from None
    if not isinstance(arr, np.ndarray) or arr.shape != tuple(shape):
        raise OfficialFormatError(f"{where}: member {member} does not hold the array its header describes")
    if not all(isinstance(x, str) for x in arr.reshape(-1).tolist()):
        raise OfficialFormatError(f"{where}: member {member} must hold plain strings only")
    return arr.astype(object)


def read_npz(path) -> dict[str, np.ndarray]:
    """Every array of an .npz, safely (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"embeddings file not found: {path}")
    try:
        with zipfile.ZipFile(path) as z:
            members = [n for n in z.namelist() if n.endswith(".npy")]
            return {n[:-4]: _read_member(z, n, str(path)) for n in members}
    except zipfile.BadZipFile:
        raise OfficialFormatError(f"{path}: not an .npz (zip) file") from None


def read_official_embeddings(path) -> tuple[list[str], list[str], np.ndarray]:
    """(names (N), prompt names (P), embeddings (N, P, d) float32) of an official npz."""
    arrs = read_npz(path)
    missing = [k for k in ("classes", "prompts", "embeddings") if k not in arrs]
    if missing:
        raise OfficialFormatError(f"{path}: missing arrays {missing}; an official embeddings npz holds classes, "
                                  f"prompts and embeddings (has {sorted(arrs)})")
    names = [str(x) for x in np.asarray(arrs["classes"]).reshape(-1).tolist()]
    prompts = [str(x) for x in np.asarray(arrs["prompts"]).reshape(-1).tolist()]
    emb = arrs["embeddings"]
    if emb.dtype.hasobject or emb.dtype.kind != "f":
        raise OfficialFormatError(f"{path}: embeddings must be floating point, got {emb.dtype}")
    if emb.ndim != 3 or emb.shape[:2] != (len(names), len(prompts)):
        raise OfficialFormatError(f"{path}: embeddings are {emb.shape}, expected ({len(names)} classes, "
                                  f"{len(prompts)} prompts, dim)")
    emb = emb.astype(np.float32)
    if not np.isfinite(emb).all():
        raise OfficialFormatError(f"{path}: embeddings hold NaN/Inf")
    return names, prompts, emb


def import_embeddings(src, out, prompt: str = "mean", clip: str = PAPER_CLIP) -> dict:
    """One prompt's slice of an official npz -> this project's text-embedding Parquet
    (pipelines.models.text), with clip_model and provenance in its metadata."""
    from pipelines.io.manifest import file_sha256
    from pipelines.models.text import save_embeddings

    names, prompts, emb = read_official_embeddings(src)
    if prompt not in prompts:
        raise OfficialFormatError(f"{src}: no prompt {prompt!r}; it has {prompts}")
    k = prompts.index(prompt)
    vec = np.ascontiguousarray(emb[:, k, :])
    if (np.linalg.norm(vec, axis=1) == 0).any():
        raise OfficialFormatError(f"{src}: prompt {prompt!r} has all-zero embeddings (angles undefined)")
    provenance = {"note": PROVENANCE, "source_file": str(Path(src).resolve()), "source_sha256": file_sha256(src),
                  "prompt": prompt, "prompts": prompts}
    ident = official_clip_identity(clip)
    path = save_embeddings(out, names, vec, ident, [f"official npz prompt {prompt!r}"], extra=provenance)
    return {"path": str(path), "rows": len(names), "dim": int(vec.shape[1]), "clip_model": ident["model"],
            "clip_identity": ident, **provenance}
