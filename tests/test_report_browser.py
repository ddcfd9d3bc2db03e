"""What a reader sees, in a real browser (headless Chromium, Debian's `chromium`): sing report's
index.html and a gallery page, an explain sheet that `sing explain` wrote and the gallery links
to, a nightly trend page, and the leaderboard page (a board alone and a 1,321-model one), whose
table sorts when a header is clicked. Every image loads, the console has no errors, no title or table
is cut; a page with each fault is caught (negative control). Skipped, saying why, where
Chromium is missing (`.ci/run` installs it when it can)."""
from __future__ import annotations

import re
from types import SimpleNamespace
from urllib.parse import urldefrag

import pytest

from tests.browser import Browser, chromium
from tests.gallery_data import gallery_world
from tests.pipeline_data import CLASSIFIER

pytestmark = pytest.mark.skipif(chromium() is None, reason="Chromium is not installed (Debian: apt-get install "
                                                           "chromium; or set SING_CHROMIUM to a Chrome binary)")


@pytest.fixture(scope="module")
def browser():
    with Browser() as b:
        yield b


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A report whose gallery links to a real explain sheet, and a nightly trend page."""
    from pipelines.cli import main as sing
    from queries.report import build_report
    from tests.test_multimodel import random_translator

    root = tmp_path_factory.mktemp("site")
    w = gallery_world(root, per_class=8, per_shard=5)
    top = w.images.sort(["abs_as_deg", "shard", "key"], descending=[True, False, False]).row(0, named=True)
    tr = random_translator(CLASSIFIER, root / "t.safetensors")
    shard_path = next(p for p in w.shards if p.stem == top["shard"])
    assert sing(["-q", "explain", f"{shard_path}#{top['key']}", "--model", CLASSIFIER, "--translator", str(tr),
                 "--json", str(root / "explain" / "top.json"), "--sheet", str(root / "explain" / "top.html")]) == 0
    build_report(str(w.results), str(root / "report"), gallery_classes=2, thumbs_per_class=9,
                 explain_dir=str(root / "explain"))
    return SimpleNamespace(root=root, report=root / "report", sheet=root / "explain" / "top.html", top=top,
                           trend=_trend(root))


def _trend(root):
    from pipelines.jobs.nightly.config import Thresholds
    from pipelines.jobs.nightly.trend import write_trend
    from tests.results_factory import write_results

    write_results(root / "nightly", models={"m": {"runs": {"r2": {"as_scale": 3.0}}}}, runs=("r1", "r2"),
                  n_per_class=8, n_classes=3, with_concepts=False)
    cfg = SimpleNamespace(out=str(root / "nightly"), name="series", checkpoints=SimpleNamespace(order="name"),
                          thresholds=Thresholds(max_median_abs_as_increase_deg=0.2, max_error_rate=0.01))
    check = {"check": "median_abs_as_increase_deg", "limit": 0.2, "baseline": 0.5, "passed": False,
             "interval": [0.4, 1.2]}
    judged = {n: {"name": n, "slug": "m", "run_id": r, "verdict": v, "order_key": {"name": [n]}, "checks": c}
              for n, r, v, c in (("epoch_01", "r1", "no-baseline", []), ("epoch_02", "r2", "alarm", [check]))}
    return write_trend(cfg, judged)


def _clean(got: dict, min_images: int) -> None:
    assert got["images"] >= min_images and got["broken"] == [] and got["cut"] == [] and got["errors"] == [], got


def test_index_and_gallery_render_clean(browser, site):
    _clean(browser.check(site.report.joinpath("index.html").as_uri()), min_images=4 + 9)  # 4 figures of one model, its 9 all-class thumbnails
    (gallery,) = site.report.glob("gallery_*.html")
    _clean(browser.check(gallery.as_uri()), min_images=9 * 3)


def test_the_gallery_links_to_the_explain_sheet_which_renders_clean(browser, site):
    from pipelines.models.thumbnails import explain_anchor

    (gallery,) = site.report.glob("gallery_*.html")
    hrefs = set(re.findall(r'href="([^"]*explain[^"]*)"', gallery.read_text()))
    anchor = explain_anchor(site.top["shard"], site.top["key"])
    assert hrefs == {f"../explain/top.html#{anchor}"}
    target, frag = urldefrag(next(iter(hrefs)))
    assert (site.report / target).resolve() == site.sheet.resolve() and f"id='{frag}'" in site.sheet.read_text()
    _clean(browser.check(site.sheet.as_uri()), min_images=1)


def test_trend_page_renders_clean(browser, site):
    _clean(browser.check(site.trend.as_uri()), min_images=1)


def test_the_check_catches_a_broken_image_a_cut_title_and_console_errors(browser, tmp_path):
    page = tmp_path / "bad.html"
    page.write_text("<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>bad</title></head><body>"
                    "<h2 style='white-space:nowrap;width:200px;overflow:hidden'>a title far too long for its box, "
                    "cut short</h2><img src='missing.png' alt='missing'>"
                    "<table><tr><td style='white-space:nowrap'>" + "wide cell " * 300 + "</td></tr></table>"
                    "<script>console.error('boom')</script></body></html>")
    got = browser.check(page.as_uri())
    assert got["broken"] == ["missing"]
    assert any(c.startswith("h2: a title far too long") for c in got["cut"])
    assert any(c.startswith("table:") for c in got["cut"]) and "page scrolls sideways" in got["cut"]
    assert any("missing.png" in e for e in got["errors"]) and "boom" in got["errors"]


# ---------------------------------------------------------------- the leaderboard page

# Click headers and read the model column back after each click; then type in the filter box.
_SORT_JS = r"""
(() => {
  const table = document.querySelector('table.board'), heads = table.tHead.rows[0].cells;
  const models = () => Array.from(table.tBodies[0].rows).map(tr => tr.querySelector('td.model').textContent);
  const out = {initial: models(), clicks: []};
  for (const c of %s) { heads[c].click(); out.clicks.push(models()); }
  out.marked = Array.from(heads).filter(h => h.getAttribute('aria-sort')).map(h => [h.cellIndex, h.getAttribute('aria-sort')]);
  const find = document.getElementById(table.dataset.find);
  find.value = 'REGNET';
  find.dispatchEvent(new Event('input'));
  out.shown = Array.from(table.tBodies[0].rows).filter(tr => !tr.hidden).map(tr => tr.querySelector('td.model').textContent);
  return out;
})()
"""


@pytest.fixture(scope="module")
def boards(tmp_path_factory):
    """A board alone (the default rows, skipped and failed ones included) and a zoo-sized one."""
    from queries.report import build_report
    from tests.results_factory import leaderboard_models, write_leaderboard

    root = tmp_path_factory.mktemp("boards")
    small = write_leaderboard(root / "small", seed=7)
    build_report(str(root / "small"), str(root / "small_report"))
    write_leaderboard(root / "zoo", leaderboard_models(1321, seed=9))
    build_report(str(root / "zoo"), str(root / "zoo_report"))
    return SimpleNamespace(small=small, small_report=root / "small_report", zoo_report=root / "zoo_report")


def _by(order: list[str], rows, column: str, descending: bool) -> list[str]:
    """`order` stably sorted by a numeric `column` (ties keep `order`, NULLs last either way),
    as a header click should."""
    value = {r["model"]: r[column] for r in rows.iter_rows(named=True)}
    sign = -1 if descending else 1
    return sorted((m for m in order if value[m] is not None), key=lambda m: sign * value[m]) + \
        [m for m in order if value[m] is None]


def test_leaderboard_page_and_its_index_render_clean(browser, boards):
    _clean(browser.check(boards.small_report.joinpath("leaderboard.html").as_uri()), min_images=3)
    _clean(browser.check(boards.small_report.joinpath("index.html").as_uri()), min_images=0)
    _clean(browser.check(boards.zoo_report.joinpath("leaderboard.html").as_uri()), min_images=3)


def test_clicking_a_header_sorts_the_rows(browser, boards):
    import polars as pl

    from queries.report_leaderboard import COLUMNS

    col = {c[0]: j for j, c in enumerate(COLUMNS)}
    clicks = [col["median_abs_as"], col["median_abs_as"], col["params"], col["model"]]
    got = browser.check(boards.small_report.joinpath("leaderboard.html").as_uri(), _SORT_JS % clicks)
    assert got["errors"] == [], got["errors"]
    out, rows = got["script"], boards.small
    ok = rows.filter(pl.col("status") == "ok").sort(["median_ratio", "model"], descending=[True, False])
    bad = rows.filter(pl.col("status") != "ok").sort("status", "model")
    initial = ok["model"].to_list() + bad["model"].to_list()
    assert out["initial"] == initial
    up = _by(initial, rows, "median_abs_as", False)          # first click on |AS|: least leakage first
    assert out["clicks"][0] == up and out["clicks"][0][:ok.height] != initial[:ok.height]
    assert out["clicks"][1] == _by(initial, rows, "median_abs_as", True)    # again: reversed, NULLs still last
    assert out["clicks"][2] == _by(initial, rows, "params", True)           # params: largest first
    assert out["clicks"][3] == sorted(initial, key=str.lower)               # text: alphabetical
    assert out["marked"] == [[col["model"], "ascending"]]
    text = {r["model"]: " ".join(str(r[k]) for k in ("model", "family", "pretrain", "reason")).lower()
            for r in rows.iter_rows(named=True)}
    assert out["shown"] == [m for m in out["clicks"][3] if "regnet" in text[m]]
    assert 0 < len(out["shown"]) < rows.height
