"""sing report's leaderboard page (queries/report_leaderboard.py, report_leaderboard_figures.py)
over rows tests/results_factory.write_leaderboard wrote: every row once with its exact numbers,
skipped and failed rows with their reason, the figures' points, colours, labels and legends
checked against an independent Polars computation, and a zoo-sized board of 1,321 models timed.
How it reads in a browser (sorting by a header click): tests/test_report_browser.py."""
from __future__ import annotations

import html
import re
import time

import polars as pl
import pytest
from PIL import Image

from queries.report import build_report, cli_report
from queries.report_leaderboard import COLUMNS
from tests.results_factory import leaderboard_models, write_leaderboard, write_results


def _rows(page: str) -> dict[str, str]:
    """model slug -> its <tr> (the model cell is the one with class=model)."""
    out = {}
    for tr in re.findall(r"<tr[^>]*>.*?</tr>", page, re.S):
        m = re.search(r"<td data-c=1 class=model[^>]*>(.*?)</td>", tr)
        if m:
            out[html.unescape(m.group(1))] = tr
    return out


def _value(tr: str, column: str):
    """The exact value a numeric cell sorts by (None for an empty or absent cell)."""
    m = re.search(rf"data-c={[c[0] for c in COLUMNS].index(column)}[^>]*data-v='([^']*)'", tr)
    return None if m is None or m.group(1) == "" else float(m.group(1))


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    root = tmp_path_factory.mktemp("board")
    rows = write_leaderboard(root, seed=7)
    out = root / "report"
    files = build_report(str(root), str(out))
    return root, rows, out, files


def test_a_board_alone_gets_its_page_and_an_index_that_leads_there(board):
    root, rows, out, files = board
    assert [f.name for f in files] == ["leaderboard_00_b1_is_vs_as.png", "leaderboard_00_b1_ratio_vs_top1.png",
                                       "leaderboard_00_b1_ratio_vs_params.png", "leaderboard.html", "index.html"]
    for f in files[:3]:
        with Image.open(f) as im:
            assert im.format == "PNG" and im.size == (1000, 660)
    index = (out / "index.html").read_text()
    assert "href='leaderboard.html'" in index and "No images table" in index
    page = (out / "leaderboard.html").read_text()
    assert set(re.findall(r'<img src="([^"]+)"', page)) == {f.name for f in files[:3]}
    assert "http://" not in page and "https://" not in page and page.count("<script>") == 1
    for term in ("Attribute Score", "Image Score", "median IS/|AS|", "mean IS / mean |AS|", "Bootstrap 95%"):
        assert term in html.unescape(page), term


def test_every_row_once_with_its_numbers_and_reasons(board):
    root, rows, out, files = board
    page = (out / "leaderboard.html").read_text()
    got = _rows(page)
    assert set(got) == set(rows["model"]) and len(re.findall(r"<td data-c=1 class=model", page)) == rows.height
    for r in rows.iter_rows(named=True):
        tr = got[r["model"]]
        if r["status"] == "ok":
            for col in ("top1", "median_abs_as", "median_is", "median_ratio", "ratio_of_means", "heldout_cosine",
                        "params", "seconds"):
                assert _value(tr, col) == pytest.approx(r[col], rel=1e-15), (r["model"], col)
            assert f"[{r['median_ratio_lo']:.1f}, {r['median_ratio_hi']:.1f}]" in tr
            assert html.escape(f"{r['top_concepts'][0]['concept']} {r['top_concepts'][0]['mean_as']:+.2f}") in tr
        else:   # the reason in place of the numbers, which sort as empty
            assert f"class=reason>{html.escape(r['reason'])}</td>" in tr and f"<tr class={r['status']}>" in tr
            assert all(_value(tr, c) is None for c in ("median_ratio", "median_abs_as", "top1", "rank"))
    ok = rows.filter(pl.col("status") == "ok").sort(["median_ratio", "model"], descending=[True, False])
    order = [m for m in _rows(page)]
    assert order[:ok.height] == ok["model"].to_list()             # the board's order: best ratio first
    assert "timm-jack-o&#x27;-lantern_net.in1k" in page


def _drawn(monkeypatch):
    """Capture each leaderboard figure as it is saved: [(file name, Figure)]."""
    import queries.report_leaderboard_figures as lf

    seen, real = [], lf._save

    def keep(fig, path, written):
        real(fig, path, written)
        seen.append((path.name, fig))

    monkeypatch.setattr(lf, "_save", keep)
    return seen


@pytest.mark.parametrize("n", [None, 300])
def test_figures_points_legends_and_labels(tmp_path, monkeypatch, n):
    """Points = the ok models with values; a legend entry per common family (the rest one
    grey 'other' entry) whose counts add up; the named models are the documented ones; no two
    labels overlap; titles, legends and labels stay inside the image."""
    from matplotlib.text import Annotation, Text

    import queries.report_leaderboard_figures as lf

    rows = write_leaderboard(tmp_path, None if n is None else leaderboard_models(n, seed=4), seed=2)
    seen = _drawn(monkeypatch)
    build_report(str(tmp_path), str(tmp_path / "rep"))
    ok = rows.filter(pl.col("status") == "ok")
    fam = ok["family"].value_counts().sort(["count", "family"], descending=[True, False])
    own = fam.head(len(lf.COLOURS) if fam.height <= len(lf.COLOURS) else len(lf.COLOURS) - 1)
    best = ok.sort("median_ratio", descending=True)
    named = set(ok["model"]) if ok.height <= lf.LABEL_ALL else \
        set(best.head(lf.LABEL_BEST)["model"]) | set(best.tail(lf.LABEL_WORST)["model"])
    assert len(seen) == 3
    for name, fig in seen:
        ax = fig.axes[0]
        r = fig.canvas.get_renderer()
        points = sum(len(c.get_offsets()) for c in ax.collections if c.get_facecolors().size)
        assert points == ok.height, name                          # every ok model once (rings are hollow)
        fam_legend, pre_legend = ax.artists[0], ax.get_legend()
        labels = [t.get_text() for t in fam_legend.get_texts()]
        assert labels[:own.height] == [f"{f} ({c})" for f, c in own.iter_rows()]
        counts = [int(re.search(r"\((\d+)\)$", t).group(1)) for t in labels]
        assert sum(counts) == ok.height == sum(int(re.search(r"\((\d+)\)$", t.get_text()).group(1))
                                              for t in pre_legend.get_texts())
        texts = [t for t in ax.texts if isinstance(t, Annotation)]
        shown = {t.get_text() for t in texts}
        assert shown == {lf._short(m) for m in named}, name
        boxes = [Text.get_window_extent(t, r) for t in texts]
        assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:]), name
        for box in boxes + [ax.title.get_window_extent(r), fam_legend.get_window_extent(r),
                            pre_legend.get_window_extent(r)]:
            assert box.x0 >= 0 and box.y0 >= 0 and box.x1 <= fig.bbox.width and box.y1 <= fig.bbox.height, name


def test_with_images_the_index_links_the_page_and_each_board_has_a_section(tmp_path):
    write_results(tmp_path, models={"a": {}, "b": {"as_scale": 2.0}}, n_per_class=6, n_classes=4, with_concepts=False)
    write_leaderboard(tmp_path, board="b1")
    write_leaderboard(tmp_path, leaderboard_models(12, seed=1), board="b 2", seed=3)
    files = build_report(str(tmp_path), str(tmp_path / "rep"), thumbs_per_class=0)
    names = [f.name for f in files]
    assert names[-1] == "index.html" and "leaderboard.html" in names and "ratio_bars.png" in names
    assert sum(n.startswith("leaderboard_00_b-2_") for n in names) == 3    # a board id made file-safe
    index = (tmp_path / "rep" / "index.html").read_text()
    assert "href='leaderboard.html'" in index and "ratio_of_means" in index
    page = (tmp_path / "rep" / "leaderboard.html").read_text()
    assert page.count("<table class=board") == 2 and "<h2>Board b 2</h2>" in page and "<h2>Board b1</h2>" in page


def test_max_models_caps_the_per_model_figures_not_the_tables(tmp_path, capsys):
    w = write_results(tmp_path, models={m: {"as_scale": 0.5 + k} for k, m in enumerate("pqrs")}, n_per_class=5,
                      n_classes=3, with_concepts=False)
    files = build_report(str(w.root), str(tmp_path / "rep"), thumbs_per_class=0, max_models=2)
    from queries import model_summary

    first = model_summary(w.root)["model"].to_list()[:2]
    assert sorted(f.name for f in files if f.name.startswith("as_is_")) == \
        sorted(f"as_is_{j:02d}_{m}_run-0.png" for j, m in enumerate(first))
    index = (tmp_path / "rep" / "index.html").read_text()
    assert "4 model/runs: per-model figures and galleries for the first 2" in index
    assert all(f"<td>{m}</td>" in index for m in "pqrs")
    assert cli_report(["--results", str(w.root), "--out", str(tmp_path / "o"), "--max-models", "0"]) == 2
    assert capsys.readouterr().err == "sing report: error: --max-models must be >= 1, got 0\n"


def test_a_zoo_sized_board_reports_fast(tmp_path, capsys):
    """1,321 models (timm's ImageNet-1k tags): the whole report in well under a minute on two
    shared cores (about 3-5 s measured), a page of a few MB."""
    rows = write_leaderboard(tmp_path, leaderboard_models(1321, seed=9))
    t0 = time.perf_counter()
    build_report(str(tmp_path), str(tmp_path / "rep"))
    seconds = time.perf_counter() - t0
    with capsys.disabled():
        print(f"\n1,321-model leaderboard report: {seconds:.1f} s")
    page = (tmp_path / "rep" / "leaderboard.html").read_text()
    assert len(_rows(page)) == rows.height == 1321
    assert len(page) < 4_000_000 and seconds < 60


def test_a_board_with_nothing_to_plot_says_so(tmp_path, monkeypatch):
    """Every model skipped or failed: the figures say there is nothing to plot, the table keeps
    the reasons."""
    rows = write_leaderboard(tmp_path, {"timm-x.in1k": {"status": "skipped", "reason": "no weights"},
                                        "timm-y.in1k": {"status": "failed", "reason": "boom", "params": None}})
    seen = _drawn(monkeypatch)
    build_report(str(tmp_path), str(tmp_path / "rep"))
    assert len(seen) == 3
    for name, fig in seen:
        ax = fig.axes[0]
        assert ax.get_legend() is None and not ax.artists and "0 of 2 models plotted" in ax.get_title()
        assert [t.get_text() for t in ax.texts] == ["no model of this board has these values (status ok)"]
    got = _rows((tmp_path / "rep" / "leaderboard.html").read_text())
    assert set(got) == set(rows["model"]) and "class=reason>boom</td>" in got["timm-y.in1k"]
