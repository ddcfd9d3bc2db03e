"""`sing nightly --config nightly.yaml`: audit every new checkpoint of a training run in one
decode pass, compare each with its baseline (`queries.checkpoint_diff`), alarm on regressions.

Idempotent by construction:
- a checkpoint is keyed by the sha256 of its file; `OUT/nightly/<name>/state.json` records
  those already judged, so a second run finds nothing new and does no work;
- the night's audit run id is a hash of the picked checkpoints and the options, so a run
  killed half-way and started again picks the same checkpoints, gets the same run id and
  skips the shards already written (see pipelines.jobs.audit);
- state.json is updated only after the audit finished and every verdict is written, so a
  failed night leaves its checkpoints `new` for the next one.

Exit codes (documented in cluster/nightly.example.yaml and README): 0 ok or nothing new,
1 the run failed (rerun resumes), 2 bad config or input before any work, 3 ALARM.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import asdict
from pathlib import Path

from pipelines.errors import EXIT_ALARM, EXIT_OK, Alarm, BadInput, RunFailed, SingError
from pipelines.io.layout import derive_run_id, write_json_atomic
from pipelines.io.manifest import code_version, file_sha256, load_manifest, utc_now
from pipelines.io.remote import local_copy
from pipelines.models.translator_file import load_translator
from pipelines.jobs.nightly.checkpoints import (Checkpoint, _loadable, hash_checkpoints, list_checkpoints,
                                                load_state, nightly_dir, pick)
from pipelines.jobs.nightly.config import NightlyConfig, NightlyConfigError, load_nightly_config
from pipelines.options import identity

log = logging.getLogger("sing.nightly")

# ------------------------------------------------------------------- translators

def _translators(cfg: NightlyConfig, picked: list[Checkpoint], specs: list[str]) -> tuple[list[str], str]:
    """One translator path per checkpoint and the audit's translator_match mode."""
    if cfg.reuse:
        path = local_copy(cfg.reuse)
        if not Path(path).is_file():
            raise NightlyConfigError(f"translator.reuse: translator not found: {cfg.reuse}")
        return [path] * len(picked), "arch"
    from pipelines.jobs.fit import FitOptions, run_fit

    out_dir = Path(cfg.refit.out) if cfg.refit.out else nightly_dir(cfg) / "translators"
    paths = []
    for ck, spec in zip(picked, specs):
        path = out_dir / f"{ck.sha256[:16]}.safetensors"
        try:  # fitted on an earlier (killed) night: reuse it
            load_translator(path)
            log.info("translator for %s exists: %s", ck.name, path)
        except (FileNotFoundError, ValueError):
            log.info("fitting a translator for %s", ck.name)
            run_fit(FitOptions(models=[spec], clip=cfg.refit.clip, shards=cfg.refit.shards, outs=[str(path)],
                              heldout_shards=cfg.refit.heldout_shards, templates=cfg.refit.templates,
                              batch_size=cfg.audit.batch_size, device=cfg.audit.device,
                              precision=cfg.audit.precision, stall_timeout=cfg.audit.stall_timeout,
                              max_attempts=cfg.audit.max_attempts, resource_wait=cfg.audit.resource_wait))
        paths.append(str(path))
    return paths, "exact"


# ----------------------------------------------------------------------- verdicts

def _finite(x) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def _check(name: str, limit: float, baseline, candidate, value, interval: dict | None, th) -> dict:
    """One check against its limit. `interval` ({low, high} of the same quantity as `value`)
    decides under alarm_on: interval: the check fails only when the whole interval lies above
    the limit; without an interval (no paired images) the point estimate decides."""
    low, high = (interval or {}).get("low"), (interval or {}).get("high")
    has_ci = _finite(low) and _finite(high)
    if th.alarm_on == "interval" and has_ci:
        passed, basis = low <= limit, "interval"
    else:
        passed = (value <= limit) if _finite(value) else None
        basis = "point" if th.alarm_on == "point" else "point (no interval)"
    return {"check": name, "limit": limit, "baseline": baseline, "candidate": candidate, "value": value,
            "interval": [low, high] if has_ci else None, "confidence": th.confidence if has_ci else None,
            # where the limit falls against the interval: below it (a clear pass), inside it
            # (an uncertain verdict), above it (a clear fail)
            "interval_vs_limit": None if not has_ci else ("pass" if high <= limit else "fail" if low > limit
                                                          else "uncertain"),
            "alarm_on": basis, "passed": passed}


def evaluate(cfg: NightlyConfig, diff: dict | None, counts: dict, intervals: dict | None = None) -> list[dict]:
    """One dict per configured check: value, limit, interval, passed (None when undefined, e.g.
    no baseline or a ratio over a head without null space). intervals: the paired intervals
    of queries.checkpoint_intervals (None: no baseline)."""
    from queries.paired import error_rate_interval

    th, checks, iv = cfg.thresholds, [], intervals or {}
    if th.max_median_abs_as_increase_deg is not None:
        s = (diff or {}).get("stats", {}).get("median_abs_as", {})
        checks.append(_check("median_abs_as_increase_deg", th.max_median_abs_as_increase_deg, s.get("baseline"),
                             s.get("candidate"), s.get("delta"), iv.get("median_abs_as_increase_deg"), th))
    if th.max_is_as_ratio_drop_rel is not None:
        s = (diff or {}).get("stats", {}).get(th.is_as_ratio, {})
        b, c = s.get("baseline"), s.get("candidate")
        v = (b - c) / abs(b) if _finite(b) and _finite(c) and b != 0 else None
        checks.append(_check(f"{th.is_as_ratio}_drop_rel", th.max_is_as_ratio_drop_rel, b, c, v,
                             iv.get(f"{th.is_as_ratio}_drop_rel"), th))
    if th.max_error_rate is not None:
        errors, n = counts.get("errors", 0), counts.get("images", 0) + counts.get("errors", 0)
        rate = error_rate_interval(errors, n, th.confidence)
        checks.append(_check("error_rate", th.max_error_rate, None, rate["estimate"], rate["estimate"], rate, th))
    return checks


def _previous(state: dict, ck: Checkpoint, order: str) -> dict | None:
    """The newest earlier judged checkpoint that did not alarm."""
    earlier = [r for r in state.get("checkpoints", {}).values()
               if r["verdict"] != "alarm" and tuple(r["order_key"][order]) < ck.order_key(order)]
    return max(earlier, key=lambda r: tuple(r["order_key"][order]), default=None)


def _fixed_baseline(cfg: NightlyConfig) -> dict:
    run, model = cfg.baseline["run"], cfg.baseline.get("model")
    man = load_manifest(cfg.out, run)
    if man is None:
        raise NightlyConfigError(f"baseline run {run!r} not found under {cfg.out}/runs/")
    slugs = [m["slug"] for m in man.get("models", [])]
    if model is None:
        if len(slugs) != 1:
            raise NightlyConfigError(f"baseline run {run!r} audited {len(slugs)} models {slugs}: add baseline.model")
        model = slugs[0]
    elif model not in slugs:
        raise NightlyConfigError(f"baseline.model {model!r} is not in run {run!r} (models: {slugs})")
    return {"run": run, "slug": model, "name": f"run {run}"}


# ---------------------------------------------------------------------------- run

def run_nightly(cfg: NightlyConfig, dry_run: bool = False, progress: bool = True) -> dict:
    """Returns the night's summary (also written to OUT/nightly/<name>/<run_id>.json unless
    nothing was new); summary['exit_code'] is what the CLI exits with."""
    from pipelines.jobs.audit import run_audit
    from pipelines.models.resolve import check as check_arch
    from pipelines.io.shards import expand_shards

    started, t0 = utc_now(), time.perf_counter()
    check_arch(cfg.checkpoints.arch)  # unknown source/name: exit 2 before listing anything
    fixed = _fixed_baseline(cfg) if isinstance(cfg.baseline, dict) else None
    expand_shards(cfg.audit.shards)  # an empty glob is a config error, found before any download
    state = load_state(cfg)
    cks = list_checkpoints(cfg)
    hash_checkpoints(cks, state)
    picked = pick(cfg, cks, state)
    base = {"name": cfg.name, "config": cfg.path, "started_at": started, "code_version": code_version(),
            "checkpoints_listed": len(cks), "alarm": False}
    if not picked:
        log.info("nothing new: %d checkpoints listed, all audited before", len(cks))
        return {**base, "status": "nothing-new", "run_id": None, "checkpoints": [], "exit_code": EXIT_OK}
    picked, unloadable = _loadable(cfg, picked)
    base["unloadable"] = unloadable
    if dry_run:
        return {**base, "status": "dry-run", "run_id": None, "exit_code": EXIT_OK,
                "checkpoints": [{"uri": c.uri, "sha256": c.sha256} for c in picked]}
    if not picked:
        raise NightlyConfigError("no new checkpoint loads: " + "; ".join(f"{u['name']}: {u['error']}"
                                                                      for u in unloadable))

    specs = [f"{cfg.checkpoints.arch}@{c.local or c.uri}" for c in picked]
    translators, match = _translators(cfg, picked, specs)
    # the options that change results key the night (options.identity); scheduling knobs do
    # not, so a retuned rerun still resumes
    run_id = derive_run_id("nightly", {"name": cfg.name, "sha": [c.sha256 for c in picked],
                                       "translators": [file_sha256(t) for t in translators],
                                       "audit": identity(cfg.audit), "arch": cfg.checkpoints.arch})
    man = run_audit(dataclasses.replace(cfg.audit, models=specs, translators=translators, out=cfg.out, run_id=run_id,
                                        translator_match=match, progress=progress, extra={"nightly": cfg.name}))
    slugs = [m["slug"] for m in man["models"]]

    results, judged = [], dict(state.get("checkpoints", {}))
    for ck, slug, tpath in zip(picked, slugs, translators):
        result = _judge(cfg, ck, slug, tpath, run_id, man["counts"][slug], fixed, judged)
        results.append(result)
        judged[ck.sha256] = {k: result[k] for k in STATE_KEYS}
        log.info("%s: %s", ck.name, result["verdict"].upper())

    alarm = any(r["verdict"] == "alarm" for r in results)
    ndir = nightly_dir(cfg)
    summary = {**base, "status": "complete", "run_id": run_id, "alarm": alarm, "finished_at": utc_now(),
               "wall_seconds": round(time.perf_counter() - t0, 3), "checkpoints": results,
               "thresholds": asdict(cfg.thresholds), "exit_code": EXIT_ALARM if alarm else EXIT_OK}
    if cfg.report:
        summary["report"] = _report(cfg, run_id, slugs + [r["baseline"]["slug"] for r in results if r["baseline"]])
    summary["trend"] = _trend(cfg, judged)
    write_json_atomic(summary, ndir / f"{run_id}.json")
    # state last: a night killed before this point is redone (and resumes) next time
    write_json_atomic({**state, "checkpoints": judged, "updated_at": utc_now()}, ndir / "state.json")
    return summary


# what state.json keeps of each judged checkpoint (the trend page reads it)
STATE_KEYS = ("name", "uri", "sha256", "slug", "run_id", "translator", "verdict", "audited_at", "order_key", "checks")


def _judge(cfg: NightlyConfig, ck: Checkpoint, slug: str, tpath: str, run_id: str, counts: dict,
           fixed: dict | None, judged: dict) -> dict:
    """One checkpoint's verdict against its baseline: statistics (checkpoint_diff), paired
    intervals (checkpoint_intervals), checks."""
    from queries import QueryError, checkpoint_diff, checkpoint_intervals

    if fixed:
        baseline = fixed
    else:
        prev = _previous({"checkpoints": judged}, ck, cfg.checkpoints.order)
        baseline = prev and {"run": prev["run_id"], "slug": prev["slug"], "name": prev["name"],
                             "sha256": prev["sha256"]}
    diff = intervals = None
    th = cfg.thresholds
    if baseline:
        try:
            diff = checkpoint_diff(cfg.out, baseline_run=baseline["run"], candidate_run=run_id,
                                   baseline_model=baseline["slug"], candidate_model=slug)
            intervals = checkpoint_intervals(cfg.out, baseline["slug"], baseline["run"], slug, run_id,
                                             th.is_as_ratio, th.confidence, th.bootstrap_resamples)
        except QueryError as exc:  # e.g. the baseline's results were deleted
            raise BadInput(f"comparing {ck.name} with {baseline['name']}: {exc}") from exc
    checks = evaluate(cfg, diff, counts, intervals)
    verdict = "alarm" if any(c["passed"] is False for c in checks) else ("ok" if baseline else "no-baseline")
    return {"name": ck.name, "uri": ck.uri, "sha256": ck.sha256, "slug": slug, "run_id": run_id,
            "translator": tpath, "verdict": verdict, "audited_at": utc_now(),
            "order_key": {"mtime": list(ck.order_key("mtime")), "name": list(ck.order_key("name"))},
            "baseline": baseline, "counts": counts, "checks": checks, "uncertainty": intervals,
            "stats": diff and diff["stats"], "top_classes": diff["top_classes"].to_dicts() if diff else []}


def _trend(cfg: NightlyConfig, judged: dict) -> str | None:
    from pipelines.jobs.nightly.trend import write_trend

    try:
        return str(write_trend(cfg, judged))
    except Exception as exc:  # noqa: BLE001 - a failed picture must not hide the verdict
        log.warning("trend page failed (verdicts unaffected): %s", exc)
        return None


def _report(cfg: NightlyConfig, run_id: str, slugs: list[str]) -> str | None:
    from queries import build_report

    out = nightly_dir(cfg) / "reports" / run_id
    try:
        build_report(cfg.out, str(out), models=sorted(set(slugs)))
    except Exception as exc:  # noqa: BLE001 - a failed picture must not hide the verdict
        log.warning("report failed (verdicts unaffected): %s", exc)
        return None
    return str(out / "index.html")


def format_summary(s: dict) -> str:
    if s["status"] == "nothing-new":
        return f"nightly {s['name']}: nothing new ({s['checkpoints_listed']} checkpoints listed, all audited before)"
    bad = [f"  UNLOADABLE {u['name']}: {u['error']}" for u in s.get("unloadable", [])]
    if s["status"] == "dry-run":
        return "\n".join([f"nightly {s['name']}: would audit {len(s['checkpoints'])} checkpoint(s):"]
                         + [f"  {c['uri']}  sha256 {c['sha256'][:12]}" for c in s["checkpoints"]] + bad)
    lines = [f"nightly {s['name']}: run {s['run_id']}, {len(s['checkpoints'])} checkpoint(s)"
             + ("  ** ALARM **" if s["alarm"] else "")]
    for r in s["checkpoints"]:
        b = r["baseline"]["name"] if r["baseline"] else "no baseline"
        lines.append(f"  {r['name']}: {r['verdict'].upper()} (vs {b}; {r['counts']['images']} images, "
                     f"{r['counts']['errors']} errors)")
        for c in r["checks"]:
            mark = {True: "ok", False: "FAIL", None: "n/a"}[c["passed"]]
            val = "undefined" if c["value"] is None else f"{c['value']:.4g}"
            ci = c.get("interval")
            unc = (f", {c['confidence']:.0%} CI [{ci[0]:.4g}, {ci[1]:.4g}], {c['interval_vs_limit']}" if ci else "")
            lines.append(f"    {mark:4} {c['check']} = {val} (limit {c['limit']}{unc}; alarm on {c['alarm_on']})")
    for key in ("report", "trend"):
        if s.get(key):
            lines.append(f"{key}: {s[key]}")
    return "\n".join(lines + bad)


def cli_args(p) -> None:
    p.description = ("Exit codes: 0 ok or nothing new, 1 the run failed (rerun resumes), 2 bad config or input, "
                     "3 ALARM (a checkpoint crossed a threshold). Config keys: cluster/nightly.example.yaml.")
    p.add_argument("--config", required=True, help="nightly YAML (see cluster/nightly.example.yaml)")
    p.add_argument("--dry-run", action="store_true", help="list the checkpoints that would be audited")


def cli_run(a) -> int:
    """One night; a failure surfaces by type (cli.main: bad config 2, run failure 1), an
    alarm as exit 3 after the summary is printed. Anything else fails the run (exit 1):
    the scheduler only sees the code, and rerunning resumes."""
    cfg = load_nightly_config(a.config)
    try:
        summary = run_nightly(cfg, dry_run=a.dry_run, progress=not a.quiet)
    except (ValueError, FileNotFoundError, KeyError, SingError):
        raise
    except Exception as exc:  # noqa: BLE001
        log.exception("nightly run failed")
        raise RunFailed(f"{type(exc).__name__}: {exc}; rerun the same command to resume") from exc
    print(format_summary(summary))
    if summary["alarm"]:
        names = [c["name"] for c in summary["checkpoints"] if c["verdict"] == "alarm"]
        raise Alarm(f"{', '.join(names)} crossed a threshold (summary above)")
    return 0
