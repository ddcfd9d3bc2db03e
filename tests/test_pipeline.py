"""End-to-end: shards -> fit-translator -> audit on tiny random models, with bad samples,
an independent float64 recomputation of the scores, and kill-and-resume."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq

import queries
import pytest
import torch

from pipelines.cli import main as sing
from pipelines.models.translator_file import load_translator
from tests.pipeline_data import CLASSIFIER, CLIP, bad_shard, photo_folder, truncate

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory, ray_session):
    from pipelines.jobs.make_shards import make_shards

    root = tmp_path_factory.mktemp("pipe")
    make_shards(str(photo_folder(root / "photos", per_class=8)), str(root / "shards"), per_shard=6)
    expected_bad = bad_shard(root / "shards" / "zz-bad.tar")
    (root / "broken").mkdir()
    truncate(root / "shards" / "shard-000000.tar", root / "broken" / "cut.tar")
    return root, expected_bad


@pytest.fixture(scope="module")
def translator(data):
    root, _ = data
    out = root / "tr.safetensors"
    rc = sing(["-q", "fit-translator", "--model", CLASSIFIER, "--clip", CLIP,
               "--shards", str(root / "shards" / "shard-*.tar"), "--out", str(out)])
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def audited(data, translator):
    root, _ = data
    vocab = root / "concepts.txt"
    vocab.write_text("red\nstriped\nwooden\n")
    out = root / "results"
    rc = sing(["-q", "audit", "--model", CLASSIFIER, "--translator", str(translator), "--shards",
               str(root / "shards" / "*.tar"), str(root / "broken" / "cut.tar"), "--out", str(out),
               "--concepts", str(vocab), "--run-id", "r1"])
    assert rc == 0
    return out


def _read(out, table):
    return pl.read_parquet(str(Path(out) / table / "**" / "*.parquet"), hive_partitioning=True)


def test_fit_report_and_translator_equal_a_direct_solve(data, translator):
    """The Ray aggregate path must give the same translator as an in-process float64 solve."""

    from pipelines.models.clip import load_clip
    from pipelines.io.images import decode_image, normalise, to_uint8_view
    from pipelines.models.classifiers import load_classifier
    from pipelines.io.shards import Sample, iter_shard

    root, _ = data
    rep = json.loads(Path(f"{translator}.report.json").read_text())
    assert rep["n_train"] + rep["n_heldout"] == 24 and rep["heldout_shards"] == 1
    # clean shards: nothing left out (a shard's end marker is not an error row)
    assert rep["errors"]["rows"] == 0 and rep["heldout_read_errors"] == 0
    assert len(rep["lambda_grid"]) == 13 and rep["heldout"]["mse"] == min(r["mse"] for r in rep["lambda_grid"])
    assert 0 < rep["seconds"]["passes"] <= rep["seconds"]["total"]  # the file has both, as the returned report
    tr = load_translator(translator, source_model=CLASSIFIER, clip_model=CLIP)
    clf, clip = load_classifier(CLASSIFIER), load_clip(CLIP)
    # the report and the translator record the CLIP's full identity, activation included
    assert rep["clip_identity"] == tr.metadata["clip_identity"] == clip.identity
    assert clip.identity["activation"] == "gelu" and clip.identity["model"] == CLIP
    held = set(rep["heldout_shard_names"])
    assert held == {"shard-000002"}  # evenly spaced held-out shards: 4 shards, k = 1 -> the middle one
    train = [p for p in sorted((root / "shards").glob("shard-*.tar")) if p.stem not in held]
    fs, zs = [], []
    with torch.inference_mode():
        for p in train:
            for s in iter_shard(str(p)):
                assert isinstance(s, Sample)
                img = decode_image(s.image)
                fs.append(clf.features_and_logits(normalise(torch.from_numpy(
                    to_uint8_view(img, clf.preprocess))[None], clf.preprocess))[0][0].double())
                zs.append(clip.encode_image(normalise(torch.from_numpy(
                    to_uint8_view(img, clip.preprocess))[None], clip.preprocess))[0].double())
    f, z = torch.stack(fs).numpy(), torch.stack(zs).numpy()
    lam = tr.metadata["lambda"]
    fm, zm = f.mean(0), z.mean(0)
    a = np.linalg.solve((f - fm).T @ (f - fm) + lam * np.eye(f.shape[1]), (f - fm).T @ (z - zm)).T
    scale = np.abs(a).max()
    assert np.abs(tr.weight.double().numpy() - a).max() < 1e-3 * scale
    assert np.allclose(tr.bias.double().numpy(), zm - a @ fm, atol=1e-3 * (np.abs(zm).max() + 1))


def test_audit_rows_errors_and_manifest(data, audited):
    root, expected_bad = data
    images, errors = _read(audited, "images"), _read(audited, "errors")
    # every good (shard, key) exactly once: 24 clean + the 4 odd-format images of the bad
    # shard (+ what survives in the truncated copy of shard 0, which repeats its keys)
    assert images.select("shard", "key").n_unique() == images.height
    assert images.filter(pl.col("shard") != "cut").height == 24 + sum(v == "ok" for v in expected_bad.values())
    got = {r["key"]: r["stage"] for r in errors.filter(pl.col("shard") == "zz-bad").iter_rows(named=True)}
    assert got == {k: v for k, v in expected_bad.items() if v != "ok"}
    bomb = errors.filter(pl.col("key") == "bomb")["reason"][0]
    assert "100000" in bomb  # the message says how big it claimed to be
    # the truncated tar: complete samples before the damage are scored, then one read error
    cut = errors.filter(pl.col("shard") == "cut")
    assert cut.height == 1 and cut["stage"][0] == "read" and images.filter(pl.col("shard") == "cut").height >= 1
    assert images["null_dim"].unique().to_list() == [86]
    assert images["logit_drift"].max() < 1e-3
    assert (images["abs_as_deg"] - images["as_deg"].abs()).abs().max() < 1e-6
    man = json.loads((audited / "runs" / "r1.json").read_text())
    assert man["status"] == "complete" and man["models"][0]["null_dim"] == 86
    assert man["counts"]["timm-test_resnet-random-num_classes-10"]["images"] == images.height
    assert set(man["stage_seconds"]) == {"read_decode", "forward", "sing_ops", "write"}
    assert man["models"][0]["translator"]["clip_model"] == CLIP
    from pipelines.models.clip import load_clip

    clip = load_clip(CLIP).identity  # the CLIP the translator and the computed class text came from
    assert man["models"][0]["translator"]["clip_identity"] == clip and clip["activation"] == "gelu"
    assert man["models"][0]["class_text"]["clip_identity"] == clip


def test_audit_scores_match_independent_float64(data, translator, audited):
    """Recompute AS/IS/concept angles for one shard with explicit pinv projectors."""

    from pipelines.models.clip import load_clip
    from pipelines.io.images import decode_image, normalise, to_uint8_view
    from pipelines.models.classifiers import load_classifier
    from pipelines.io.shards import iter_shard
    from pipelines.models.text import CONCEPT_TEMPLATES

    root, _ = data
    clf, clip = load_classifier(CLASSIFIER), load_clip(CLIP)
    tr = load_translator(translator)
    w = clf.head_weight.double().numpy()
    p_n = np.eye(w.shape[1]) - np.linalg.pinv(w) @ w  # independent of the SVD route
    a, b = tr.weight.double().numpy(), tr.bias.double().numpy()
    from pipelines.models.clip import TEMPLATES, embed_prompts

    text = embed_prompts(clip, clf.class_names, TEMPLATES["single"]).double().numpy()
    conc = embed_prompts(clip, ["red", "striped", "wooden"], CONCEPT_TEMPLATES).double().numpy()

    def ang(u, v):
        return np.degrees(np.arccos(np.clip(u @ v / np.linalg.norm(u) / np.linalg.norm(v), -1, 1)))

    rows = _read(audited, "images").filter(pl.col("shard") == "shard-000001")
    concepts = queries.concept_rows(audited).filter(pl.col("shard") == "shard-000001")
    for s in iter_shard(str(root / "shards" / "shard-000001.tar")):
        u8 = torch.from_numpy(to_uint8_view(decode_image(s.image), clf.preprocess))[None]
        with torch.inference_mode():
            f = clf.features_and_logits(normalise(u8, clf.preprocess))[0][0].double().numpy()
        f_eq = f - p_n @ f
        z, z_eq = a @ f + b, a @ f_eq + b
        row = rows.filter(pl.col("key") == s.key).row(0, named=True)
        t = text[s.label]
        assert row["as_deg"] == pytest.approx(ang(z, t) - ang(z_eq, t), abs=2e-3)
        assert row["is_deg"] == pytest.approx(ang(z, z_eq), abs=2e-3)
        assert row["null_norm_frac"] == pytest.approx(np.linalg.norm(p_n @ f) / np.linalg.norm(f), abs=1e-4)
        assert row["pred"] == int(np.argmax(w @ f + clf.head_bias.double().numpy()))
        for k, name in enumerate(["red", "striped", "wooden"]):
            c = concepts.filter((pl.col("key") == s.key) & (pl.col("concept") == name)).row(0, named=True)
            assert c["angle_before_deg"] == pytest.approx(ang(z, conc[k]), abs=2e-3)
            assert c["angle_after_deg"] == pytest.approx(ang(z_eq, conc[k]), abs=2e-3)


def test_rerun_of_finished_run_does_no_work_and_duplicates_nothing(data, translator, audited):
    root, _ = data
    before = _read(audited, "images").height
    rc = sing(["-q", "audit", "--model", CLASSIFIER, "--translator", str(translator), "--shards",
               str(root / "shards" / "*.tar"), str(root / "broken" / "cut.tar"), "--out", str(audited),
               "--concepts", str(root / "concepts.txt"), "--run-id", "r1"])
    assert rc == 0
    man = json.loads((audited / "runs" / "r1.json").read_text())
    assert man["shards"]["todo"] == 0 and man["shards"]["skipped_done"] == man["shards"]["total"]
    assert _read(audited, "images").height == before


def test_several_shards_per_task_score_and_write_alike(data, translator, audited, tmp_path):
    """--shards-per-task 3: each read task and each model-actor task takes three whole shards as
    one block (fewer tasks: less driver CPU); every shard is still written and committed on its
    own, with the same rows, to the bit, as one shard per task."""
    root, _ = data
    out = tmp_path / "res"
    assert sing(_audit_args(root, translator, out) + ["--shards-per-task", "3"]) == 0
    man = json.loads((out / "runs" / "r1.json").read_text())
    assert man["shards"]["written"] == man["shards"]["total"] >= 4
    cols = ["shard", "key", "label", "pred", "as_deg", "is_deg", "pred_as_deg", "logit_drift", "null_norm_frac"]
    assert _read(out, "images").select(cols).sort("shard", "key").equals(
        _read(audited, "images").select(cols).sort("shard", "key"))
    angles = ["shard", "key", "angle_before_deg", "angle_after_deg"]
    assert queries.concept_rows(out).select(angles).sort("shard", "key", "angle_before_deg").equals(
        queries.concept_rows(audited).select(angles).sort("shard", "key", "angle_before_deg"))
    errs = ["shard", "key", "stage"]
    assert _read(out, "errors").select(errs).sort(errs).equals(_read(audited, "errors").select(errs).sort(errs))


def _audit_args(root, translator, out) -> list[str]:
    return ["-q", "audit", "--model", CLASSIFIER, "--translator", str(translator), "--shards",
            str(root / "shards" / "*.tar"), str(root / "broken" / "cut.tar"), "--out", str(out),
            "--concepts", str(root / "concepts.txt"), "--run-id", "r1"]


def test_a_run_resumed_across_the_layout_change_reads_alike(data, translator, audited, tmp_path):
    """A run begun before the concept lists (its first shard's angles in the long table) and
    resumed after (the second shard redone): every concept angle once, equal to the run written
    whole in lists."""
    import shutil

    from pipelines.stages.audit_tables import LONG_CONCEPTS_SCHEMA

    root, _ = data
    out = tmp_path / "res"
    shutil.copytree(audited, out)
    want = queries.concept_rows(audited).sort("shard", "key", "concept")
    d = lambda t: out / t / f"model={want['model'][0]}" / "run=r1"  # noqa: E731
    old = want.filter(pl.col("shard") == "shard-000000").drop("model", "run")
    (d("concept_angles") / "shard-000000.parquet").unlink()
    pq.write_table(old.to_arrow().select(LONG_CONCEPTS_SCHEMA.names).cast(LONG_CONCEPTS_SCHEMA),
                   d("concepts").mkdir(parents=True) or d("concepts") / "shard-000000.parquet")
    shutil.rmtree(d("concept_vocab"))  # written before the lists existed: no vocabulary either
    for t in ("images", "concept_angles", "errors"):
        (d(t) / "shard-000001.parquet").unlink()
    assert sing(_audit_args(root, translator, out)) == 0
    man = json.loads((out / "runs" / "r1.json").read_text())
    assert man["shards"]["written"] == 1
    got = queries.concept_rows(out).sort("shard", "key", "concept")
    assert got.select("shard", "key", "concept").equals(want.select("shard", "key", "concept"))
    # the same numbers to the bit: the redone shard is batched by its rows' positions, as in the
    # first run, not with whatever neighbours Ray bundled it with (stages.windows; before, the
    # redone shard moved by up to 7.6e-6 deg)
    assert got["as_deg"].to_list() == want["as_deg"].to_list()


def test_a_shard_that_cannot_be_written_is_retried_then_reported(data, translator, audited, tmp_path, capfd):
    """A shard's images file cannot be written (a directory stands in its place): every attempt
    fails on it, the run ends with exit 1 naming it, the other shards are on disk and the
    shard is not (its concept angles are never read); once the cause is gone the rerun writes
    it alone."""
    root, _ = data
    out = tmp_path / "res"
    args = _audit_args(root, translator, out) + ["--max-attempts", "2"]
    from pipelines.models.spec import parse_model_spec

    blocker = out / "images" / f"model={parse_model_spec(CLASSIFIER).slug}" / "run=r1" / "shard-000002.parquet"
    blocker.mkdir(parents=True)
    capfd.readouterr()
    assert sing(args) == 1  # in this process, on the suite's Ray: the actors write, the driver reports
    err = capfd.readouterr().err
    assert "shard shard-000002: IsADirectoryError" in err and "rerun the same command" in err, err[-3000:]
    man = json.loads((out / "runs" / "r1.json").read_text())
    assert [a["status"] for a in man["attempts"]] == ["restarted", "failed"]
    assert "could not be written" in man["attempts"][0]["trigger"]
    assert "shard-000002" not in set(queries.concept_rows(out)["shard"])
    blocker.rmdir()
    assert sing(_audit_args(root, translator, out)) == 0
    man = json.loads((out / "runs" / "r1.json").read_text())
    assert man["shards"]["written"] == 1 and man["shards"]["skipped_done"] == man["shards"]["total"] - 1
    images = _read(out, "images")
    assert images.height == images.select("shard", "key").n_unique()


@pytest.fixture(scope="module")
def one_per_shard(data):
    """The 24 photos in 24 shards of one: many shards for a kill or a reader to land between."""
    from pipelines.jobs.make_shards import make_shards

    root, _ = data
    make_shards(str(root / "photos"), str(root / "single"), per_shard=1)
    return str(root / "single" / "shard-*.tar")


def test_kill_mid_run_then_rerun_gives_every_key_exactly_once(one_per_shard, translator, tmp_path):
    """The driver is SIGKILLed once the first shard is written (the actors may go on writing
    until Ray ends them; its tasks took 5 shards each): the rerun resumes, one shard to a task,
    and every key is on disk exactly once."""
    out = tmp_path / "res"
    args = ["-q", "audit", "--model", CLASSIFIER, "--translator", str(translator), "--shards", one_per_shard,
            "--out", str(out), "--batch-size", "1"]
    kill = Path(__file__).parent / "scripts" / "kill_after.py"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    killed = subprocess.run([sys.executable, str(kill), "1", *args, "--shards-per-task", "5"], env=env,
                            capture_output=True, text=True, timeout=300)
    cmd = [sys.executable, "-m", "pipelines.cli", *args]
    assert killed.returncode == -9, killed.stderr[-2000:]  # SIGKILLed mid-run
    done_before = list(out.glob("images/**/*.parquet"))
    assert len(done_before) >= 1
    (done_before[0].parent / ".shard-000003.parquet.123.tmp").write_bytes(b"partial garbage")  # a torn write
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    images = pl.read_parquet(str(out / "images" / "**" / "*.parquet"))
    assert images.height == images["key"].n_unique() == 24
    man = json.loads(next((out / "runs").glob("*.json")).read_text())
    assert man["resumed_from"]["status"] == "running"
    assert man["shards"]["skipped_done"] >= len(done_before)
    assert man["shards"]["skipped_done"] + man["shards"]["written"] == 24


def test_readers_never_see_a_partial_shard_during_a_run(one_per_shard, translator, tmp_path):
    """While the actors write (concept lists before images, errors before both), a reader polling
    the results with the query engine sees each shard whole or not at all."""
    import time

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("red\nstriped\nwooden\n")
    out = tmp_path / "res"
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "-q", "audit", "--model", CLASSIFIER,
                             "--translator", str(translator), "--shards", one_per_shard, "--out", str(out),
                             "--batch-size", "1", "--concepts", str(vocab)], stderr=subprocess.PIPE, text=True)
    seen = set()
    while proc.poll() is None or not seen:
        if any(out.glob("images/**/*.parquet")) and any(out.glob("concept_vocab/**/*.parquet")):
            rows = queries.concept_rows(out)  # first: a shard done by then is done for the images read next
            images = queries.run_query("image_leakage", out, {"k": 1000})
            per_shard = rows.group_by("shard").agg(pl.len().alias("n"), pl.col("key").n_unique().alias("keys"))
            assert set(per_shard["shard"]) <= set(images["shard"])  # no concept of a shard not done
            assert (per_shard["n"] == 3).all() and (per_shard["keys"] == 1).all()
            seen |= set(images["shard"])
        if proc.poll() is not None and not seen:
            break
        time.sleep(0.05)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()[-2000:]
    assert 1 <= len(seen) <= 24


@pytest.mark.parametrize("argv,message", [
    (["audit", "--model", CLASSIFIER, "--translator", "T", "--shards", "/nonexistent/*.tar", "--out", "o"],
     "no shard matched"),
    (["audit", "--model", "timm:resnet5O", "--translator", "T", "--shards", "S", "--out", "o"], "resnet5O"),
    (["fit-translator", "--model", "nonsense-model", "--clip", CLIP, "--shards", "S", "--out", "o"], "nonsense"),
])
def test_bad_input_exits_2_before_work(argv, message, capsys, tmp_path):
    if "S" in argv:
        argv = [str(tmp_path / "x.tar") if a == "S" else a for a in argv]
        (tmp_path / "x.tar").write_bytes(b"")
    assert sing(argv) == 2
    assert message in capsys.readouterr().err


def test_translator_for_another_model_is_refused(data, translator, capsys):
    root, _ = data
    rc = sing(["audit", "--model", "timm:test_resnet@random?num_classes=5", "--translator", str(translator),
               "--shards", str(root / "shards" / "*.tar"), "--out", str(root / "never")])
    assert rc == 2
    assert "was fitted for source model" in capsys.readouterr().err
    assert not (root / "never").exists()  # nothing was started


def test_device_decode_mode_matches_host_decoding(data, translator, audited, tmp_path):
    """--decode device (here on the CPU: torchvision's decode_jpeg, as nvJPEG does on a GPU):
    the same keys scored, the same samples refused at the same stage, scores close to the
    pixel-exact host path (tensor resizing differs from PIL by a few grey levels)."""
    root, expected_bad = data
    out = tmp_path / "dev"
    assert sing(["-q", "audit", "--model", CLASSIFIER, "--translator", str(translator), "--shards",
                 str(root / "shards" / "*.tar"), str(root / "broken" / "cut.tar"), "--out", str(out),
                 "--run-id", "d1", "--decode", "device"]) == 0
    host, dev = _read(audited, "images"), _read(out, "images")
    assert sorted(zip(dev["shard"], dev["key"])) == sorted(zip(host["shard"], host["key"]))
    err_h = {(r["key"], r["stage"]) for r in _read(audited, "errors").iter_rows(named=True)}
    err_d = {(r["key"], r["stage"]) for r in _read(out, "errors").iter_rows(named=True)}
    assert err_d == err_h
    j = host.join(dev, on=["shard", "key"], suffix="_dev")
    assert (j["label"] == j["label_dev"]).all()
    diff = (j["as_deg"] - j["as_deg_dev"]).abs()
    assert diff.median() < 0.5 and diff.max() < 5.0, (diff.median(), diff.max())
    # the odd formats went to the host decoder in the read stage: identical scores
    odd = j.filter(pl.col("key").is_in(["png_rgb", "rgba", "cmyk"]))
    assert odd.height == 3 and (odd["as_deg"] - odd["as_deg_dev"]).abs().max() < 1e-4
    man = json.loads((out / "runs" / "d1.json").read_text())
    assert "device_decode" in man["stage_seconds"] and man["config"]["decode"] == "device"


def test_host_decode_share_one_is_host_decoding_through_the_device_path(data, translator, audited, tmp_path):
    """--host-decode-share 1: every JPEG is decoded by the read tasks and travels to the actor
    as view bytes: the scores must equal host mode's to float precision."""
    root, _ = data
    out = tmp_path / "share"
    assert sing(["-q", "audit", "--model", CLASSIFIER, "--translator", str(translator), "--shards",
                 str(root / "shards" / "*.tar"), "--out", str(out), "--run-id", "s1", "--decode", "device",
                 "--host-decode-share", "1"]) == 0
    host, dev = _read(audited, "images"), _read(out, "images")
    j = host.join(dev, on=["shard", "key"], suffix="_dev")
    assert j.height == dev.height == host.filter(pl.col("shard") != "cut").height
    for col in ("as_deg", "is_deg", "logit_drift"):
        assert (j[col] - j[col + "_dev"]).abs().max() < 1e-4, col
    assert (j["pred"] == j["pred_dev"]).all()
    assert json.loads((out / "runs" / "s1.json").read_text())["config"]["host_decode_share"] == 1.0


def test_threaded_actors_and_a_tiny_buffer_score_like_the_defaults(data, translator, audited, tmp_path):
    """--actor-threads 2: Ray runs two batches of each actor at once (true multi-threading);
    --buffer-gb 0.001: at most ~1 MB in flight between the stages (still progresses). Every key
    is scored once, with the default run's numbers."""
    import ray.data

    root, _ = data
    out = tmp_path / "threads"
    assert sing(["-q", "audit", "--model", CLASSIFIER, "--translator", str(translator), "--shards",
                 str(root / "shards" / "*.tar"), str(root / "broken" / "cut.tar"), "--out", str(out),
                 "--run-id", "t2", "--actor-threads", "2", "--batch-size", "4", "--buffer-gb", "0.001"]) == 0
    host, thr = _read(audited, "images"), _read(out, "images")
    assert thr.height == host.height and thr.select("shard", "key").n_unique() == thr.height
    j = host.join(thr, on=["shard", "key"], suffix="_thr")
    assert j.height == host.height
    for col in ("as_deg", "is_deg", "logit_drift", "null_norm_frac"):
        assert (j[col] - j[col + "_thr"]).abs().max() < 1e-4, col
    assert (j["pred"] == j["pred_thr"]).all()
    man = json.loads((out / "runs" / "t2.json").read_text())
    assert man["config"]["actor_threads"] == 2 and man["actor_pool"]["threads_per_actor"] == 2
    limits = ray.data.DataContext.get_current().execution_options.resource_limits
    assert limits.object_store_memory == pytest.approx(0.001 * 2**30)


@pytest.mark.parametrize("argv,needle", [
    (["--host-decode-share", "1.5", "--decode", "device"], "within [0, 1]"),
    (["--host-decode-share", "0.5"], "applies to --decode device"),
    (["--actor-threads", "0"], "must be at least 1"),
])
def test_bad_decode_options_are_refused_before_any_work(data, translator, tmp_path, capsys, argv, needle):
    root, _ = data
    rc = sing(["-q", "audit", "--model", CLASSIFIER, "--translator", str(translator), "--shards",
               str(root / "shards" / "*.tar"), "--out", str(tmp_path / "never"), *argv])
    assert rc == 2 and needle in capsys.readouterr().err
    assert not (tmp_path / "never").exists()
