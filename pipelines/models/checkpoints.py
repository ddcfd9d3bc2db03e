"""Checkpoint files read without executing code: safetensors, or torch.load(weights_only=True);
a pickle that needs arbitrary globals is refused (UnsafeCheckpointError), found by a static
scan of its opcodes. Also the weights' content hash that keys a checkpoint."""
from __future__ import annotations

import hashlib
import io
import os
import pickle

import torch

from pipelines.errors import BadInput


class UnsafeCheckpointError(BadInput):
    """A checkpoint whose pickle would import/execute code (refused, never run)."""


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


def load_by_position(model: torch.nn.Module, src: dict, source: str) -> None:
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
