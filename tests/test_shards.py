import io
import json
import os
import tarfile

import pytest

from pipelines.io.shards import NoShardsError, Sample, SampleError, expand_shards, iter_shard, shard_name
from pipelines.jobs.make_shards import make_shards


def _tar(path, members):
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return str(path)


@pytest.fixture(scope="module")
def shards(image_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards")
    return out, make_shards(str(image_folder), str(out), per_shard=4)


def test_make_shards_roundtrip(image_folder, shards):
    out, paths = shards
    assert [os.path.basename(p) for p in paths] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert json.loads((out / "class_index.json").read_text()) == {"n01440764": 0, "n01443537": 1}
    got = [s for p in paths for s in iter_shard(p)]
    assert all(isinstance(s, Sample) for s in got) and len(got) == 10  # README.txt skipped
    # deterministic order: classes sorted, files sorted; ImageNet synsets keep their index
    assert [s.key for s in got[:2]] == ["n01440764/n01440764_0", "n01440764/n01440764_1"]
    assert [s.label for s in got] == [0] * 5 + [1] * 5
    assert [s.shard for s in got] == ["shard-000000"] * 4 + ["shard-000001"] * 4 + ["shard-000002"] * 2
    for s in got:
        src = image_folder / s.meta["source_path"]
        assert s.image == src.read_bytes()  # bytes identical
        assert s.ext == src.suffix[1:].lower()
        assert s.meta["synset"] == src.parent.name
    goldfish = [s for s in got if s.meta["synset"] == "n01443537"]
    assert {s.label for s in goldfish} == {1} and goldfish[0].meta["class_name"] == "goldfish"
    assert got[0].meta["class_name"] == "tench"


def test_make_shards_is_reproducible_and_guards_overwrite(image_folder, shards, tmp_path):
    _, paths = shards
    again = make_shards(str(image_folder), str(tmp_path), per_shard=4)
    for a, b in zip(paths, again):
        assert open(a, "rb").read() == open(b, "rb").read()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        make_shards(str(image_folder), str(tmp_path), per_shard=4)
    assert len(make_shards(str(image_folder), str(tmp_path), per_shard=100, overwrite=True)) == 1
    assert sorted(os.listdir(tmp_path)) == ["class_index.json", "shard-000000.tar"]  # stale shards gone, no tmp


def test_make_shards_class_index_options(tmp_path):
    from PIL import Image

    src = tmp_path / "src"
    for c in ("zebra", "apple", "mango"):
        (src / c).mkdir(parents=True)
        Image.new("RGB", (8, 8), "red").save(src / c / "a.b.png")
        Image.new("RGB", (8, 8), "blue").save(src / c / "a.b.jpg")  # same stem: keys must not clash
    paths = make_shards(str(src), str(tmp_path / "o1"))
    got = list(iter_shard(paths[0]))
    assert {s.meta["class_name"]: s.label for s in got} == {"apple": 0, "mango": 1, "zebra": 2}
    assert [s.key for s in got[:2]] == ["apple/a_b", "apple/a_b-1"] and got[0].meta["synset"] is None
    ci = tmp_path / "ci.json"
    ci.write_text(json.dumps({"zebra": 7, "apple": 3, "mango": 5}))
    got = list(iter_shard(make_shards(str(src), str(tmp_path / "o2"), class_index=str(ci))[0]))
    assert {s.meta["class_name"]: s.label for s in got} == {"apple": 3, "mango": 5, "zebra": 7}
    with pytest.raises(ValueError, match="no entry for 1 folders"):
        make_shards(str(src), str(tmp_path / "o3"), class_index={"zebra": 0, "apple": 1})


def test_make_shards_empty_sources(tmp_path):
    with pytest.raises(ValueError, match="no class folders"):
        make_shards(str(tmp_path), str(tmp_path / "out"))
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "x.txt").write_text("x")
    with pytest.raises(ValueError, match="no images"):
        make_shards(str(tmp_path), str(tmp_path / "out"))
    with pytest.raises(ValueError, match="not a directory"):
        make_shards(str(tmp_path / "missing"), str(tmp_path / "out"))


@pytest.mark.parametrize("cut", ["half", "header", "member-data", "end-marker", "garbage-header"])
def test_truncated_tar_yields_complete_samples_then_one_error(shards, tmp_path, cut):
    _, paths = shards
    data = open(paths[0], "rb").read()
    full = list(iter_shard(paths[0]))
    with tarfile.open(paths[0]) as tf:
        members = tf.getmembers()
    # offsets: 'header' = the header of the 2nd sample's image (1st sample complete);
    # 'end-marker' = right after the last member's data: every sample is there but the
    # archive end is missing, which tarfile alone reports as a clean end.
    last = members[-1]
    n_blocks = (last.size + 511) // 512
    offs = {"half": len(data) // 2, "header": members[3].offset, "member-data": members[3].offset_data + 10,
            "end-marker": last.offset_data + n_blocks * 512}
    bad = tmp_path / "cut.tar"
    if cut == "garbage-header":
        bad.write_bytes(data[: members[3].offset] + b"\x7fgarbage" * 64 + data[members[3].offset + 512:])
    else:
        bad.write_bytes(data[: offs[cut]])
    got = list(iter_shard(str(bad)))  # never raises
    assert isinstance(got[-1], SampleError) and got[-1].key == "cut#truncated" and got[-1].stage == "read"
    ok = got[:-1]
    assert all(isinstance(s, Sample) for s in ok)
    assert [s.key for s in ok] == [s.key for s in full[: len(ok)]]
    assert all(a.image == b.image and a.label == b.label for a, b in zip(ok, full))
    if cut in ("header", "garbage-header", "member-data"):
        assert len(ok) == 1
    if cut == "member-data":  # the sample whose image is cut is dropped and named
        assert "cut short" in got[-1].reason and repr(full[1].key) in got[-1].reason
    if cut == "half":
        assert 0 < len(ok) < len(full)
    if cut == "end-marker":
        assert len(ok) == len(full)
    assert "offset" in got[-1].reason or "cut short" in got[-1].reason


def test_sample_level_errors(tmp_path):
    p = _tar(tmp_path / "mixed.tar", [
        ("a.jpg", b"A"), ("a.cls", b"3"),
        ("b.png", b"B"),  # no label
        ("c.cls", b"1"), ("c.txt", b"no image"),
        ("d.webp", b"D"), ("d.json", json.dumps({"label": 5, "src": "x"}).encode()),
        ("e.jpeg", b"E"), ("e.cls", b"cat"),
        ("sub/dir/f.g.JPG", b"F"), ("sub/dir/f.g.cls", b"2"),  # key keeps the dir; ext after 1st dot
        ("a.json", b"{}"),  # key 'a' again, not contiguous
    ])
    got = {(s.key, type(s).__name__): s for s in iter_shard(p)}
    assert got[("a", "Sample")].label == 3 and got[("a", "Sample")].image == b"A"
    assert got[("b", "SampleError")].stage == "label"
    assert got[("c", "SampleError")].stage == "read" and "no image" in got[("c", "SampleError")].reason
    d = got[("d", "Sample")]
    assert d.label == 5 and d.ext == "webp" and d.meta["src"] == "x"
    assert got[("e", "SampleError")].stage == "label" and "'cat'" in got[("e", "SampleError")].reason
    assert ("sub/dir/f", "Sample") not in got  # ext is 'g.jpg', not an image ext
    assert got[("sub/dir/f", "SampleError")].stage == "read"
    assert got[("a", "SampleError")].reason.startswith("duplicate key")
    unl = {s.key: s for s in iter_shard(p, require_label=False)}
    assert unl["b"].label is None and isinstance(unl["b"], Sample)


def test_not_a_tar_and_missing_file(tmp_path):
    (tmp_path / "x.tar").write_bytes(b"this is not a tar file" * 100)
    got = list(iter_shard(str(tmp_path / "x.tar")))
    assert len(got) == 1 and got[0].key == "x#truncated"
    got = list(iter_shard(str(tmp_path / "missing.tar")))
    assert len(got) == 1 and got[0].stage == "read" and "missing" in got[0].reason


def test_expand_shards_local(shards, tmp_path):
    out, paths = shards
    assert expand_shards(str(out)) == paths  # a directory means DIR/*.tar
    assert expand_shards(f"{out}/shard-*.tar") == paths
    assert expand_shards(f"{out}/shard-{{000000..000002}}.tar") == paths
    assert expand_shards([paths[2], f"{out}/shard-00000[01].tar", paths[0]]) == paths  # sorted, dedup
    with pytest.raises(NoShardsError, match=r'no shard matched ".*/nothing-\*.tar"'):
        expand_shards(f"{out}/nothing-*.tar")
    with pytest.raises(NoShardsError, match=r'no shard matched ".*shard-000003.tar"'):
        expand_shards(f"{out}/shard-{{000000..000003}}.tar")
    with pytest.raises(NoShardsError):
        expand_shards([])
    assert shard_name("/a/b/shard-000001.tar") == "shard-000001"
    assert shard_name("s3://bucket/x/train-01.tar") == "train-01"


def test_fsspec_urls(shards):
    import fsspec

    _, paths = shards
    fs = fsspec.filesystem("memory")
    for p in paths:
        fs.pipe(f"/bucket/ds/{os.path.basename(p)}", open(p, "rb").read())
    urls = expand_shards("memory://bucket/ds/*.tar")
    assert urls == [f"memory:///bucket/ds/shard-00000{i}.tar" for i in range(3)]
    assert expand_shards("memory://bucket/ds") == urls
    got = [s for u in urls for s in iter_shard(u)]
    local = [s for p in paths for s in iter_shard(p)]
    assert [(s.key, s.label, s.image) for s in got] == [(s.key, s.label, s.image) for s in local]
    with pytest.raises(NoShardsError):
        expand_shards("memory://bucket/none-*.tar")
