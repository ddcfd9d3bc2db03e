"""The `sing nightly` config: parsed strictly (an unknown key is an error, so a typo never
silently disables a check). The documented example is cluster/nightly.example.yaml."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from pipelines.errors import BadInput
from pipelines.io.remote import is_url
from pipelines.jobs.audit import AuditOptions
from pipelines.options import from_mapping

# what the night fills in itself: its checkpoints, their translators, where results go
AUDIT_SET_BY_NIGHTLY = ("models", "translators", "translator_match", "out", "run_id")

_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
RATIOS = ("median_ratio", "ratio_of_means")
ALARM_ON = ("point", "interval")


class NightlyConfigError(BadInput):
    """The config cannot be used; raised before any work starts."""


@dataclass
class CheckpointSource:
    source: list[str] | str  # a directory (str) or an explicit list of files
    arch: str
    pattern: str | None = None
    select: str = "new"  # new | latest
    order: str = "mtime"  # mtime | name
    max_per_run: int | None = None


@dataclass
class Refit:
    clip: str
    shards: list[str]
    heldout_shards: list[str] | None = None
    templates: str = "single"
    out: str | None = None


@dataclass
class Thresholds:
    max_median_abs_as_increase_deg: float | None = None
    max_is_as_ratio_drop_rel: float | None = None
    is_as_ratio: str = "median_ratio"
    max_error_rate: float | None = None
    # point: alarm when the estimate crosses a limit; interval: only when the whole confidence
    # interval does (fewer false alarms on small audits; queries.paired)
    alarm_on: str = "point"
    confidence: float = 0.95
    bootstrap_resamples: int = 2000


@dataclass
class NightlyConfig:
    name: str
    checkpoints: CheckpointSource
    audit: AuditOptions
    out: str
    reuse: str | None = None
    refit: Refit | None = None
    baseline: str | dict = "previous"  # "previous" or {"run": ID, "model": SLUG or None}
    thresholds: Thresholds = field(default_factory=Thresholds)
    report: bool = False
    path: str | None = None  # the file it came from


def _take(d, where: str, required: tuple = (), optional: tuple = ()) -> dict:
    if not isinstance(d, dict):
        raise NightlyConfigError(f"{where}: expected a mapping, got {type(d).__name__}")
    unknown = sorted(set(d) - set(required) - set(optional))
    if unknown:
        raise NightlyConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(required + optional)}")
    missing = [k for k in required if d.get(k) is None]
    if missing:
        raise NightlyConfigError(f"{where}: missing required key(s) {missing}")
    return d


def _list(v, where: str) -> list[str]:
    if isinstance(v, str):
        return [v]
    if isinstance(v, list) and v and all(isinstance(x, str) for x in v):
        return list(v)
    raise NightlyConfigError(f"{where}: expected a string or a non-empty list of strings")


def _num(v, where: str, lo: float = 0.0, integer: bool = False):
    if v is None:
        return None
    ok = isinstance(v, int) if integer else isinstance(v, (int, float))
    if isinstance(v, bool) or not ok or v < lo:
        raise NightlyConfigError(f"{where}: expected {'an integer' if integer else 'a number'} >= {lo}, got {v!r}")
    return v


def _choice(v, where: str, choices) -> str:
    if v not in choices:
        raise NightlyConfigError(f"{where}: {v!r} is not one of {list(choices)}")
    return v


def parse_nightly_config(doc: dict, path: str | None = None) -> NightlyConfig:
    top = _take(doc, "config", ("version", "name", "checkpoints", "translator", "audit", "output"),
                ("baseline", "thresholds"))
    if top["version"] != 1:
        raise NightlyConfigError(f"config: version {top['version']!r} is not supported (only 1)")
    name = str(top["name"])
    if not _NAME.match(name):
        raise NightlyConfigError(f"config: name {name!r} must be 1-64 characters of [A-Za-z0-9._-]")

    c = _take(top["checkpoints"], "checkpoints", ("source", "arch"), ("pattern", "select", "order", "max_per_run"))
    src = c["source"] if isinstance(c["source"], str) else _list(c["source"], "checkpoints.source")
    ck = CheckpointSource(
        source=src, arch=str(c["arch"]), pattern=c.get("pattern"),
        select=_choice(c.get("select", "new"), "checkpoints.select", ("new", "latest")),
        order=_choice(c.get("order", "mtime"), "checkpoints.order", ("mtime", "name")),
        max_per_run=_num(c.get("max_per_run"), "checkpoints.max_per_run", 1, integer=True))
    if "@" in ck.arch:
        raise NightlyConfigError(f"checkpoints.arch {ck.arch!r} must be an architecture without weights "
                                 "(e.g. timm:resnet50); each checkpoint is loaded into it")

    t = _take(top["translator"], "translator", (), ("reuse", "refit"))
    if (t.get("reuse") is None) == (t.get("refit") is None):
        raise NightlyConfigError("translator: give exactly one of `reuse` (a translator file) and `refit`")
    refit = None
    if t.get("refit") is not None:
        r = _take(t["refit"], "translator.refit", ("clip", "shards"), ("heldout_shards", "templates", "out"))
        refit = Refit(clip=str(r["clip"]), shards=_list(r["shards"], "translator.refit.shards"),
                      heldout_shards=_list(r["heldout_shards"], "translator.refit.heldout_shards")
                      if r.get("heldout_shards") is not None else None,
                      templates=r.get("templates", "single"), out=r.get("out"))

    try:  # the audit section is the audit's own options, declared once (pipelines.options)
        audit = from_mapping(AuditOptions, top["audit"], "audit", skip=AUDIT_SET_BY_NIGHTLY)
    except BadInput as exc:
        raise NightlyConfigError(str(exc)) from None

    baseline = top.get("baseline", "previous")
    if isinstance(baseline, dict):
        b = _take(baseline, "baseline", ("run",), ("model",))
        baseline = {"run": str(b["run"]), "model": b.get("model")}
    elif baseline != "previous":
        raise NightlyConfigError(f"baseline: {baseline!r} is neither `previous` nor {{run: ID, model: SLUG}}")

    th = _take(top.get("thresholds") or {}, "thresholds", (), ("max_median_abs_as_increase_deg",
                                                              "max_is_as_ratio_drop_rel", "is_as_ratio",
                                                              "max_error_rate", "alarm_on", "confidence",
                                                              "bootstrap_resamples"))
    confidence = _num(th.get("confidence", 0.95), "thresholds.confidence")
    if not 0.5 <= confidence < 1:
        raise NightlyConfigError(f"thresholds.confidence: expected a level in [0.5, 1), got {confidence!r}")
    thresholds = Thresholds(
        max_median_abs_as_increase_deg=_num(th.get("max_median_abs_as_increase_deg"),
                                            "thresholds.max_median_abs_as_increase_deg"),
        max_is_as_ratio_drop_rel=_num(th.get("max_is_as_ratio_drop_rel"), "thresholds.max_is_as_ratio_drop_rel"),
        is_as_ratio=_choice(th.get("is_as_ratio", "median_ratio"), "thresholds.is_as_ratio", RATIOS),
        max_error_rate=_num(th.get("max_error_rate"), "thresholds.max_error_rate"),
        alarm_on=_choice(th.get("alarm_on", "point"), "thresholds.alarm_on", ALARM_ON), confidence=confidence,
        bootstrap_resamples=_num(th.get("bootstrap_resamples", 2000), "thresholds.bootstrap_resamples", 100,
                                 integer=True))

    o = _take(top["output"], "output", ("dir",), ("report",))
    if is_url(str(o["dir"])):
        # the verdicts come from DuckDB queries over the results, which read local files
        raise NightlyConfigError(f"output.dir {o['dir']!r}: nightly results must be on a local or mounted "
                                 "filesystem (a PVC, EFS/Filestore, or a bucket mounted with mountpoint-s3/gcsfuse)")
    if refit is not None and refit.out and "://" in refit.out:
        raise NightlyConfigError(f"translator.refit.out {refit.out!r} must be a local or mounted path")
    if not isinstance(o.get("report", False), bool):
        raise NightlyConfigError("output.report: expected true or false")
    return NightlyConfig(name=name, checkpoints=ck, audit=audit, out=str(o["dir"]), reuse=t.get("reuse"),
                         refit=refit, baseline=baseline, thresholds=thresholds, report=o.get("report", False),
                         path=path)


def load_nightly_config(path) -> NightlyConfig:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise NightlyConfigError(f"nightly config not found: {path}")
    try:
        doc = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise NightlyConfigError(f"{path} is not valid YAML: {exc}") from exc
    return parse_nightly_config(doc if doc is not None else {}, str(p))
