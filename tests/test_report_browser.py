"""What a reader sees, in a real browser (headless Chromium, Debian's `chromium`): sing report's
index.html and a gallery page, an explain sheet that `sing explain` wrote and the gallery links
to, and a nightly trend page. Every image loads, the console has no errors, no title or table
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
    from pipelines.jobs.nightly_config import Thresholds
    from pipelines.jobs.nightly_trend import write_trend
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
    from pipelines.jobs.explain_render import explain_anchor

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
