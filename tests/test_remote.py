"""fsspec URLs for inputs (translators, checkpoints) and results: on fsspec's in-process
memory:// filesystem for what one process reads and writes, and on objstore:// (a local
filesystem that behaves like an object store: tests/objstore.py) for results that the model
actors write from their own processes (s3fs and gcsfs are not reachable from here)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pipelines.io.remote import is_url, local_copy
from pipelines.models.translator_file import save_translator


@pytest.fixture(autouse=True)
def mem(tmp_path, monkeypatch):
    """A clean memory:// store per test, and a private download cache."""
    fs = fsspec.filesystem("memory")

    def clear():
        fs.store.clear()
        fs.pseudo_dirs[:] = [""]

    clear()
    monkeypatch.setenv("SING_CACHE", str(tmp_path / "cache"))
    yield fs
    clear()


def test_is_url_and_local_paths(tmp_path):
    for u in ("s3://b/x.safetensors", "gs://b/x", "memory://x/y", "https://h/x.pt"):
        assert is_url(u), u
    for p in ("/a/b", "a/b", "file:///a/b", "C:/x", "~/x", Path("/a")):
        assert not is_url(p), p
    assert local_copy("file:///a/b.pt") == "/a/b.pt"
    assert local_copy(str(tmp_path / "x.pt")) == str(tmp_path / "x.pt")  # unchanged, even when missing


def test_local_copy_downloads_once_and_refreshes_when_the_remote_changes(mem, tmp_path, monkeypatch):
    mem.pipe_file("/data/t.safetensors", b"first")
    mem.pipe_file("/data/t.safetensors.json", b'{"id": 1}')
    calls = []
    real_get = type(mem).get_file
    monkeypatch.setattr(type(mem), "get_file", lambda self, r, l, **kw: (calls.append(r), real_get(self, r, l, **kw)))

    a = local_copy("memory://data/t.safetensors")
    assert Path(a).name == "t.safetensors" and Path(a).read_bytes() == b"first"
    assert Path(a).is_relative_to(tmp_path / "cache")  # $SING_CACHE
    assert Path(f"{a}.json").read_text() == '{"id": 1}'  # the translator's sidecar comes along
    assert len(calls) == 2
    assert local_copy("memory://data/t.safetensors") == a and len(calls) == 2  # cached: no download

    mem.pipe_file("/data/t.safetensors", b"second, longer")
    b = local_copy("memory://data/t.safetensors")
    assert b != a and Path(b).read_bytes() == b"second, longer"
    assert not list(Path(b).parent.glob(".*.tmp"))  # written atomically, no temp left behind

    c = local_copy("memory://data/t.safetensors", cache_dir=tmp_path / "other")
    assert Path(c).is_relative_to(tmp_path / "other") and Path(c).read_bytes() == b"second, longer"


def test_local_copy_of_a_missing_url_names_it():
    with pytest.raises(FileNotFoundError, match=r"memory://nowhere/t\.safetensors"):
        local_copy("memory://nowhere/t.safetensors")


def _translator(d=6, m=8, source="timm:test_resnet@random"):
    from sing_ops import Translator

    g = torch.Generator().manual_seed(0)
    return Translator(torch.randn(d, m, generator=g), torch.randn(d, generator=g),
                      {"source_model": source, "clip_model": "openclip:tiny@random"})


def test_translator_from_a_url(mem, tmp_path):
    from sing_ops.translator import TranslatorMismatch

    from pipelines.models.translator_file import load_translator_for

    tr = _translator()
    local = save_translator(tr, tmp_path / "t.safetensors")
    mem.put_file(str(local), "/tr/t.safetensors")
    clf = SimpleNamespace(num_features=8, model_id="timm:test_resnet@random")
    got = load_translator_for("memory://tr/t.safetensors", clf.model_id, clf)
    assert got.id == tr.id and got.metadata["clip_model"] == "openclip:tiny@random"
    other = SimpleNamespace(num_features=8, model_id="timm:test_resnet@e1.safetensors")
    assert load_translator_for("memory://tr/t.safetensors", "timm:test_resnet@/c/e1.safetensors", other,
                               "arch").id == tr.id
    with pytest.raises(TranslatorMismatch):
        load_translator_for("memory://tr/t.safetensors", other.model_id, other)  # exact: another model id
    with pytest.raises(FileNotFoundError, match="memory://tr/missing.safetensors"):
        load_translator_for("memory://tr/missing.safetensors", clf.model_id, clf)


def test_checkpoint_spec_with_a_url(mem, tmp_path):
    import timm
    from safetensors.torch import save_file

    from pipelines.io.manifest import file_sha256
    from pipelines.models.spec import parse_model_spec
    from pipelines.models.classifiers import load_classifier

    torch.manual_seed(3)
    sd = {k: v.contiguous() for k, v in timm.create_model("test_resnet", num_classes=10).state_dict().items()}
    local = tmp_path / "x.safetensors"
    save_file(sd, str(local))
    mem.put_file(str(local), "/ckpt/x.safetensors")

    spec = "timm:test_resnet@memory://ckpt/x.safetensors"
    ms = parse_model_spec(spec)
    assert (ms.weights, ms.path, ms.model_id) == ("file", "memory://ckpt/x.safetensors", "timm:test_resnet@x.safetensors")
    clf = load_classifier(spec, verify=False)
    assert clf.checkpoint_sha256 == file_sha256(local)
    assert clf.model_id == load_classifier(f"timm:test_resnet@{local}", verify=False).model_id
    assert torch.equal(clf.head_weight, sd[clf.head_name + ".weight"].float().reshape(10, -1))
    with pytest.raises(FileNotFoundError, match="memory://ckpt/y.safetensors"):
        load_classifier("timm:test_resnet@memory://ckpt/y.safetensors", verify=False)


def test_layout_on_a_url(mem, tmp_path):
    from pipelines.io.layout import count_rows, is_done, manifest_path, shard_file, write_table_atomic
    from pipelines.io.manifest import load_manifest, write_manifest

    out = "memory://results/"
    f = shard_file(out, "images", "m", "r", "s0")
    assert f == "memory://results/images/model=m/run=r/s0.parquet"
    assert not is_done(out, "m", "r", "s0") and count_rows(out, "images", "m", "r") == 0
    write_table_atomic(pa.table({"key": ["a", "b", "c"]}), f)
    write_table_atomic(pa.table({"key": ["d"]}), shard_file(out, "images", "m", "r", "s1"))
    assert is_done(out, "m", "r", "s0") and not is_done(out, "m", "r", "s2")
    assert count_rows(out, "images", "m", "r") == 4
    with mem.open("/results/images/model=m/run=r/s0.parquet", "rb") as fh:
        assert pq.read_table(fh).column("key").to_pylist() == ["a", "b", "c"]
    write_table_atomic(pa.table({"key": ["z"]}), f)  # a rerun overwrites, never appends
    assert count_rows(out, "images", "m", "r") == 2

    assert load_manifest(out, "r") is None
    assert write_manifest(out, "r", {"kind": "audit", "counts": {"x": 1}}) == manifest_path(out, "r")
    assert load_manifest(out, "r")["counts"] == {"x": 1}
    assert sorted(mem.find("/results")) == ["/results/images/model=m/run=r/s0.parquet",
                                            "/results/images/model=m/run=r/s1.parquet", "/results/runs/r.json"]
    # a local OUT is unchanged: Paths, temp + rename
    assert shard_file(tmp_path, "images", "m", "r", "s0") == str(tmp_path / "images" / "model=m" / "run=r" / "s0.parquet")
    write_manifest(str(tmp_path), "r", {"kind": "audit"})
    assert load_manifest(tmp_path, "r")["kind"] == "audit"


@pytest.fixture(scope="module")
def job_inputs(tmp_path_factory):
    """Local shards (6 images of classes 0-2 in 2 shards) and a translator of the right dims."""
    from pipelines.models.clip import load_clip
    from pipelines.models.classifiers import load_classifier
    from pipelines.io.shards import iter_shard
    from pipelines.jobs.make_shards import make_shards
    from tests.pipeline_data import CLASSIFIER, CLIP, photo_folder

    root = tmp_path_factory.mktemp("remote_job")
    shards = make_shards(str(photo_folder(root / "photos", per_class=2)), str(root / "shards"), per_shard=4)
    samples = {s.key: s.label for p in shards for s in iter_shard(str(p))}
    clf, d = load_classifier(CLASSIFIER), load_clip(CLIP).embed_dim
    tr = save_translator(_translator(d, clf.num_features, clf.model_id), root / "t.safetensors")
    return shards, samples, clf.slug, tr


def _keys(mem, pattern: str) -> tuple[int, list[str]]:
    files = mem.glob(pattern)
    keys = []
    for f in files:
        with mem.open(f, "rb") as fh:
            keys += pq.read_table(fh).column("key").to_pylist()
    return len(files), sorted(keys)


def _sing_on_objstore(*args: str) -> subprocess.CompletedProcess:
    """`sing` in a fresh process (its own Ray) where objstore:// is registered in every Python
    process, the model actors' included (tests/objstore.py)."""
    repo = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join([str(repo / "tests" / "objstore_site"), str(repo)])
    return subprocess.run([sys.executable, "-m", "pipelines.cli", "-q", *args], env=env, capture_output=True,
                          text=True, timeout=900)


def _store_keys(root: Path, pattern: str) -> tuple[int, list[str]]:
    files = sorted(root.glob(pattern))
    return len(files), sorted(k for f in files for k in pq.read_table(f).column("key").to_pylist())


@pytest.mark.slow
def test_audit_and_steer_write_results_to_an_object_store(job_inputs, tmp_path):
    """The model actors, in other processes, write each shard to an object-store URL (objstore://:
    whole objects, no rename) and read the translator from one; the rerun finds every shard
    done there and writes nothing; no staging object is left behind."""
    from tests.pipeline_data import CLASSIFIER

    shards, samples, slug, tr = job_inputs
    store = tmp_path / "store"
    (store / "models").mkdir(parents=True)
    for suffix in ("", ".json"):
        shutil.copyfile(f"{tr}{suffix}", store / "models" / f"t.safetensors{suffix}")
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("water\nstripes\ngrass\n")
    out = f"objstore://{store}/results"
    audit = ["audit", "--model", CLASSIFIER, "--translator", f"objstore://{store}/models/t.safetensors",
             "--shards", *map(str, shards), "--out", out, "--run-id", "u1", "--batch-size", "8",
             "--concepts", str(vocab)]
    first = _sing_on_objstore(*audit)
    assert first.returncode == 0, first.stderr[-3000:]
    res = store / "results"
    assert _store_keys(res, f"images/model={slug}/run=u1/*.parquet") == (len(shards), sorted(samples))
    assert _store_keys(res, f"concept_angles/model={slug}/run=u1/*.parquet") == (len(shards), sorted(samples))
    assert _store_keys(res, f"errors/model={slug}/run=u1/*.parquet") == (len(shards), [])
    assert json.loads((res / "runs" / "u1.json").read_text())["status"] == "complete"
    again = _sing_on_objstore(*audit)
    assert again.returncode == 0, again.stderr[-3000:]
    man = json.loads((res / "runs" / "u1.json").read_text())
    assert man["shards"]["skipped_done"] == len(shards) and man["shards"]["written"] == 0
    assert man["counts"][slug]["images"] == len(samples) and "resumed_from" in man

    steer = _sing_on_objstore("steer", "--model", CLASSIFIER, "--translator", str(tr), "--shards",
                              *map(str, shards), "--out", out, "--class", "1", "--prompt", "an image of a jellyfish",
                              "--is-deg", "40", "--run-id", "s1")
    assert steer.returncode == 0, steer.stderr[-3000:]
    of_class = sorted(k for k, y in samples.items() if y == 1)
    assert _store_keys(res, f"steer/model={slug}/run=s1/*.parquet") == (len(shards), of_class)
    assert not [p for p in store.rglob(".upload-*")] and not [p for p in store.rglob("*.tmp")]


def test_save_translator_to_a_url_uploads_sidecar_and_file(mem, tmp_path):
    from pipelines.models.translator_file import load_translator

    tr = _translator(4, 6, "timm:x")
    assert save_translator(tr, "memory://models/t.safetensors") == "memory://models/t.safetensors"
    assert json.loads(mem.cat_file("/models/t.safetensors.json"))["id"] == tr.id
    back = load_translator(local_copy("memory://models/t.safetensors"), in_dim=6, source_model="timm:x")
    assert back.id == tr.id and torch.equal(back.weight, tr.weight)
    with pytest.raises(ValueError, match="cannot open"):
        save_translator(tr, "nosuchscheme://b/t.safetensors")


@pytest.mark.slow
def test_fit_writes_the_translator_to_a_url(mem, job_inputs, ray_session):
    """fit-translator --out URL: translator, sidecar and report on the URL; an audit then
    loads the translator from there."""
    from pipelines.cli import main as sing
    from pipelines.models.translator_file import load_translator
    from tests.pipeline_data import CLASSIFIER, CLIP

    shards, samples, slug, _ = job_inputs
    url = "memory://fits/t.safetensors"
    assert sing(["-q", "fit-translator", "--model", CLASSIFIER, "--clip", CLIP, "--shards", *map(str, shards),
                 "--out", url, "--batch-size", "8"]) == 0
    rep = json.loads(mem.cat_file("/fits/t.safetensors.report.json"))
    tr = load_translator(local_copy(url), source_model=CLASSIFIER, clip_model=CLIP)
    assert rep["translator_id"] == tr.id == json.loads(mem.cat_file("/fits/t.safetensors.json"))["id"]
    assert rep["n_train"] + rep["n_heldout"] == len(samples)


def test_cache_prune_by_age_and_size_least_recently_used_first(mem, tmp_path, capsys):
    import os

    from pipelines.cli import main as sing
    from pipelines.io.remote import cache_entries, prune_cache

    cache = tmp_path / "cache"
    paths = {}
    for name, size in (("a", 3000), ("b", 2000), ("c", 1000)):
        mem.pipe_file(f"/in/{name}.bin", bytes(size))
        paths[name] = Path(local_copy(f"memory://in/{name}.bin"))
    t = 1_000_000_000.0
    for k, name in enumerate("abc"):  # a used first, c last
        os.utime(paths[name].parent, (t + 100 * k, t + 100 * k))
    local_copy("memory://in/a.bin")  # a cache hit marks a as just used
    assert [e["files"] for e in cache_entries(cache)] == [["b.bin"], ["c.bin"], ["a.bin"]]

    assert sing(["cache", "prune", "--max-gb", str(3500 / 2**30), "--dry-run"]) == 0
    assert "would remove 2 entries" in capsys.readouterr().out and len(cache_entries(cache)) == 3
    # age: only b and c are older than a day at t + 2 days; size: a alone fits
    gone = prune_cache(cache, older_than_s=86400, now=t + 2 * 86400, dry_run=True)
    assert [e["files"] for e in gone] == [["b.bin"], ["c.bin"]]
    gone = prune_cache(cache, max_bytes=3500)
    assert [e["files"] for e in gone] == [["b.bin"], ["c.bin"]]
    assert [e["files"] for e in cache_entries(cache)] == [["a.bin"]] and paths["a"].is_file()
    assert not paths["b"].exists() and Path(local_copy("memory://in/b.bin")).is_file()  # fetched again
    assert sing(["cache", "prune"]) == 2 and "size limit, an age limit" in capsys.readouterr().err
    assert sing(["cache", "ls"]) == 0 and "2 entries" in capsys.readouterr().out
