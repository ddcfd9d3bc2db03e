"""`sing nightly`: idempotent on rerun, alarm on a planted-leakage checkpoint and not on
clean ones, baselines chosen as documented, bad configs refused with exit 2.

Planted leakage: every checkpoint shares the backbone of timm test_resnet (96-d features,
10 classes); only the head differs. The translator reads features almost only through a
10-d subspace V (T(f) = B V^T f + small). A clean head's rows span V, so its null space is
orthogonal to V and null removal barely moves T(f). A leaky head's rows span U, orthogonal
to V, so V lies in its null space: what the translator sees is exactly what the head
ignores, and |AS| jumps.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import yaml

from pipelines.models.translator_file import load_translator, save_translator
from tests.pipeline_data import photo_folder

ARCH = "timm:test_resnet"
pytestmark = pytest.mark.slow


def _bases(seed=0):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(96, 20)))
    return q[:, :10], q[:, 10:]  # V (what the translator reads), U (orthogonal to V)


def _checkpoint(path: Path, rows: np.ndarray, mtime: float, seed: int) -> Path:
    """test_resnet weights (one fixed backbone) with head W = C rows^T, C random."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    sd = {k: v.clone().contiguous() for k, v in timm.create_model("test_resnet", num_classes=10).state_dict().items()}
    c = np.random.default_rng(seed).normal(size=(10, 10))
    sd["fc.weight"] = torch.tensor(c @ rows.T, dtype=torch.float32)
    sd["fc.bias"] = torch.zeros(10)
    save_file(sd, str(path))
    os.utime(path, (mtime, mtime))
    return path


def _translator(path: Path) -> str:
    from sing_ops import Translator

    v, _ = _bases()
    g = np.random.default_rng(7)
    w = g.normal(size=(32, 10)) @ v.T + 0.05 * g.normal(size=(32, 96))
    tr = Translator(torch.tensor(w, dtype=torch.float32), torch.tensor(0.01 * g.normal(size=32), dtype=torch.float32),
                    {"source_model": f"{ARCH}@reference.safetensors", "clip_model": "openclip:tiny@random"})
    return str(save_translator(tr, path))


def _config(tmp: Path, **over) -> Path:
    doc = {
        "version": 1, "name": "rn-test",
        "checkpoints": {"source": str(tmp / "ckpts"), "pattern": "*.safetensors", "arch": ARCH, "select": "new",
                        "order": "mtime"},
        "translator": {"reuse": str(tmp / "t.safetensors")},
        "audit": {"shards": str(tmp / "shards" / "*.tar"), "batch_size": 8},
        "baseline": "previous",
        "thresholds": {"max_median_abs_as_increase_deg": 0.5, "max_is_as_ratio_drop_rel": 0.5,
                       "max_error_rate": 0.0},
        "output": {"dir": str(tmp / "results"), "report": False},
    }
    for k, v in over.items():
        doc[k] = v
    p = tmp / f"nightly-{len(list(tmp.glob('nightly-*.yaml')))}.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from pipelines.jobs.make_shards import make_shards

    tmp = tmp_path_factory.mktemp("nightly")
    make_shards(str(photo_folder(tmp / "photos", per_class=4)), str(tmp / "shards"), per_shard=6)
    (tmp / "ckpts").mkdir()
    _translator(tmp / "t.safetensors")
    return tmp


def _sing(args) -> int:
    from pipelines.cli import main

    return main(["-q", *args])


def _median_abs_as(results: Path, slug: str, run: str) -> float:
    """Independent of the SQL: straight from the Parquet files with Polars."""
    df = pl.read_parquet(str(results / "images" / f"model={slug}" / f"run={run}" / "*.parquet"))
    return float(np.median(np.abs(df["as_deg"].drop_nulls().to_numpy())))


def _summary(results: Path, run_id: str) -> dict:
    return json.loads((results / "nightly" / "rn-test" / f"{run_id}.json").read_text())


def _last_summary(results: Path) -> dict:
    files = [p for p in (results / "nightly" / "rn-test").glob("nightly-*.json")]
    return json.loads(max(files, key=lambda p: p.stat().st_mtime_ns).read_text())


def test_nightly_alarm_baselines_and_idempotency(world, ray_session, monkeypatch, capsys):
    v, u = _bases()
    ck, res = world / "ckpts", world / "results"
    _checkpoint(ck / "epoch_001.safetensors", v, 1_000, seed=1)  # clean
    _checkpoint(ck / "epoch_002.safetensors", v, 2_000, seed=2)  # clean, other head, same null space
    cfg = _config(world)

    # night 1: two new checkpoints, one audit run; the first has no baseline
    assert _sing(["nightly", "--config", str(cfg)]) == 0
    s1 = _last_summary(res)
    assert [r["name"] for r in s1["checkpoints"]] == ["epoch_001.safetensors", "epoch_002.safetensors"]
    assert [r["verdict"] for r in s1["checkpoints"]] == ["no-baseline", "ok"]
    second = s1["checkpoints"][1]
    assert second["baseline"]["name"] == "epoch_001.safetensors"
    med = {c["check"]: c for c in second["checks"]}["median_abs_as_increase_deg"]
    assert abs(med["value"]) < 1e-3  # same null space -> same AS per image
    state_bytes = (res / "nightly" / "rn-test" / "state.json").read_bytes()
    runs_before = sorted(p.name for p in (res / "runs").iterdir())

    # night 2, nothing new: no audit, no new files, state untouched
    import pipelines.jobs.audit

    def boom(*a, **k):
        raise AssertionError("a night with nothing new must not audit")

    monkeypatch.setattr(pipelines.jobs.audit, "run_audit", boom)
    capsys.readouterr()
    assert _sing(["nightly", "--config", str(cfg)]) == 0
    assert "nothing new" in capsys.readouterr().out
    assert (res / "nightly" / "rn-test" / "state.json").read_bytes() == state_bytes
    assert sorted(p.name for p in (res / "runs").iterdir()) == runs_before
    monkeypatch.undo()

    # night 3: a leaky checkpoint -> ALARM (exit 3), judged against epoch_002
    _checkpoint(ck / "epoch_003.safetensors", u, 3_000, seed=3)
    assert _sing(["nightly", "--config", str(cfg)]) == 3
    s3 = _last_summary(res)
    assert s3["alarm"] is True and s3["exit_code"] == 3
    (leaky,) = s3["checkpoints"]
    assert leaky["verdict"] == "alarm" and leaky["baseline"]["name"] == "epoch_002.safetensors"
    checks = {c["check"]: c for c in leaky["checks"]}
    assert checks["median_abs_as_increase_deg"]["passed"] is False
    assert checks["error_rate"]["passed"] is True and checks["error_rate"]["value"] == 0
    # the verdict's numbers equal an independent computation from the Parquet files
    base_med = _median_abs_as(res, second["slug"], second["run_id"])
    cand_med = _median_abs_as(res, leaky["slug"], leaky["run_id"])
    assert checks["median_abs_as_increase_deg"]["value"] == pytest.approx(cand_med - base_med, abs=1e-6)
    assert cand_med - base_med > 0.5
    # its uncertainty: a paired interval over the images both audited, holding the estimate
    med_check = checks["median_abs_as_increase_deg"]
    lo, hi = med_check["interval"]
    assert lo <= med_check["value"] <= hi and med_check["interval_vs_limit"] == "fail"
    assert leaky["uncertainty"]["n_pairs"] == leaky["counts"]["images"] and med_check["confidence"] == 0.95
    # the series' trend page, named by the summary: every checkpoint so far, in training order
    trend = Path(s3["trend"])
    assert trend == res / "nightly" / "rn-test" / "trend.html"
    page = trend.read_text()
    assert "data:image/png;base64," in page and page.count("<tr class=alarm>") == 1
    assert [page.index(f"epoch_00{i}") for i in (1, 2, 3)] == sorted(page.index(f"epoch_00{i}") for i in (1, 2, 3))

    # night 4: a clean checkpoint is compared with the newest one that did NOT alarm
    _checkpoint(ck / "epoch_004.safetensors", v, 4_000, seed=4)
    assert _sing(["nightly", "--config", str(cfg)]) == 0
    (r4,) = _last_summary(res)["checkpoints"]
    assert r4["verdict"] == "ok" and r4["baseline"]["name"] == "epoch_002.safetensors"
    state = json.loads((res / "nightly" / "rn-test" / "state.json").read_text())
    assert {r["name"]: r["verdict"] for r in state["checkpoints"].values()} == {
        "epoch_001.safetensors": "no-baseline", "epoch_002.safetensors": "ok",
        "epoch_003.safetensors": "alarm", "epoch_004.safetensors": "ok"}


def test_nightly_fixed_baseline_run_and_dry_run(world, ray_session, capsys):
    """baseline {run, model}: a leaky checkpoint alarms against a fixed released run."""
    v, u = _bases()
    src = world / "ckpts_fixed"
    src.mkdir()
    clean = _checkpoint(world / "released.safetensors", v, 500, seed=9)
    out = world / "fixed_results"
    rid = "released"
    assert _sing(["audit", "--model", f"{ARCH}@{clean}", "--translator", str(world / "t.safetensors"),
                  "--translator-match", "arch", "--shards", str(world / "shards" / "*.tar"), "--out", str(out),
                  "--run-id", rid]) == 0
    _checkpoint(src / "leaky.safetensors", u, 600, seed=5)
    cfg = _config(world, checkpoints={"source": [str(src / "leaky.safetensors")], "arch": ARCH},
                  baseline={"run": rid}, output={"dir": str(out), "report": True})
    capsys.readouterr()
    assert _sing(["nightly", "--config", str(cfg), "--dry-run"]) == 0
    assert "leaky.safetensors" in capsys.readouterr().out
    assert not (out / "nightly").exists()  # a dry run writes nothing
    assert _sing(["nightly", "--config", str(cfg)]) == 3
    (r,) = json.loads(next((out / "nightly" / "rn-test").glob("nightly-*.json")).read_text())["checkpoints"]
    assert r["baseline"] == {"run": rid, "slug": "timm-test_resnet-released.safetensors",
                             "name": f"run {rid}"}
    assert r["verdict"] == "alarm"
    # the night's report covers the candidate and its baseline
    summary = json.loads(next((out / "nightly" / "rn-test").glob("nightly-*.json")).read_text())
    index = Path(summary["report"])
    assert index.name == "index.html" and index.is_file()
    html = index.read_text()
    assert "timm-test_resnet-leaky.safetensors" in html and "timm-test_resnet-released.safetensors" in html


@pytest.mark.parametrize("change, message", [
    ({"version": 2}, "version"),
    ({"bogus": 1}, "unknown key"),
    ({"translator": {"reuse": "/nope/t.safetensors"}}, "translator not found"),
    ({"translator": {}}, "exactly one of"),
    ({"checkpoints": {"source": "/nope/dir", "arch": ARCH}}, "not a directory"),
    ({"checkpoints": {"source": "EMPTY", "arch": ARCH}}, "holds no file"),
    ({"checkpoints": {"source": "EMPTY", "arch": "timm:no_such_net_xyz"}}, "no_such_net_xyz"),
    ({"checkpoints": {"source": "EMPTY", "arch": f"{ARCH}@random"}}, "without weights"),
    ({"baseline": {"run": "no-such-run"}}, "baseline run"),
    ({"thresholds": {"max_error_rate": -1}}, ">= 0"),
    ({"thresholds": {"alarm_on": "maybe"}}, "thresholds.alarm_on"),
    ({"thresholds": {"confidence": 1.5}}, "thresholds.confidence"),
    ({"thresholds": {"bootstrap_resamples": 10}}, "thresholds.bootstrap_resamples"),
    ({"audit": {"shards": "/nope/*.tar"}}, "nope"),
    ({"audit": {"shards": "X", "decode": "gpu"}}, "audit.decode"),
    ({"audit": {"shards": "X", "decode": "device", "host_decode_share": 1.5}}, "within [0, 1]"),
    ({"audit": {"shards": "X", "host_decode_share": 0.3}}, "applies to `decode: device`"),
    ({"audit": {"shards": "X", "actors_per_gpu": 0}}, "audit.actors_per_gpu"),
    ({"audit": {"shards": "X", "actor_threads": 1.5}}, "audit.actor_threads"),
    ({"audit": {"shards": "X", "buffer_gb": 0}}, "audit.buffer_gb"),
])
def test_nightly_bad_config_exit_2(tmp_path, change, message, capsys):
    (tmp_path / "ckpts").mkdir()
    (tmp_path / "empty").mkdir()
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "a.tar").write_bytes(b"")
    _translator(tmp_path / "t.safetensors")
    _checkpoint(tmp_path / "ckpts" / "e1.safetensors", _bases()[0], 100, seed=1)
    if "checkpoints" in change and change["checkpoints"]["source"] == "EMPTY":
        change = {"checkpoints": {**change["checkpoints"], "source": str(tmp_path / "empty")}}
    cfg = _config(tmp_path, **change)
    assert _sing(["nightly", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert not (tmp_path / "results" / "runs").exists()  # refused before any work


def test_nightly_passes_the_gpu_audit_options_on(tmp_path, monkeypatch):
    """decode, host_decode_share, actors_per_gpu, actor_threads and stall_timeout reach the
    night's audit; retuning the scheduling knobs keeps the run id (a rerun resumes), changing
    what is computed (decode) does not."""
    import pipelines.jobs.audit

    (tmp_path / "ckpts").mkdir()
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "a.tar").write_bytes(b"")
    _translator(tmp_path / "t.safetensors")
    _checkpoint(tmp_path / "ckpts" / "e1.safetensors", _bases()[0], 100, seed=1)
    seen = []

    def capture(cfg):
        seen.append(cfg)
        raise RuntimeError("captured")

    monkeypatch.setattr(pipelines.jobs.audit, "run_audit", capture)
    shards = str(tmp_path / "shards" / "*.tar")
    for audit in ({"decode": "device", "host_decode_share": 0.25, "actors_per_gpu": 6, "actor_threads": 3,
                   "buffer_gb": 2.5, "stall_timeout": 600},
                  {"decode": "device", "host_decode_share": 0.25, "actors_per_gpu": 1, "stall_timeout": 60},
                  {"decode": "host"}):
        cfg = _config(tmp_path, audit={"shards": shards, **audit})
        assert _sing(["nightly", "--config", str(cfg)]) == 1  # the (captured) audit failed: a rerun resumes
    a, retuned, host = seen
    assert (a.decode, a.host_decode_share, a.actors_per_gpu, a.actor_threads, a.buffer_gb, a.stall_timeout) == (
        "device", 0.25, 6, 3, 2.5, 600)
    assert (retuned.actors_per_gpu, retuned.actor_threads) == (1, None)
    assert retuned.run_id == a.run_id and host.run_id != a.run_id


def test_nightly_missing_config_file(tmp_path, capsys):
    assert _sing(["nightly", "--config", str(tmp_path / "none.yaml")]) == 2
    assert "not found" in capsys.readouterr().err


def test_nightly_refit_translator_per_checkpoint(world, ray_session):
    """translator.refit: one translator per checkpoint (keyed by its sha256), fitted on the fit
    shards, reused when the night is redone."""

    src = world / "ckpts_refit"
    src.mkdir()
    ck = _checkpoint(src / "e1.safetensors", _bases()[0], 100, seed=11)
    out = world / "refit_results"
    cfg = _config(world, checkpoints={"source": str(src), "arch": ARCH},
                  translator={"refit": {"clip": "openclip:tiny@random", "shards": str(world / "shards" / "*.tar")}},
                  output={"dir": str(out)})
    assert _sing(["nightly", "--config", str(cfg)]) == 0
    (r,) = _last_summary(out)["checkpoints"]
    from pipelines.io.manifest import file_sha256

    tpath = out / "nightly" / "rn-test" / "translators" / f"{file_sha256(ck)[:16]}.safetensors"
    assert r["translator"] == str(tpath) and r["verdict"] == "no-baseline"
    tr = load_translator(tpath)
    assert tr.metadata["source_model"] == f"{ARCH}@e1.safetensors" and tr.in_dim == 96
    # a night killed after fitting: the state is gone but the translator is reused, not refit
    mtime = tpath.stat().st_mtime_ns
    (out / "nightly" / "rn-test" / "state.json").unlink()
    assert _sing(["nightly", "--config", str(cfg)]) == 0
    assert tpath.stat().st_mtime_ns == mtime


def test_nightly_lists_and_hashes_checkpoints_behind_urls(world, capsys):
    """checkpoints.source as an fsspec URL (memory:// here, s3:// in production): listed,
    downloaded once to the cache, keyed by sha256; a dry run names what would be audited."""
    import fsspec

    from pipelines.io.manifest import file_sha256

    fs = fsspec.filesystem("memory")
    fs.rm("/nightly-ckpts", recursive=True) if fs.exists("/nightly-ckpts") else None
    local = _checkpoint(world / "url_src.safetensors", _bases()[0], 100, seed=21)
    fs.pipe("/nightly-ckpts/e1.safetensors", local.read_bytes())
    fs.pipe("/nightly-ckpts/notes.txt", b"not a checkpoint")
    cfg = _config(world, checkpoints={"source": "memory://nightly-ckpts/", "arch": ARCH},
                  output={"dir": str(world / "url_results")})
    capsys.readouterr()
    assert _sing(["nightly", "--config", str(cfg), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "memory://" in out and "e1.safetensors" in out and "notes.txt" not in out
    assert f"sha256 {file_sha256(local)[:12]}" in out
    fs.rm("/nightly-ckpts", recursive=True)


class _Evil:
    def __reduce__(self):  # what a malicious pickle does on load: run code
        return (os.system, ("echo pwned > /tmp/sing-nightly-pwned",))


def test_unloadable_checkpoints_are_reported_and_do_not_stop_the_night(world, ray_session, capsys):
    """A truncated file and a pickle carrying code sit beside a good checkpoint: the good one
    is audited, the two are reported (never executed) and stay unjudged for the next night."""
    import pickle

    src = world / "ckpts_mixed"
    src.mkdir()
    good = _checkpoint(src / "e1.safetensors", _bases()[0], 100, seed=31)
    (src / "e2.safetensors").write_bytes(good.read_bytes()[:1000])  # still being written
    (src / "e3.pt").write_bytes(pickle.dumps({"fc.weight": _Evil()}))
    os.utime(src / "e2.safetensors", (200, 200))
    os.utime(src / "e3.pt", (300, 300))
    out = world / "mixed_results"
    cfg = _config(world, checkpoints={"source": str(src), "arch": ARCH, "pattern": "e*"},
                  output={"dir": str(out)})
    capsys.readouterr()
    assert _sing(["nightly", "--config", str(cfg)]) == 0
    printed = capsys.readouterr().out
    assert "UNLOADABLE e2.safetensors" in printed and "UNLOADABLE e3.pt" in printed
    assert not Path("/tmp/sing-nightly-pwned").exists()
    s = _last_summary(out)
    assert [r["name"] for r in s["checkpoints"]] == ["e1.safetensors"]
    assert sorted(u["name"] for u in s["unloadable"]) == ["e2.safetensors", "e3.pt"]
    state = json.loads((out / "nightly" / "rn-test" / "state.json").read_text())
    assert [r["name"] for r in state["checkpoints"].values()] == ["e1.safetensors"]
