"""sing report's image galleries over real shards (tests/gallery_data.py): which images each strip
shows (checked against Polars), what each thumbnail says, the bounded read of the shards, moved
shards, and the links to explain sheets."""
from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil

import polars as pl
import pytest
from PIL import Image

from queries.report import build_report, cli_report
from tests.gallery_data import gallery_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return gallery_world(tmp_path_factory.mktemp("gallery"), per_class=8, per_shard=5)


def _strips(page: str) -> dict[str, list[list[str]]]:
    """h2 group title -> its strips, each the keys of its cards in order."""
    out: dict[str, list[list[str]]] = {}
    for part in page.split("<h2>")[1:]:
        title = html.unescape(part.split("</h2>", 1)[0])
        out[title] = [re.findall(r'<div class="key"[^>]*>([^<]+)</div>', s) for s in part.split('<div class="strip">')[1:]]
    return out


def _expected(df: pl.DataFrame, k: int) -> list[list[str]]:
    """The three strips by an independent computation (ties by shard, key)."""
    top = df.sort(["abs_as_deg", "shard", "key"], descending=[True, False, False]).head(k)["key"].to_list()
    low = df.sort(["abs_as_deg", "shard", "key"]).head(k)["key"].to_list()
    top_is = df.sort(["is_deg", "shard", "key"], descending=[True, False, False]).head(k)["key"].to_list()
    return [top, low, top_is]


def test_gallery_strips_thumbnails_and_captions(world, tmp_path):
    files = build_report(str(world.results), str(tmp_path / "rep"), gallery_classes=2, thumbs_per_class=9)
    (page_path,) = [f for f in files if f.name.startswith("gallery_")]
    page = page_path.read_text()
    strips = _strips(page)
    titles = list(strips)
    assert titles[0].startswith("All classes (3 with scored images)")
    assert _expected(world.images, 3) == strips[titles[0]]
    # the top 2 classes by median |AS|, in rank order, each with its own strips
    med = world.images.group_by("class_name").agg(pl.col("abs_as_deg").median()).sort("abs_as_deg", descending=True)
    assert [t.split("'")[1] for t in titles[1:]] == med["class_name"].head(2).to_list()
    for t in titles[1:]:
        cls = world.images.filter(pl.col("class_name") == t.split("'")[1])
        assert strips[t] == _expected(cls, 3)
    # every thumbnail is a real 160x160 JPEG of the image named beside it
    figs = re.findall(r'<figure class="thumb">(.*?)</figure>', page)
    assert len(figs) == 9 * 3
    for fig in figs:
        b64 = re.search(r'src="data:image/jpeg;base64,([^"]+)"', fig).group(1)
        with Image.open(io.BytesIO(base64.b64decode(b64))) as im:
            assert im.format == "JPEG" and im.size == (160, 160)
    # caption: key, true and predicted class, AS and IS, the top concept shifts (by |AS|)
    key = strips[titles[0]][0][0]
    row = world.images.filter(pl.col("key") == key).row(0, named=True)
    fig = next(f for f in figs if f">{key}<" in f)
    assert f"true: {row['class_name']}" in fig and f"pred: {row['pred_name']}" in fig
    assert f"AS {row['as_deg']:+.3f}° · IS {row['is_deg']:.3f}°" in fig
    con = world.concepts.filter(pl.col("key") == key).sort(pl.col("as_deg").abs(), descending=True).head(3)
    assert html.escape(", ".join(f"{c} {a:+.2f}°" for c, a in con.select("concept", "as_deg").iter_rows())) in fig
    assert (row["pred"] != row["label"]) == ("class=wrong" in fig)
    # index.html shows the all-class strips and links the page
    index = (tmp_path / "rep" / "index.html").read_text()
    assert f'href="{page_path.name}"' in index and index.count('<figure class="thumb">') == 9
    assert "http://" not in page and "<script" not in page


def test_only_the_shards_holding_wanted_keys_are_read_and_each_stops_early(world, tmp_path, monkeypatch):
    import pipelines.io.shards as shards_mod

    read: dict[str, int] = {}
    real = shards_mod.iter_shard

    def counting(path, require_label=True):
        for item in real(path, require_label):
            read[path] = read.get(path, 0) + 1
            yield item

    monkeypatch.setattr(shards_mod, "iter_shard", counting)
    build_report(str(world.results), str(tmp_path / "rep"), gallery_classes=0, thumbs_per_class=3)
    wanted = set(_expected(world.images, 1)[0] + _expected(world.images, 1)[1] + _expected(world.images, 1)[2])
    rows = world.images.filter(pl.col("key").is_in(list(wanted)))
    holding = {str(p) for p in world.shards if p.stem in set(rows["shard"].to_list())}
    assert set(read) == holding and len(holding) < len(world.shards)
    for p in holding:  # read up to the last wanted key of the shard, not beyond
        order = [s.key for s in real(p)]
        last = max(order.index(k) for k in rows.filter(pl.col("shard") == p.split("/")[-1][:-4])["key"])
        assert read[p] == last + 1


def test_moved_shards_are_pointed_to_with_shards(world, tmp_path, capsys):
    moved = tmp_path / "elsewhere"
    shutil.copytree(world.shards[0].parent, moved)
    results = tmp_path / "results"
    shutil.copytree(world.results, results)
    man = json.loads((results / "runs" / f"{world.run}.json").read_text())
    man["shard_paths"] = {k: str(tmp_path / "gone" / f"{k}.tar") for k in man["shard_paths"]}
    man["config"]["shards"] = [str(tmp_path / "gone" / "*.tar")]
    (results / "runs" / f"{world.run}.json").write_text(json.dumps(man))
    assert cli_report(["--results", str(results), "--out", str(tmp_path / "a"), "--gallery-classes", "0"]) == 0
    err = capsys.readouterr().err
    assert "could not be shown" in err and "not in" in err
    page = next((tmp_path / "a").glob("gallery_*.html")).read_text()
    assert "data:image/jpeg" not in page and page.count('class="noimg"') == 12
    assert cli_report(["--results", str(results), "--out", str(tmp_path / "b"), "--gallery-classes", "0",
                       "--shards", str(moved / "*.tar")]) == 0
    assert "could not be shown" not in capsys.readouterr().err
    assert next((tmp_path / "b").glob("gallery_*.html")).read_text().count("data:image/jpeg") == 12
    assert cli_report(["--results", str(results), "--out", str(tmp_path / "c"), "--shards", "/no/such/*.tar"]) == 2
    assert "--shards: no shard matched" in capsys.readouterr().err


def test_thumbnails_link_to_explain_sheets(world, tmp_path):
    from pipelines.models.thumbnails import explain_anchor

    top = world.images.sort(["abs_as_deg", "shard", "key"], descending=[True, False, False]).row(0, named=True)
    second = world.images.sort(["abs_as_deg", "shard", "key"]).row(0, named=True)
    ex = tmp_path / "explain"
    ex.mkdir()
    a1 = explain_anchor(top["shard"], top["key"])
    # a JSON with its sheet beside it, and a JSON alone
    (ex / "one.json").write_text(json.dumps({"meta": {"sheet": str(ex / "one.html")},
                                             "images": [{"shard": top["shard"], "key": top["key"]}]}))
    (ex / "one.html").write_text(f"<table><tr id='{a1}'><td>x</td></tr></table>")
    (ex / "two.json").write_text(json.dumps({"meta": {}, "images": [{"shard": second["shard"], "key": second["key"]}]}))
    (ex / "unrelated.json").write_text("[1, 2]")
    build_report(str(world.results), str(tmp_path / "rep"), gallery_classes=0, thumbs_per_class=3,
                 explain_dir=str(ex))
    page = next((tmp_path / "rep").glob("gallery_*.html")).read_text()
    assert f'href="../explain/one.html#{a1}"' in page and 'href="../explain/two.json"' in page
    n_top = 2 if top["key"] in _strips(page)["All classes (3 with scored images)"][2] else 1  # also top IS?
    assert page.count(f"one.html#{a1}") == 2 * n_top and page.count("two.json") == 2  # thumbnail + "explain"


def test_gallery_options(world, tmp_path, capsys):
    assert cli_report(["--results", str(world.results), "--out", str(tmp_path / "r"), "--thumbs-per-class", "0"]) == 0
    assert "0 image galleries" in capsys.readouterr().out and not list((tmp_path / "r").glob("gallery_*"))
    assert cli_report(["--results", str(world.results), "--out", str(tmp_path / "r"), "--thumbs-per-class", "-1"]) == 2
    assert "--thumbs-per-class must be >= 0" in capsys.readouterr().err
    assert cli_report(["--results", str(world.results), "--out", str(tmp_path / "r"), "--explain-dir",
                       str(tmp_path / "none")]) == 2
    assert "not a directory" in capsys.readouterr().err
    # --class adds that class's gallery even when it is not among the top ones
    last = world.images.group_by("class_name").agg(pl.col("abs_as_deg").median()).sort("abs_as_deg")["class_name"][0]
    build_report(str(world.results), str(tmp_path / "c"), gallery_classes=1, thumbs_per_class=3, concept_class=last)
    titles = list(_strips(next((tmp_path / "c").glob("gallery_*.html")).read_text()))
    assert len(titles) == 3 and titles[2].startswith(f"Class '{last}'")
