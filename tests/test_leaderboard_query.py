"""queries/leaderboard.sql (`sing query leaderboard`, queries.leaderboard) against an independent
Python computation over the rows tests/results_factory.write_leaderboard wrote: every sort key in
both directions, the filters, `top`, two boards, skipped and failed rows, a quoted name, and the
user-facing errors."""
from __future__ import annotations

import csv
import io
import math

import polars as pl
import pytest

import queries
from queries import QueryError, cli_query, format_frame, load_query, run_query
from tests.results_factory import DEFAULT_BOARD, leaderboard_models, write_leaderboard

# sort key -> (column, ascending by default): the documented directions, best first
KEYS = {"ratio": ("median_ratio", False), "ratio_of_means": ("ratio_of_means", False),
        "median_abs_as": ("median_abs_as", True), "median_is": ("median_is", False), "top1": ("top1", False),
        "params": ("params", False), "null_dim": ("null_dim", False), "heldout_cosine": ("heldout_cosine", False),
        "seconds": ("seconds", False), "model": ("model", True)}
PASSED = ["family", "pretrain", "status", "reason", "top1", "median_abs_as", "median_is", "median_ratio",
          "median_ratio_lo", "median_ratio_hi", "ratio_of_means", "ratio_of_means_lo", "ratio_of_means_hi", "params",
          "num_features", "num_classes", "null_dim", "n_images", "n_scored", "heldout_cosine", "heldout_r2", "seconds",
          "model_string", "model_id", "eval_transform", "translator_id", "audit_run"]
QUOTED = "timm-jack-o'-lantern_net.in1k"


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    """Board b1 (the default rows) and board b2 (30 generated models, other numbers)."""
    root = tmp_path_factory.mktemp("board")
    rows = pl.concat([write_leaderboard(root, board="b1", seed=5),
                      write_leaderboard(root, leaderboard_models(30, seed=2, bad_every=7), board="b2", seed=6)])
    return root, rows


def _expected(rows: pl.DataFrame, order_by="ratio", ascending=None, top=None, **filters) -> list[tuple]:
    """(run, rank, model) in the documented order, computed row by row in Python."""
    col, up = KEYS[order_by]
    up = up if ascending is None else ascending
    out = []
    for run in sorted(set(rows["run"])):
        sel = [r for r in rows.iter_rows(named=True) if r["run"] == run
               and all(v is None or r[k] == v for k, v in filters.items())]
        ok = sorted((r for r in sel if r["status"] == "ok"), key=lambda r: r["model"])
        if col == "model":
            ok.sort(key=lambda r: r["model"], reverse=not up)
        else:   # stable: ties keep model order; NULLs last in either direction
            ok.sort(key=lambda r: (r[col] is None, 0 if r[col] is None else (r[col] if up else -r[col])))
        bad = sorted((r for r in sel if r["status"] != "ok"), key=lambda r: (r["status"], r["model"]))
        ranked = [(run, j + 1, r["model"]) for j, r in enumerate(ok)]
        out += ranked[:top] if top is not None else ranked + [(run, None, r["model"]) for r in bad]
    return out


def _order(df: pl.DataFrame) -> list[tuple]:
    return list(df.select("run", "rank", "model").iter_rows())


def test_every_row_once_ok_first_values_unchanged(board):
    root, rows = board
    df = queries.leaderboard(root)
    assert df.height == rows.height == len(DEFAULT_BOARD) + 30
    assert _order(df) == _expected(rows)
    written = {(r["run"], r["model"]): r for r in rows.iter_rows(named=True)}
    for r in df.iter_rows(named=True):
        w = written[(r["run"], r["model"])]
        assert all(r[k] == w[k] for k in PASSED), r["model"]          # the numbers pass through untouched
        concepts = w["top_concepts"] or []
        assert r["top_concepts"] == (", ".join(f"{c['concept']} {c['mean_as']:+.2f}" for c in concepts) or None)
        if r["status"] == "ok":
            assert r["median_ratio"] is not None and r["reason"] is None
        else:   # a row that says why, its numbers NULL
            assert r["reason"] and r["median_ratio"] is None and r["median_is"] is None and r["rank"] is None
    assert {"skipped", "failed"} <= set(df["status"]) and QUOTED in set(df["model"])


def test_the_sort_keys_are_the_documented_ones():
    assert set(load_query("leaderboard").params["order_by"].choices) == set(KEYS)


@pytest.mark.parametrize("ascending", [None, True, False])
@pytest.mark.parametrize("order_by", list(KEYS))
def test_every_sort_key_in_both_directions(board, order_by, ascending):
    root, rows = board
    df = run_query("leaderboard", root, {"order_by": order_by, "ascending": ascending})
    assert _order(df) == _expected(rows, order_by, ascending)


def test_ties_keep_model_order(board):
    root, rows = board
    ties = queries.leaderboard(root, run="b1", family="regnet")
    assert ties["median_ratio"].to_list() == [20.0, 20.0]
    assert ties["model"].to_list() == ["timm-a_tie.in1k", "timm-b_tie.in1k"] and ties["rank"].to_list() == [1, 2]


@pytest.mark.parametrize("filters", [
    {"family": "resnet"}, {"pretrain": "distilled"}, {"status": "skipped"}, {"status": "failed"},
    {"status": "ok", "run": "b2"}, {"model": QUOTED}, {"family": "vit", "status": "skipped"},
])
def test_filters(board, filters):
    root, rows = board
    df = queries.leaderboard(root, **filters)
    exp = _expected(rows, **filters)
    assert df.height > 0 and _order(df) == exp
    for k, v in filters.items():
        assert set(df[k]) == {v}


@pytest.mark.parametrize("order_by", ["ratio", "median_abs_as", "params"])
def test_top_keeps_the_first_ok_rows_of_each_board(board, order_by):
    root, rows = board
    df = queries.leaderboard(root, order_by=order_by, top=3)
    assert _order(df) == _expected(rows, order_by, top=3)
    assert df.height == 6 and set(df["status"]) == {"ok"} and df["rank"].to_list() == [1, 2, 3, 1, 2, 3]


def test_text_formats_carry_the_rows(board):
    root, rows = board
    df = queries.leaderboard(root, run="b1")
    got = list(csv.DictReader(io.StringIO(format_frame(df, "csv"))))
    assert [r["model"] for r in got] == df["model"].to_list()
    quoted = next(r for r in got if r["model"] == QUOTED)
    assert math.isclose(float(quoted["median_ratio"]), df.filter(pl.col("model") == QUOTED)["median_ratio"][0])
    table = format_frame(df, "table")
    assert table.endswith(f"({df.height} rows)\n") and "no null space" in table


def test_errors_are_one_precise_line(board, tmp_path, capsys):
    root, rows = board
    with pytest.raises(QueryError, match=r"no Parquet files under .*leaderboard \(query 'leaderboard' reads the "
                                         r"leaderboard table\)"):
        queries.leaderboard(tmp_path)
    families = ", ".join(sorted(set(rows["family"])))
    with pytest.raises(QueryError, match=rf"^no rows for family 'ghost' in .*leaderboard \(family: {families}\)$"):
        queries.leaderboard(root, family="ghost")
    with pytest.raises(QueryError, match=r"no rows for run 'b9' in .* runs: b1, b2\)$"):
        queries.leaderboard(root, run="b9")
    with pytest.raises(QueryError, match="'order_by' of query 'leaderboard' must be one of ratio, ratio_of_means"):
        queries.leaderboard(root, order_by="accuracy")
    with pytest.raises(QueryError, match="'status' of query 'leaderboard' must be one of ok, skipped, failed"):
        queries.leaderboard(root, status="done")
    assert cli_query(["leaderboard", "--results", str(root), "-p", "top=many"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sing query: error: parameter 'top' expects INTEGER, got 'many'") \
        and err.count("\n") == 1


def test_cli_lists_and_runs_it(board, capsys):
    root, rows = board
    assert cli_query(["--list"]) == 0
    assert any(line.startswith("leaderboard ") for line in capsys.readouterr().out.splitlines())
    assert cli_query(["leaderboard", "--results", str(root), "-p", "family=vit", "-p", "order_by=top1",
                      "--format", "json"]) == 0
    import json

    got = json.loads(capsys.readouterr().out)
    assert [(r["run"], r["rank"], r["model"]) for r in got] == _expected(rows, "top1", family="vit")


def test_a_zoo_sized_board_lists_its_models_briefly(tmp_path):
    """1,321 models: the query answers them all, and a miss names a few models, not all."""
    rows = write_leaderboard(tmp_path, leaderboard_models(1321, seed=1))
    df = queries.leaderboard(tmp_path)
    assert _order(df) == _expected(rows)
    with pytest.raises(QueryError, match=r"\(models: timm-.*\.\.\. \(1321 in all\); runs: b1\)$") as exc:
        queries.leaderboard(tmp_path, model="ghost")
    assert len(str(exc.value)) < 700
