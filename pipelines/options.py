"""One options language: every option of the shard jobs is declared once, as a dataclass field
with its help text, and the CLI flags, the nightly YAML schema, the checks and the run id are
derived from the declarations.

    opt(default, "help", identity=...)   a field; identity=True: it changes results, so it is
                                         part of the run id; False: a scheduling knob (how
                                         fast, not what), left out so a retuned rerun resumes
    add_arguments(parser, cls)           argparse flags of a job's options class
    from_namespace(cls, args)            the parsed flags -> an options object (checked)
    from_mapping(cls, doc, where, skip)  a YAML mapping -> an options object (strict: an
                                         unknown key is an error naming the known ones)
    identity(opts)                       the fields that key a run (run id), as a dict

Option groups are small dataclasses combined by inheritance into each job's options
(AuditOptions = ModelOptions + PrecisionOptions + StreamOptions + OutputOptions ...).
"""
from __future__ import annotations

import argparse
import dataclasses
import enum
import typing
from dataclasses import dataclass, field
from typing import Any

from pipelines.errors import BadInput
from pipelines.models.precision import DEFAULT_PRECISION, PRECISIONS

REQUIRED = object()  # the default of a required option


class Decode(str, enum.Enum):
    """Where JPEGs are decoded: in the read tasks (PIL, the reference transforms) or in the
    model actors on their device (nvJPEG on GPUs)."""

    HOST = "host"
    DEVICE = "device"


class ActorDecode(str, enum.Enum):
    """Where one model actor's images come from (Decode, resolved per actor of a chain).
    HOST    the read stage decoded them (img:<view> column);
    DEVICE  the actor decodes the JPEGs itself (pipelines.stages.device_decode); with
            share_decoded it hands the decoded views on (img:<view>, decode_error:<view>) to
            the later models of its view, so each image is decoded once;
    SHARED  it uses what an earlier DEVICE actor of its view decoded."""

    HOST = "host"
    DEVICE = "device"
    SHARED = "shared"


def opt(default=REQUIRED, help: str = "", *, identity: bool = True, flag: str | None = None, choices=None,
        nargs: str | None = None, metavar: str | None = None, yaml: bool = True, cli: bool = True, append=False,
        check=None, required: bool = False, positional: bool = False):
    """A declared option. `check(value, opts, flag)` raises BadInput for a bad value;
    required=True makes the CLI flag required while Python callers may fill it in later."""
    meta = {"help": help, "identity": identity, "flag": flag, "choices": choices, "nargs": nargs,
            "metavar": metavar, "yaml": yaml, "cli": cli, "append": append, "check": check, "required": required,
            "positional": positional}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def _at_least(lo, what="at least"):
    def check(v, _o, name):
        if v is not None and not v >= lo:
            raise BadInput(f"{name} must be {what} {lo}, got {v}")
    return check


def _share(v, o, name):
    if not 0.0 <= v <= 1.0:
        raise BadInput(f"{name} must be within [0, 1], got {v}")
    if v and o.decode != Decode.DEVICE:
        device = "--decode device" if name.startswith("--") else "`decode: device`"
        raise BadInput(f"{name} applies to {device} (host mode decodes everything on the host)")


def _positive(v, _o, name):
    if v is not None and not v > 0:
        raise BadInput(f"{name} must be positive, got {v}")


def _templates(v, _o, name):
    from pipelines.models.clip import TEMPLATES

    if v not in TEMPLATES:
        raise BadInput(f"unknown prompt templates {v!r} ({name}); choose from {sorted(TEMPLATES)}")


# ----------------------------------------------------------------------------- option groups


@dataclass
class OutputOptions:
    out: str = opt(help="results directory (local path or fsspec URL)", identity=False, yaml=False)
    run_id: str | None = opt(None, "name the run yourself (default: a hash of every option that changes "
                                   "results, so rerunning the same command resumes)", identity=False, yaml=False)


@dataclass
class PrecisionOptions:
    precision: str = opt(DEFAULT_PRECISION, "numeric precision of model forwards: fp32 (IEEE float32, TF32 off; "
                                            "the default), tf32 (TF32 tensor cores on CUDA; = fp32 on CPU) or bf16 "
                                            "(bfloat16 autocast); part of the run id", choices=PRECISIONS)


@dataclass
class RankOptions:
    rank_atol: float | None = opt(1e-5, "absolute singular-value tolerance of the head's rank (the official "
                                        "code's 1e-5)")
    rank_rtol: float | None = opt(None, "relative tolerance: rank = #{s > max(atol, rtol * s_max)}")


@dataclass
class ReadOptions:
    """Limits of the read tasks, passed to them as they are (pipelines.stages.read)."""

    max_pixels: int | None = opt(None, "decompression-bomb guard in pixels (default: PIL's 89.5 M)",
                                 check=_at_least(1))
    max_sample_bytes: int = opt(64 << 20, "a tar member larger than this becomes an error row, never read into "
                                          "memory (default 64 MiB)", check=_at_least(1))


@dataclass
class StreamOptions(ReadOptions):
    """How the shards stream through the read tasks and the model actors."""

    shards: list[str] = opt(help="webdataset shards: glob(s), brace ranges {000..099} or fsspec URLs",
                            nargs="+")
    batch_size: int = opt(64, "images per model batch", identity=False, check=_at_least(1))
    shards_per_task: int = opt(1, "shards each read task reads and each model-actor task scores, as one block: Ray "
                                  "Data costs the driver ~10 ms of CPU per task, so many small shards (~1,000 "
                                  "images) stream cheaper 4 to a task on many GPUs. Keep the tasks (shards / this) several "
                                  "times the model actors (or the last tasks leave GPUs idle); memory in flight grows "
                                  "with it. Results, and resumes, are the same for any value", identity=False,
                               check=_at_least(1))
    num_actors: int | None = opt(None, "model actors per model (default: actors-per-gpu x GPUs, or 1 on CPUs)",
                                 identity=False, check=_at_least(1))
    device: str | None = opt(None, "cpu or cuda (default: cuda when the cluster has GPUs)", identity=False)
    actors_per_gpu: int = opt(2, "model actor processes sharing each GPU", identity=False, check=_at_least(1))
    actor_threads: int | None = opt(None, "batches each model actor runs at once, each thread on its own CUDA "
                                          "stream (default 4 on GPUs, 1 on CPUs)", identity=False,
                                    check=_at_least(1))
    buffer_gb: float | None = opt(None, "cap the data Ray keeps in flight between read tasks and model actors "
                                        "(default: Ray's budget, half the object store)", identity=False,
                                  metavar="GB", check=_positive)
    stall_timeout: float | None = opt(1800.0, "end the run (exit 1; rerunning resumes) when no result arrives for "
                                              "this long, e.g. after a node was lost (0: wait forever)",
                                      identity=False, metavar="SECONDS", check=_at_least(0))
    max_attempts: int = opt(3, "attempts of a run: a lost node, actor or object restarts the stream over the "
                               "shards not yet written", identity=False, check=_at_least(1))
    resource_wait: float = opt(300.0, "when the cluster cannot place the model actors (nodes lost, too few GPUs), "
                                      "wait this long for nodes to come back, then end the run (exit 1; rerunning "
                                      "resumes); with room for fewer actors, run a smaller pool at once",
                               identity=False, metavar="SECONDS", check=_at_least(0))
    threads: int | None = opt(None, "torch threads per CPU actor (default: the cluster's CPUs)", identity=False,
                              cli=False, yaml=False)
    progress: bool = opt(True, "progress bars", identity=False, cli=False, yaml=False)


@dataclass
class DecodeOptions:
    """Where the images are decoded (the audit; other jobs decode in the read tasks)."""

    decode: Decode = opt(Decode.HOST, "host: decode in the read tasks (PIL, pixel-exact eval transforms); device: "
                                      "the model actors decode JPEGs on their device (nvJPEG on GPUs; a few grey "
                                      "levels off PIL)", choices=[d.value for d in Decode])
    host_decode_share: float = opt(0.0, "with --decode device: decode this share of the JPEGs in the read tasks "
                                        "anyway, so idle CPU cores help the GPU's JPEG decoder (0-1)",
                                   metavar="F", check=_share)


# ----------------------------------------------------------------------------- derivation


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _base_type(tp):
    """int for `int | None`, str for `list[str]`, the enum for an enum field."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (list, tuple):
        return args[0] if args else str
    if args and typing.get_origin(tp) is not None and len(args) == 1:
        return _base_type(args[0])
    return tp


def _is_list(tp) -> bool:
    if typing.get_origin(tp) in (list, tuple):
        return True
    return any(typing.get_origin(a) in (list, tuple) for a in typing.get_args(tp))


def _flag(f) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def declared(cls):
    """The declared options of a class (fields made with opt())."""
    return [f for f in dataclasses.fields(cls) if "identity" in f.metadata]


def add_arguments(parser: argparse.ArgumentParser, cls) -> None:
    hints = _hints(cls)
    for f in declared(cls):
        if not f.metadata["cli"]:
            continue
        tp, m = hints[f.name], f.metadata
        kw: dict[str, Any] = {"dest": f.name, "help": m["help"]}
        base = _base_type(tp)
        if base is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = str if isinstance(base, type) and issubclass(base, enum.Enum) else base
            if m["choices"] is not None:
                kw["choices"] = list(m["choices"])
            if m["append"]:
                kw["action"] = "append"
            elif _is_list(tp):
                kw["nargs"] = m["nargs"] or "+"
            if m["metavar"]:
                kw["metavar"] = m["metavar"]
        if m["positional"]:
            kw.pop("dest")
            parser.add_argument(f.name, **kw)
            continue
        if f.default is REQUIRED or m["required"]:
            kw["required"] = True
        else:
            kw["default"] = argparse.SUPPRESS  # the dataclass default stays the one source
        parser.add_argument(_flag(f), **kw)


def _coerce(f, tp, value, where: str):
    base = _base_type(tp)
    if value is None:
        if f.default is REQUIRED:
            raise BadInput(f"{where}: a value is required")
        return None
    if _is_list(tp):
        items = value if isinstance(value, (list, tuple)) else [value]
        return [_coerce_one(base, v, where, f) for v in items]
    return _coerce_one(base, value, where, f)


def _coerce_one(base, v, where, f):
    choices = f.metadata["choices"]
    try:
        if isinstance(base, type) and issubclass(base, enum.Enum):
            return base(v)
        if base is bool:
            if not isinstance(v, bool):
                raise TypeError
            return v
        if base is int and (isinstance(v, bool) or (isinstance(v, float) and not v.is_integer())):
            raise TypeError
        out = base(v) if base in (int, float, str) else v
    except (TypeError, ValueError):
        pretty = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(base)
        if isinstance(base, type) and issubclass(base, enum.Enum):
            pretty = "one of " + ", ".join(e.value for e in base)
        raise BadInput(f"{where}: expected {pretty or base}, got {v!r}") from None
    if choices is not None and out not in choices:
        raise BadInput(f"{where}: {out!r} is not one of {', '.join(map(str, choices))}")
    return out


def check(opts, skip: tuple = (), where: str | None = None):
    """Run every declared check (each value checked once, in one place). skip: fields a caller
    fills in later (nightly's models and output); where: name fields as YAML keys under it
    (nightly's `audit.host_decode_share`) instead of as flags."""
    for f in declared(type(opts)):
        if f.name in skip:
            continue
        name = f"{where}.{f.name}" if where else _flag(f)
        if getattr(opts, f.name) is REQUIRED:
            raise BadInput(f"{name} is required")
        c = f.metadata["check"]
        if c is not None:
            c(getattr(opts, f.name), opts, name)
    return opts


def from_namespace(cls, args: argparse.Namespace, **extra):
    """Options from parsed flags (absent flags keep the dataclass defaults)."""
    hints = _hints(cls)
    kw = {}
    for f in declared(cls):
        if hasattr(args, f.name):
            kw[f.name] = _coerce(f, hints[f.name], getattr(args, f.name), _flag(f))
    kw.update(extra)
    return check(cls(**kw))


def from_mapping(cls, doc: dict, where: str, skip: tuple = (), **extra):
    """Options from a YAML mapping: keys are the field names; unknown keys are an error."""
    if not isinstance(doc, dict):
        raise BadInput(f"{where}: expected a mapping, got {type(doc).__name__}")
    hints = _hints(cls)
    known = {f.name: f for f in declared(cls) if f.metadata["yaml"] and f.name not in skip}
    unknown = sorted(set(doc) - set(known))
    if unknown:
        raise BadInput(f"{where}: unknown key(s) {unknown}; known: {sorted(known)}")
    kw = {k: _coerce(known[k], hints[k], v, f"{where}.{k}") for k, v in doc.items()}
    missing = [n for n, f in known.items() if f.default is REQUIRED and n not in kw and n not in extra]
    if missing:
        raise BadInput(f"{where}: missing required key(s) {missing}")
    return check(cls(**{**kw, **extra}), skip, where)


def yaml_keys(cls, skip: tuple = ()) -> list[str]:
    return [f.name for f in declared(cls) if f.metadata["yaml"] and f.name not in skip]


def identity(opts) -> dict:
    """The options that change results (the run id's raw part), enums as their values."""
    out = {}
    for f in declared(type(opts)):
        if f.metadata["identity"]:
            v = getattr(opts, f.name)
            out[f.name] = v.value if isinstance(v, enum.Enum) else v
    return out
