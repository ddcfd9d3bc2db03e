"""Every built-in query in every output format, against outputs stored from the code as it
was before queries/ was split into modules (tests/fixtures/query_golden.json).

The cases cover each query's filters, parameter defaults, empty results, NULL statistics
(a model without a null space), ties, a class name with a quote, and the user-facing error
messages. Values are compared exactly except floats (relative 1e-12: DuckDB's parallel sums
may differ in the last bit between runs); the `table` text is compared cell by cell (a zero may print as -0.000 in the stored text).

Regenerate only for an intended change of output:  python -m tests.test_query_golden --write
"""
from __future__ import annotations

import csv
import io
import json
import math
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

import queries
from queries import QueryError, format_frame, run_query
from tests.results_factory import write_leaderboard, write_results

GOLDEN = Path(__file__).resolve().parent / "fixtures" / "query_golden.json"
REL = 1e-12

MODELS = {
    "resnet": {"as_scale": 1.2},
    "vit": {"as_scale": 0.3, "runs": {"20240101": {"as_scale": 1.5, "is_mean": 25.0}}},
    "ties": {"round_as": 0, "as_scale": 2.0, "n_classes": 8},
    "nulless": {"null_dim": 0},
}
QUOTED = "jack-o'-lantern"   # class 16 of results_factory.PAPER_CLASSES

# (case id, query, parameters); "{key}" / "{shard}" are filled from the data.
CASES = [
    ("summary_all", "model_summary", {}),
    ("summary_model", "model_summary", {"model": "vit"}),
    ("summary_numeric_run", "model_summary", {"run": "20240101"}),
    ("summary_nulless", "model_summary", {"model": "nulless", "run": "run-a"}),
    ("summary_ghost_model", "model_summary", {"model": "ghost"}),
    ("summary_ghost_run", "model_summary", {"run": "ghost-run"}),
    ("leak_model_run", "class_leakage", {"model": "resnet", "run": "run-a"}),
    ("leak_ties", "class_leakage", {"model": "ties", "run": "20240101"}),
    ("leak_top", "class_leakage", {"top": 2, "run": "run-a"}),
    ("leak_quoted_class", "class_leakage", {"class_name": QUOTED}),
    ("leak_label_min_n", "class_leakage", {"label": 3, "min_n": 4}),
    ("leak_min_n_empty", "class_leakage", {"min_n": 1000}),
    ("leak_nulless", "class_leakage", {"model": "nulless", "run": "run-a"}),
    ("leak_nulless_top", "class_leakage", {"model": "nulless", "run": "run-a", "top": 3}),
    ("img_default", "image_leakage", {}),
    ("img_by_is", "image_leakage", {"order_by": "is", "k": 5, "model": "vit"}),
    ("img_key", "image_leakage", {"key": "{key}"}),
    ("img_shard_class", "image_leakage", {"shard": "{shard}", "class_name": QUOTED, "k": 4}),
    ("img_label_run", "image_leakage", {"label": 2, "run": "20240101", "k": 3}),
    ("img_bad_order", "image_leakage", {"order_by": "ratio"}),
    ("img_bad_k", "image_leakage", {"k": "lots"}),
    ("concepts_model_run", "concept_shift", {"model": "ties", "run": "run-a"}),
    ("concepts_class_top", "concept_shift", {"class_name": QUOTED, "top": 2}),
    ("concepts_key", "concept_shift", {"key": "{key}", "model": "vit", "run": "run-a"}),
    ("concepts_concept_label", "concept_shift", {"concept": "water", "label": 2}),
    ("concepts_nulless", "concept_shift", {"model": "nulless", "run": "20240101", "label": 1}),
    ("rank_runs", "model_rank_correlation", {"model_a": "resnet", "model_b": "vit", "run_a": "run-a",
                                             "run_b": "run-a"}),
    ("rank_pooled_ties", "model_rank_correlation", {"model_a": "ties", "model_b": "resnet"}),
    ("rank_same_model", "model_rank_correlation", {"model_a": "vit", "model_b": "vit", "run_a": "run-a",
                                                   "run_b": "20240101", "min_n": 2}),
    ("rank_nulless_empty", "model_rank_correlation", {"model_a": "nulless", "model_b": "vit"}),
    ("rank_missing_b", "model_rank_correlation", {"model_a": "vit"}),
    ("diff_runs", "checkpoint_diff", {"model": "vit", "baseline_run": "run-a", "candidate_run": "20240101"}),
    ("diff_top3", "checkpoint_diff", {"model": "resnet", "baseline_run": "20240101", "candidate_run": "run-a",
                                      "top_classes": 3}),
    ("diff_models", "checkpoint_diff", {"baseline_model": "ties", "candidate_model": "resnet",
                                        "baseline_run": "run-a", "candidate_run": "run-a", "top_classes": 50}),
    ("diff_same_side", "checkpoint_diff", {"model": "vit", "baseline_run": "run-a", "candidate_run": "run-a"}),
    ("diff_nulless", "checkpoint_diff", {"baseline_model": "nulless", "candidate_model": "vit",
                                         "baseline_run": "run-a", "candidate_run": "run-a"}),
    ("diff_ghost_run", "checkpoint_diff", {"model": "vit", "baseline_run": "nope", "candidate_run": "run-a"}),
    ("diff_no_model", "checkpoint_diff", {"baseline_run": "run-a", "candidate_run": "run-a"}),
    ("steer_all", "steer_summary", {}),
    ("steer_all_rows", "steer_summary", {"reachable_only": False, "model": "vit", "run": "run-a"}),
    ("steer_target_label", "steer_summary", {"target": "an image of a zebra", "label": 1}),
    ("steer_cli_string", "steer_summary", {"reachable_only": "no", "run": "20240101"}),
    ("board_default", "leaderboard", {}),
    ("board_family_abs_as", "leaderboard", {"family": "resnet", "order_by": "median_abs_as"}),
    ("board_top_params", "leaderboard", {"order_by": "params", "top": 3}),
    ("board_skipped", "leaderboard", {"status": "skipped"}),
    ("board_model_desc", "leaderboard", {"order_by": "model", "ascending": False, "pretrain": "in1k"}),
    ("board_quoted_model", "leaderboard", {"model": "timm-jack-o'-lantern_net.in1k", "run": "b1"}),
    ("board_ghost_family", "leaderboard", {"family": "ghost"}),
    ("board_bad_status", "leaderboard", {"status": "done"}),
]

CASES_BY_ID = {c: (name, params) for c, name, params in CASES}


def make_results(root: Path):
    res = write_results(root, models=MODELS, n_per_class=4, n_classes=18, seed=11, runs=("run-a", "20240101"),
                        with_concepts=True, with_steer=True, n_shards=2, concepts=["water", "stripes", "grass"])
    write_leaderboard(root, seed=11)   # its own table: the other queries do not read it
    return res


def _params(params: dict, res) -> dict:
    fill = {"{key}": res.images["key"][5], "{shard}": res.images["shard"][0]}
    return {k: fill.get(v, v) if isinstance(v, str) else v for k, v in params.items()}


def _rows(df: pl.DataFrame) -> list[list]:
    return [list(r) for r in df.rows()]   # as JSON holds them (NaN too: Python's json keeps it)


def outputs(res) -> dict:
    """{case id: {'error': message} or {'columns', 'dtypes', 'rows', 'table'}}, plus the
    query list and rank_correlation's (rho, p-value, n)."""
    root = str(res.root)
    out: dict = {"list": [list(x) for x in queries.list_queries()]}
    for case, name, params in CASES:
        try:
            df = run_query(name, res.root, _params(params, res))
        except QueryError as exc:
            out[case] = {"error": str(exc).replace(root, "<ROOT>")}
            continue
        out[case] = {"columns": df.columns, "dtypes": [str(t) for t in df.dtypes], "rows": _rows(df),
                     "table": format_frame(df, "table")}
    out["rank_correlation"] = [list(queries.rank_correlation(res.root, a, b, run_a=ra, run_b=rb))
                               for a, b, ra, rb in [("resnet", "vit", "run-a", "run-a"), ("ties", "resnet", None, None),
                                                    ("vit", "vit", "run-a", "20240101")]]
    return out


def _same(got, exp, where: str) -> None:
    if isinstance(exp, float) and isinstance(got, float):
        if math.isnan(exp):
            assert math.isnan(got), where
        else:
            assert math.isclose(got, exp, rel_tol=REL, abs_tol=REL), (where, got, exp)
    elif isinstance(exp, list) and isinstance(got, list):
        assert len(got) == len(exp), (where, len(got), len(exp))
        for j, (g, e) in enumerate(zip(got, exp)):
            _same(g, e, f"{where}[{j}]")
    else:
        assert got == exp, (where, got, exp)


def _text_precision(rows: list[list], dtypes: list[str]) -> list[list]:
    """Rows as csv and json carry them: Float32 values with float32's shortest digits."""
    return [[float(np.float32(v)) if t == "Float32" and isinstance(v, float) else v for v, t in zip(r, dtypes)]
            for r in rows]


def _csv_cell(text: str):
    try:
        return float(text)
    except ValueError:
        return None if text == "" else {"true": True, "false": False}.get(text, text)


def _check_formats(df: pl.DataFrame, exp: dict) -> None:
    """csv, json and parquet carry the expected rows (csv: numbers read back as floats;
    json: NaN as null)."""
    types = exp["dtypes"]
    cells = list(csv.reader(format_frame(df, "csv").splitlines()))
    assert cells[0] == exp["columns"]
    as_csv = [[v if v is None or isinstance(v, bool) else _csv_cell(str(v)) for v in r]
              for r in _text_precision(exp["rows"], types)]
    _same(_text_precision([[_csv_cell(c) for c in r] for r in cells[1:]], types), as_csv, "csv")
    records = json.loads(format_frame(df, "json"))
    assert all(list(r) == exp["columns"] for r in records)
    nan_null = [[None if isinstance(v, float) and math.isnan(v) else v for v in r] for r in exp["rows"]]
    _same(_text_precision([list(r.values()) for r in records], types), _text_precision(nan_null, types), "json")
    back = pl.read_parquet(io.BytesIO(format_frame(df, "parquet")))
    assert [str(t) for t in back.dtypes] == types
    _same(_rows(back), exp["rows"], "parquet")


@pytest.fixture(scope="module")
def res(tmp_path_factory):
    return make_results(tmp_path_factory.mktemp("golden"))


@pytest.fixture(scope="module")
def got(res):
    return outputs(res)


@pytest.fixture(scope="module")
def expected():
    return json.loads(GOLDEN.read_text())


def test_cases_cover_every_query_and_error(expected):
    names = {n for n, _ in expected["list"]}
    assert names == {name for _, name, _ in CASES}
    assert sum("error" in v for k, v in expected.items() if k not in ("list", "rank_correlation")) == 11
    assert all(expected[c]["rows"] for c in ("summary_nulless", "leak_nulless", "diff_nulless", "concepts_nulless"))
    assert expected["leak_min_n_empty"]["rows"] == [] and expected["leak_min_n_empty"]["table"].endswith("(0 rows)\n")


@pytest.mark.parametrize("case", [c for c, _, _ in CASES])
def test_query_output_unchanged(got, expected, case):
    g, e = got[case], expected[case]
    if "error" in e:
        assert g == e
        return
    assert g["columns"] == e["columns"] and g["dtypes"] == e["dtypes"]
    assert _table_text(g["table"]) == _table_text(e["table"])
    _same(g["rows"], e["rows"], "rows")


def _table_text(table: str) -> list[list[str]]:
    """The table's cells: a zero printed as -0.000 (a last-bit difference of two sums) is 0.000,
    and column widths follow from the cells."""
    return [["0.000" if c == "-0.000" else c for c in line.split()] for line in table.splitlines()]


@pytest.mark.parametrize("case", [c for c, _, _ in CASES])
def test_formats_carry_the_rows(res, expected, case):
    exp = expected[case]
    if "error" not in exp:
        _check_formats(run_query(CASES_BY_ID[case][0], res.root, _params(CASES_BY_ID[case][1], res)), exp)


def test_list_and_rank_correlation_unchanged(got, expected):
    assert got["list"] == expected["list"]
    _same(got["rank_correlation"], expected["rank_correlation"], "rank_correlation")


def _unchanged(new, old) -> bool:
    """Whether a stored output still holds (the comparison of the tests above)."""
    try:
        if isinstance(old, dict) and "table" in old:
            assert new.keys() == old.keys() and _table_text(new["table"]) == _table_text(old["table"])
            _same([new[k] for k in ("columns", "dtypes", "rows")], [old[k] for k in ("columns", "dtypes", "rows")], "")
        else:
            _same(new, old, "")
    except (AssertionError, AttributeError):
        return False
    return True


if __name__ == "__main__" and "--write" in sys.argv:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        out = outputs(make_results(Path(tmp)))
        # an output that still matches keeps its stored text (DuckDB's parallel sums vary in the
        # last bit): the diff then shows only what changed
        stored = json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}
        out = {k: stored[k] if k in stored and _unchanged(v, stored[k]) else v for k, v in out.items()}
        # one line per case: a changed case reads as one changed line in a diff
        GOLDEN.write_text("{\n" + ",\n".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in out.items()) + "\n}\n")
    print(f"wrote {GOLDEN}")


CONCEPT_CASES = [c for c, name, _ in CASES if name == "concept_shift"]


@pytest.mark.parametrize("layout", ["long", "mixed"])
def test_concept_queries_answer_alike_in_every_layout(tmp_path, expected, layout):
    """The concept angles as older runs wrote them (one row per image and concept) and a run
    resumed across the layout change (one shard long, the other lists) answer every concept
    case exactly as the stored outputs, which the long layout produced."""
    res = write_results(tmp_path, models=MODELS, n_per_class=4, n_classes=18, seed=11, runs=("run-a", "20240101"),
                        with_concepts=True, with_steer=True, n_shards=2, concepts=["water", "stripes", "grass"],
                        concept_layout=layout)
    assert any("/concepts/" in str(f) for f in res.files)
    assert any("/concept_angles/" in str(f) for f in res.files) == (layout == "mixed")
    for case in CONCEPT_CASES:
        e = expected[case]
        try:
            df = run_query("concept_shift", res.root, _params(CASES_BY_ID[case][1], res))
        except QueryError as exc:
            assert {"error": str(exc).replace(str(res.root), "<ROOT>")} == e, case
            continue
        assert df.columns == e["columns"], case
        _same(_rows(df), e["rows"], case)


def test_a_shard_in_both_layouts_counts_once(tmp_path, expected):
    """A shard whose lists and long file both exist (a migration cut short) is read once, from
    the lists."""
    import shutil

    res = write_results(tmp_path / "a", models=MODELS, n_per_class=4, n_classes=18, seed=11,
                        runs=("run-a", "20240101"), with_concepts=True, with_steer=True, n_shards=2,
                        concepts=["water", "stripes", "grass"], concept_layout="long")
    lists = write_results(tmp_path / "b", models=MODELS, n_per_class=4, n_classes=18, seed=11,
                          runs=("run-a", "20240101"), with_concepts=True, with_steer=True, n_shards=2,
                          concepts=["water", "stripes", "grass"])
    for table in ("concept_angles", "concept_vocab"):
        shutil.copytree(lists.root / table, res.root / table)
    df = run_query("concept_shift", res.root, {"model": "ties", "run": "run-a"})
    _same(_rows(df), expected["concepts_model_run"]["rows"], "both layouts")
