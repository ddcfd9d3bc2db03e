"""queries.report: figures and index.html from generated results (tests/results_factory.py)."""
from __future__ import annotations

import re

import pytest
from PIL import Image

from queries import QueryError
from queries.report import build_report, cli_report
from tests.results_factory import write_results

MODELS = {"resnet50": {"as_scale": 1.0}, "vit_large": {"as_scale": 0.3}, "nulless": {"null_dim": 0}}


@pytest.fixture(scope="module")
def res(tmp_path_factory):
    return write_results(tmp_path_factory.mktemp("results"), models=MODELS, n_per_class=12, n_classes=25,
                         seed=1, runs=("run-a",), with_concepts=True, with_steer=True)


def _check_pngs(files):
    pngs = [f for f in files if f.suffix == ".png"]
    for f in pngs:
        assert f.stat().st_size > 1000, f
        with Image.open(f) as im:
            im.verify()
        with Image.open(f) as im:
            assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 200
    return pngs


def test_report_all_models(res, tmp_path):
    files = build_report(str(res.root), str(tmp_path / "rep"))
    assert files[-1].name == "index.html"
    pngs = _check_pngs(files)
    names = [f.name for f in pngs]
    assert sum(n.startswith("as_is_") for n in names) == 3                 # one scatter per model/run
    assert "ratio_bars.png" in names
    assert sum(n.startswith("class_as_") for n in names) == 2              # nulless: nothing to plot
    assert sum(n.startswith("concepts_") for n in names) == 2
    page = (tmp_path / "rep" / "index.html").read_text()
    refs = set(re.findall(r'<img src="([^"]+)"', page))
    assert refs == set(names)                                              # every PNG shown
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert "ratio_of_means" in page and "leakage_rank" in page and "Null-space steering" in page
    assert "null_dim = 0" in page                                          # note for nulless


def test_report_chosen_model_class_and_no_concepts(tmp_path):
    w = write_results(tmp_path / "r", models={"a": {}, "b": {"as_scale": 2.0}}, n_per_class=8, n_classes=6,
                      with_concepts=False)
    files = build_report(str(w.root), str(tmp_path / "rep"), models=["b"], concept_class="jellyfish")
    pngs = _check_pngs(files)
    assert {f.name for f in pngs} == {"as_is_00_b_run-0.png", "ratio_bars.png", "class_as_00_b_run-0.png"}
    page = (tmp_path / "rep" / "index.html").read_text()
    assert "No concepts table" in page
    with pytest.raises(QueryError, match="no rows for model 'zzz'"):
        build_report(str(w.root), str(tmp_path / "rep2"), models=["zzz"])


def test_report_concept_class(res, tmp_path, capsys):
    rc = cli_report(["--results", str(res.root), "--out", str(tmp_path / "rep"), "--model", "vit_large",
                     "--class", "jellyfish"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "index.html" in out
    assert (tmp_path / "rep" / "concepts_00_vit_large_run-a.png").is_file()
    rc = cli_report(["--results", str(res.root), "--out", str(tmp_path / "rep2"), "--model", "vit_large",
                     "--class", "no such class"])
    assert rc == 0 and "has no concept rows" in capsys.readouterr().err


def test_cli_report_errors(tmp_path, capsys):
    assert cli_report(["--results", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sing report: error: results directory not found") and err.count("\n") == 1
    assert cli_report(["--out", str(tmp_path / "o")]) == 2                 # --results required


def test_figure_titles_stay_inside_the_image(tmp_path, monkeypatch):
    """A long model name and run id: every title is wrapped to fit its figure (the concept
    figure's used to run off the image)."""
    import queries.report_figures as figures

    slug = "timm-" + "very_long_model_name_" * 3 + "a1_in1k"
    w = write_results(tmp_path / "r", models={slug: {}}, runs=("run-" + "0123456789abcdef" * 3,), n_per_class=6,
                      n_classes=5)
    inside = []
    real = figures._save

    def save_and_measure(fig, path, written):
        real(fig, path, written)
        r = fig.canvas.get_renderer()
        for ax in fig.axes:
            box = ax.title.get_window_extent(r)
            inside.append((path.name, box.x0 >= 0 and box.x1 <= fig.bbox.width))

    monkeypatch.setattr(figures, "_save", save_and_measure)
    build_report(str(w.root), str(tmp_path / "rep"), thumbs_per_class=0)
    assert {n.split("_")[0] for n, _ in inside} == {"as", "ratio", "class", "concepts"}
    assert all(ok for _, ok in inside), inside
    # the check sees a title that runs off: the same figure without fit_titles
    fig = figures._figure(7.2, 3.0)
    ax = fig.add_subplot(1, 1, 1)
    ax.set_title(f"{slug} / run: class 'x', top 30 of 182 concepts by |mean AS|", fontsize=10)
    fig.tight_layout()
    box = ax.title.get_window_extent(fig.canvas.get_renderer())
    assert box.x1 > fig.bbox.width or box.x0 < 0
    assert figures.fit_titles(fig)
    fig.tight_layout()
    box = ax.title.get_window_extent(fig.canvas.get_renderer())
    assert box.x0 >= 0 and box.x1 <= fig.bbox.width
