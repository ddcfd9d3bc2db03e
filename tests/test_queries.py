"""queries/: every SQL file against an independent Polars/numpy computation on generated
results (tests/results_factory.py), plus the runner's errors, parameters and CLI.

Conventions checked: std = sample standard deviation (ddof = 1); median = interpolated;
ranks: class leakage rank() (ties share the lowest rank), Spearman on average ranks."""
from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

import queries
from queries import QueryError, cli_query, load_query, run_query, spearman_p_value
from queries.params import parse_cli_value
from queries.sqlfile import Param, sql_parameters
from tests.results_factory import IMAGES_SCHEMA, CONCEPTS_SCHEMA, ERRORS_SCHEMA, write_leaderboard, write_results

RUNS = ("run-a", "20240101")  # a numeric-looking run id must stay VARCHAR (hive type autodetection)
MODELS = {
    "timm-resnet50.a1_in1k": {"as_scale": 1.2},
    "vit_large": {"as_scale": 0.3, "runs": {"20240101": {"as_scale": 1.5, "is_mean": 25.0}}},
    "ties": {"round_as": 0, "as_scale": 2.0, "n_classes": 10},   # ties in medians; fewer classes
    "nulless": {"null_dim": 0},
}
REL = 1e-9


@pytest.fixture(scope="module")
def res(tmp_path_factory):
    res = write_results(tmp_path_factory.mktemp("results"), models=MODELS, n_per_class=15, n_classes=12,
                        seed=3, runs=RUNS, with_concepts=True, with_steer=True, n_shards=3)
    write_leaderboard(res.root, seed=3)    # tests/test_leaderboard_query.py checks its query
    return res


@pytest.fixture(scope="module")
def img(res):
    return res.images.with_columns(pl.col(pl.Float32).cast(pl.Float64))


def _scored(df: pl.DataFrame) -> pl.DataFrame:
    return df.filter(pl.col("as_deg").is_not_null() & pl.col("is_deg").is_not_null()
                     & ~pl.col("as_deg").is_nan() & ~pl.col("is_deg").is_nan())


def _close(a, b, rel=REL, abs_=1e-9) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=rel, abs_tol=abs_)


def _np_std(x) -> float | None:
    return float(np.std(x, ddof=1)) if len(x) > 1 else None


# ----------------------------------------------------------------------- factory

def test_factory_matches_pipeline_schemas(res):
    tables = pytest.importorskip("pipelines.stages.audit_tables")
    from queries.layouts import SCHEMAS

    assert IMAGES_SCHEMA == tables.IMAGES_SCHEMA
    assert CONCEPTS_SCHEMA == tables.LONG_CONCEPTS_SCHEMA == SCHEMAS["concepts"]
    assert tables.CONCEPT_ANGLES_SCHEMA == SCHEMAS["concept_angles"]
    assert tables.CONCEPT_VOCAB_SCHEMA == SCHEMAS["concept_vocab"]
    assert ERRORS_SCHEMA == tables.ERRORS_SCHEMA
    import pyarrow.parquet as pq

    f = next(p for p in res.files if "/images/" in str(p))
    assert pq.read_schema(f).remove_metadata() == IMAGES_SCHEMA
    assert (res.root / "runs" / "run-a.json").is_file()


# ------------------------------------------------------------------ query files

def test_list_queries_and_headers(res):
    items = dict(queries.list_queries())
    assert set(items) == {"model_summary", "class_leakage", "image_leakage", "concept_shift",
                          "model_rank_correlation", "checkpoint_diff", "steer_summary", "leaderboard"}
    args = {"model_rank_correlation": {"model_a": "vit_large", "model_b": "timm-resnet50.a1_in1k"},
            "checkpoint_diff": {"model": "vit_large", "baseline_run": "run-a", "candidate_run": "20240101"}}
    for name, desc in items.items():
        spec = load_query(name)
        assert desc and len(desc) < 160
        declared = {ln.split()[0][1:] for ln in spec.header.splitlines() if ln.startswith("$")}
        assert declared == set(spec.params), name        # every $param documented, none stale
        assert all(p.type for p in spec.params.values()), name
        df = run_query(name, res.root, args.get(name))
        assert df.height > 0
        for col in df.columns:                           # every output column documented
            assert col in spec.header, (name, col)


def test_model_summary(res, img):
    got = queries.model_summary(res.root)
    assert got.height == len(MODELS) * len(RUNS)
    assert got.schema["run"] == pl.String
    for r in got.iter_rows(named=True):
        g = img.filter((pl.col("model") == r["model"]) & (pl.col("run") == r["run"]))
        s = _scored(g)
        assert r["n_images"] == g.height and r["n_scored"] == s.height
        if s.height == 0:
            assert r["model"] == "nulless" and r["null_dim"] == 0
            for k in ("mean_as", "median_abs_as", "std_abs_as", "mean_is", "ratio_of_means", "median_ratio"):
                assert r[k] is None, k                    # NULL, not zero
            continue
        aa, i, a = s["abs_as_deg"].to_numpy(), s["is_deg"].to_numpy(), s["as_deg"].to_numpy()
        assert _close(r["mean_as"], a.mean()) and _close(r["median_as"], float(np.median(a)))
        assert _close(r["std_as"], _np_std(a))
        assert _close(r["mean_abs_as"], aa.mean()) and _close(r["median_abs_as"], float(np.median(aa)))
        assert _close(r["std_abs_as"], _np_std(aa))
        assert _close(r["mean_is"], i.mean()) and _close(r["median_is"], float(np.median(i)))
        assert _close(r["std_is"], _np_std(i))
        assert _close(r["ratio_of_means"], i.mean() / aa.mean())
        pos = aa > 0
        assert _close(r["median_ratio"], float(np.median(i[pos] / aa[pos])))
        assert _close(r["mean_logit_drift"], g["logit_drift"].mean())
        assert _close(r["top1_acc"], (g["pred"] == g["label"]).mean())
        assert r["null_dim"] == 64
    ratios = [v for v in got["ratio_of_means"].to_list()]
    known = [v for v in ratios if v is not None]
    assert known == sorted(known, reverse=True) and ratios[len(known):] == [None] * (len(ratios) - len(known))
    # filters, including a numeric-looking run id given as a CLI string
    one = run_query("model_summary", res.root, {"model": "vit_large", "run": "20240101"})
    assert_frame_equal(one, got.filter((pl.col("model") == "vit_large") & (pl.col("run") == "20240101")),
                       rel_tol=1e-12, abs_tol=1e-12)


def test_class_leakage(res, img):
    got = queries.class_leakage(res.root, model="timm-resnet50.a1_in1k")
    s = _scored(img.filter(pl.col("model") == "timm-resnet50.a1_in1k"))
    exp = (s.group_by("run", "label").agg(
        pl.len().alias("n"), pl.col("abs_as_deg").median().alias("med"), pl.col("abs_as_deg").mean().alias("mean"),
        pl.col("abs_as_deg").std(ddof=1).alias("std"), pl.col("abs_as_deg").max().alias("max"),
        pl.col("is_deg").median().alias("med_is"), pl.col("is_deg").std(ddof=1).alias("std_is"))
        .with_columns(pl.col("med").rank("min", descending=True).over("run").cast(pl.Int64).alias("rank")))
    assert got.height == exp.height == 12 * len(RUNS)
    j = got.join(exp, on=["run", "label"])
    assert j.height == got.height
    for r in j.iter_rows(named=True):
        assert r["n"] == r["n_scored"] == 15
        assert _close(r["median_abs_as"], r["med"]) and _close(r["mean_abs_as"], r["mean"])
        assert _close(r["std_abs_as"], r["std"]) and _close(r["max_abs_as"], r["max"])
        assert _close(r["median_is"], r["med_is"]) and _close(r["std_is"], r["std_is_right"])
        assert r["leakage_rank"] == r["rank"] and r["n_classes"] == 12
        assert r["class_name"] == res.class_names[r["label"]]
    # ties share the lowest rank; ranks count all classes even with a class filter
    ties = queries.class_leakage(res.root, model="ties", run="run-a")
    exp_t = (_scored(img.filter((pl.col("model") == "ties") & (pl.col("run") == "run-a")))
             .group_by("label").agg(pl.col("abs_as_deg").median().alias("med"))
             .with_columns(pl.col("med").rank("min", descending=True).cast(pl.Int64).alias("rank")))
    assert exp_t["med"].n_unique() < exp_t.height      # the fixture really has ties
    assert dict(ties.select("label", "leakage_rank").iter_rows()) == dict(exp_t.select("label", "rank").iter_rows())
    name = res.class_names[3]
    one = queries.class_leakage(res.root, model="ties", run="run-a", class_name=name)
    assert one.height == 1 and one["leakage_rank"][0] == dict(exp_t.select("label", "rank").iter_rows())[3]
    top = queries.class_leakage(res.root, top=3, run="run-a")
    assert top.filter(pl.col("model") != "nulless")["leakage_rank"].max() <= 3
    # null_dim 0: rows kept, stats NULL, no rank
    nul = queries.class_leakage(res.root, model="nulless", run="run-a")
    assert nul.height == 12 and nul["median_abs_as"].null_count() == 12 and nul["leakage_rank"].null_count() == 12


def test_image_leakage(res, img):
    got = queries.image_leakage(res.root)
    assert got.height == 20 and got["rank"].to_list() == list(range(1, 21))
    exp = img.sort(["abs_as_deg", "model", "run", "shard", "key"], descending=[True, False, False, False, False],
                   nulls_last=True).head(20)
    assert got.select("model", "run", "key").rows() == exp.select("model", "run", "key").rows()
    assert np.allclose(got["abs_as_deg"].to_numpy(), exp["abs_as_deg"].to_numpy())
    by_is = queries.image_leakage(res.root, order_by="is", k=7, model="vit_large", class_name=res.class_names[2])
    sel = img.filter((pl.col("model") == "vit_large") & (pl.col("class_name") == res.class_names[2]))
    exp_is = sel.sort("is_deg", descending=True).head(7)
    assert by_is.height == 7 and set(by_is["key"].to_list()) == set(exp_is["key"].to_list())
    assert np.allclose(by_is["is_deg"].to_numpy(), exp_is["is_deg"].to_numpy())
    # single image drill-down: one row per model and run
    key = img["key"][0]
    one = queries.image_leakage(res.root, key=key)
    assert one.height == len(MODELS) * len(RUNS) and set(one["key"]) == {key}
    with pytest.raises(QueryError, match="one of"):
        queries.image_leakage(res.root, order_by="ratio")


def test_concept_shift(res):
    got = queries.concept_shift(res.root, model="vit_large", run="run-a")
    c = res.concepts.filter((pl.col("model") == "vit_large") & (pl.col("run") == "run-a")).with_columns(
        pl.col(pl.Float32).cast(pl.Float64))
    exp = c.group_by("label", "concept").agg(
        pl.len().alias("n_e"), pl.col("angle_before_deg").mean().alias("b"),
        pl.col("angle_after_deg").mean().alias("af"),
        pl.col("as_deg").mean().alias("m"), pl.col("as_deg").std(ddof=1).alias("s"),
        (pl.col("as_deg") > 0).mean().alias("fc"))
    exp = exp.with_columns(pl.col("m").abs().rank("min", descending=True).over("label").cast(pl.Int64).alias("rk"))
    j = got.join(exp, on=["label", "concept"])
    assert j.height == got.height == 12 * len(res.concepts_list)
    for r in j.iter_rows(named=True):
        assert r["n"] == r["n_e"] and r["class_name"] == res.class_names[r["label"]]
        assert _close(r["mean_angle_before"], r["b"]) and _close(r["mean_angle_after"], r["af"])
        assert _close(r["mean_as"], r["m"]) and _close(r["std_as"], r["s"]) and _close(r["frac_closer"], r["fc"])
        assert r["rank_in_class"] == r["rk"]
    # ordered by |mean AS| within a class; class filter by name; top
    cls = queries.concept_shift(res.root, model="vit_large", run="run-a", class_name=res.class_names[5], top=3)
    assert cls.height == 3 and set(cls["label"]) == {5}
    assert cls["mean_as"].abs().to_list() == sorted(cls["mean_as"].abs().to_list(), reverse=True)
    key = res.concepts["key"][0]
    one = queries.concept_shift(res.root, key=key, model=res.concepts["model"][0], run=res.concepts["run"][0])
    assert one.height == len(res.concepts_list) and set(one["n"]) == {1}


def _avg_ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(1, len(x) + 1)
    for v in np.unique(x):                       # ties: mean of their ranks
        m = x == v
        ranks[m] = ranks[m].mean()
    return ranks


def _medians(img, model, run=None) -> dict:
    s = _scored(img.filter(pl.col("model") == model))
    if run is not None:
        s = s.filter(pl.col("run") == run)
    return dict(s.group_by("label").agg(pl.col("abs_as_deg").median()).iter_rows())


@pytest.mark.parametrize("a,b,run_a,run_b", [
    ("timm-resnet50.a1_in1k", "vit_large", "run-a", "run-a"),
    ("ties", "timm-resnet50.a1_in1k", None, None),             # ties + only 10 shared classes
    ("vit_large", "vit_large", "run-a", "20240101"),
])
def test_rank_correlation(res, img, a, b, run_a, run_b):
    ma, mb = _medians(img, a, run_a), _medians(img, b, run_b)
    shared = sorted(set(ma) & set(mb))
    xa = np.array([ma[k] for k in shared])
    xb = np.array([mb[k] for k in shared])
    rho = float(np.corrcoef(_avg_ranks(xa), _avg_ranks(xb))[0, 1])
    got = queries.rank_correlation(res.root, a, b, run_a=run_a, run_b=run_b)
    assert got.n_classes == len(shared) == (10 if "ties" in (a, b) else 12)
    assert _close(got.rho, rho, rel=1e-9, abs_=1e-12)
    rho_s, p_s = got.rho, got.p_value
    try:
        from scipy import stats
    except ImportError:
        stats = None
    if stats is not None:
        ref = stats.spearmanr(xa, xb)
        assert _close(rho_s, float(ref.statistic), abs_=1e-12)
        assert _close(p_s, float(ref.pvalue), rel=1e-7, abs_=1e-12)
    rho_a, p_a, n = got                                # unpacks as (rho, p_value, n_classes)
    assert (rho_a, p_a, n) == (got.rho, got.p_value, got.n_classes)
    frame = run_query("model_rank_correlation", res.root, {"model_a": a, "model_b": b, "run_a": run_a, "run_b": run_b})
    assert frame.height == 1 and frame["model_a"][0] == a


def test_spearman_p_value_reference():
    # t = 2.0 with 10 df: two-sided p = 0.07338803477074...
    n, t = 12, 2.0
    rho = t / math.sqrt(n - 2 + t * t)
    assert math.isclose(spearman_p_value(rho, n), 0.0733880347707404, rel_tol=1e-9)
    assert spearman_p_value(1.0, 10) == 0.0 and spearman_p_value(0.3, 2) is None
    assert math.isclose(spearman_p_value(0.0, 30), 1.0)


# p-values of the hand-written continued fraction (Numerical Recipes, Lentz) that scipy's
# betainc replaced, for n in OLD_P_N and rho in OLD_P_RHO
OLD_P_N = (3, 4, 5, 12, 30, 100, 1000)
OLD_P_RHO = (-0.999, -0.6, -0.2, 0.01, 0.35, 0.8, 0.99)
OLD_P = {
    3: [0.02847287481247912, 0.5903344706017337, 0.8718115663020501, 0.9936336961682577, 0.7723631653919704,
        0.40966552939826645, 0.09010682728882424],
    4: [0.0009999999999999853, 0.40000000000000013, 0.7999999999999999, 0.9900000000000061, 0.6500000000000001,
        0.19999999999999982, 0.010000000000000014],
    5: [3.7954974373400604e-05, 0.28475697986529414, 0.7470600781046619, 0.987267816762423, 0.5636394821727103,
        0.10408803866182777, 0.0011986195114020088],
    12: [7.861883435038831e-15, 0.039162880000000046, 0.5331353600000004, 0.9753939059546892, 0.2647283227501678,
         0.001781839999999997, 7.744591291796916e-10],
    30: [2.4337102825801672e-39, 0.0004570552394050809, 0.28930352872543585, 0.9581732516324755,
         0.05795508331915959, 1.126713941642645e-07, 2.30408577234008e-25],
    100: [4.420504874740898e-134, 4.192525341965918e-11, 0.04603628646005424, 0.9213405732475665,
          0.00035753221489958015, 1.813599881679625e-23, 3.5751688897819283e-85],
    1000: [0.0, 8.07519617874753e-99, 1.7567862371789518e-10, 0.7521238409748541, 3.4312799207338694e-30,
           1.2413091213250513e-223, 0.0],
}


def test_spearman_p_value_unchanged_by_scipy():
    for n in OLD_P_N:
        for rho, old in zip(OLD_P_RHO, OLD_P[n]):
            assert math.isclose(spearman_p_value(rho, n), old, rel_tol=1e-12, abs_tol=0.0), (n, rho)


def test_checkpoint_diff(res, img):
    out = queries.checkpoint_diff(res.root, model="vit_large", baseline_run="run-a", candidate_run="20240101",
                                  top_classes=4)
    assert out["baseline"] == {"model": "vit_large", "run": "run-a"}
    assert out["candidate"] == {"model": "vit_large", "run": "20240101"}
    summ = queries.model_summary(res.root, model="vit_large")
    b = summ.filter(pl.col("run") == "run-a").row(0, named=True)
    c = summ.filter(pl.col("run") == "20240101").row(0, named=True)
    assert list(out["stats"])[:3] == ["n_images", "n_scored", "mean_as"]
    for stat, v in out["stats"].items():
        assert _close(v["baseline"], float(b[stat])) and _close(v["candidate"], float(c[stat])), stat
        assert _close(v["delta"], float(c[stat]) - float(b[stat]), abs_=1e-9), stat
    # independent: the candidate leaks more (as_scale 0.3 -> 1.5)
    sb = _scored(img.filter((pl.col("model") == "vit_large") & (pl.col("run") == "run-a")))
    sc = _scored(img.filter((pl.col("model") == "vit_large") & (pl.col("run") == "20240101")))
    d_mean = sc["abs_as_deg"].mean() - sb["abs_as_deg"].mean()
    assert d_mean > 0 and _close(out["deltas"]["mean_abs_as"], d_mean)
    mb, mc = _medians(img, "vit_large", "run-a"), _medians(img, "vit_large", "20240101")
    growth = sorted(((mc[k] - mb[k], k) for k in mb), key=lambda t: (-t[0], t[1]))[:4]
    top = out["top_classes"]
    assert top["label"].to_list() == [k for _, k in growth] and top["rank"].to_list() == [1, 2, 3, 4]
    assert np.allclose(top["delta"].to_numpy(), [d for d, _ in growth])
    assert top["class_name"].to_list() == [res.class_names[k] for _, k in growth]
    frame = run_query("checkpoint_diff", res.root,
                      {"model": "vit_large", "baseline_run": "run-a", "candidate_run": "20240101"})
    assert frame.filter(pl.col("kind") == "class").height == 10     # default $top_classes
    assert frame["kind"].to_list()[0] == "model"
    # different models on the two sides, classes present in both only
    x = queries.checkpoint_diff(res.root, baseline_model="ties", candidate_model="timm-resnet50.a1_in1k",
                                baseline_run="run-a", candidate_run="run-a", top_classes=50)
    assert x["top_classes"].height == 10 and x["stats"]["n_images"]["baseline"] == 150


def test_steer_summary(res):
    got = queries.steer_summary(res.root)
    s = res.steer.with_columns(pl.col(pl.Float32).cast(pl.Float64))
    assert got.height == len(MODELS) * len(RUNS) * len(res.targets)
    for r in got.iter_rows(named=True):
        g = s.filter((pl.col("model") == r["model"]) & (pl.col("run") == r["run"]) & (pl.col("target") == r["target"]))
        ok = g.filter(pl.col("reachable"))
        assert r["n"] == g.height and r["n_reachable"] == ok.height
        aa = ok["abs_as_deg"].to_numpy()
        assert _close(r["mean_abs_as"], aa.mean()) and _close(r["std_abs_as"], _np_std(aa))
        assert _close(r["sem_abs_as"], _np_std(aa) / math.sqrt(len(aa)))
        assert _close(r["mean_is"], ok["is_deg"].mean())
        assert _close(r["max_abs_logit_drift"], float(np.abs(g["logit_drift"].to_numpy()).max()))
    all_rows = queries.steer_summary(res.root, reachable_only=False, model="vit_large", run="run-a",
                                     target=res.targets[0])
    g = s.filter((pl.col("model") == "vit_large") & (pl.col("run") == "run-a") & (pl.col("target") == res.targets[0]))
    assert all_rows.height == 1 and _close(all_rows["mean_abs_as"][0], g["abs_as_deg"].mean())


# ------------------------------------------------------------------------ runner

def test_sql_parameters_ignore_comments_and_strings():
    sql = "-- $nope\nSELECT '$str', \"$ident\", $a /* $b */ FROM t WHERE x = $c AND y = $a"
    assert sql_parameters(sql) == ["a", "c"]


def test_cli_value_rule():
    assert parse_cli_value("NULL") is None and parse_cli_value("") is None
    assert parse_cli_value("12") == 12 and parse_cli_value("1.5") == 1.5 and parse_cli_value("1e3") == 1000.0
    assert parse_cli_value("true") is True and parse_cli_value("resnet50") == "resnet50"
    assert parse_cli_value("20240101", Param("run", "VARCHAR")) == "20240101"   # declared type wins
    assert parse_cli_value("7", Param("k", "INTEGER")) == 7
    assert parse_cli_value("no", Param("x", "BOOLEAN")) is False
    with pytest.raises(QueryError, match="expects INTEGER"):
        parse_cli_value("many", Param("k", "INTEGER"))


def test_errors(res, tmp_path):
    with pytest.raises(QueryError, match="results directory not found: .*nowhere"):
        run_query("model_summary", tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(QueryError, match="no Parquet files under .*empty"):
        run_query("model_summary", tmp_path / "empty")
    with pytest.raises(QueryError, match="unknown query 'nope'.*model_summary"):
        run_query("nope", res.root)
    with pytest.raises(QueryError, match="unknown parameter 'modle'.*model, run"):
        run_query("model_summary", res.root, {"modle": "x"})
    with pytest.raises(QueryError, match="bound from --results"):
        run_query("model_summary", res.root, {"images_glob": "/etc/*"})
    for name, extra in [("model_summary", {}), ("class_leakage", {}),
                        ("checkpoint_diff", {"baseline_run": "run-a", "candidate_run": "20240101"})]:
        with pytest.raises(QueryError, match=r"^no rows for model 'ghost'.*models: .*vit_large"):
            run_query(name, res.root, {"model": "ghost", **extra})
    with pytest.raises(QueryError, match="no rows for .*run 'ghost-run'"):
        run_query("model_summary", res.root, {"run": "ghost-run"})
    with pytest.raises(QueryError, match="baseline_run 'nope'"):
        queries.checkpoint_diff(res.root, model="vit_large", baseline_run="nope", candidate_run="run-a")
    with pytest.raises(QueryError, match="needs parameter.*model_b"):
        run_query("model_rank_correlation", res.root, {"model_a": "vit_large"})
    with pytest.raises(QueryError, match="needs one of the parameters model, baseline_model"):
        run_query("checkpoint_diff", res.root, {"baseline_run": "a", "candidate_run": "b"})
    with pytest.raises(QueryError, match="expects INTEGER"):
        run_query("image_leakage", res.root, {"k": "lots"})


def test_no_concept_or_steer_table(tmp_path):
    w = write_results(tmp_path / "r", models={"m": {}}, n_per_class=3, n_classes=3, with_concepts=False)
    with pytest.raises(QueryError, match="no concepts under .*concept_angles\\+concept_vocab or concepts tables; "
                                         "audit with --concepts"):
        queries.concept_shift(w.root)
    with pytest.raises(QueryError, match="no Parquet files under .*steer"):
        queries.steer_summary(w.root)
    assert queries.model_summary(w.root).height == 1


def test_user_sql_file(res, tmp_path):
    q = tmp_path / "mine.sql"
    q.write_text("-- images per model above a label\nSELECT model, count(*) AS n\n"
                 "FROM read_parquet($images_glob, hive_partitioning = true)\n"
                 "WHERE $min_label IS NULL OR label >= $min_label GROUP BY model ORDER BY model;\n")
    df = run_query(str(q), res.root, {"min_label": 10})
    exp = res.images.filter(pl.col("label") >= 10).group_by("model").len().sort("model")
    assert df.rows() == exp.rows()
    assert run_query(str(q), res.root)["n"].sum() == res.images.height       # unset -> NULL
    (tmp_path / "two.sql").write_text("SELECT 1; SELECT 2;")
    with pytest.raises(QueryError, match="exactly one SQL statement"):
        run_query(str(tmp_path / "two.sql"), res.root)
    with pytest.raises(QueryError, match="query file not found"):
        run_query(str(tmp_path / "missing.sql"), res.root)



def test_user_sql_file_calls_the_shared_macros(res, img, tmp_path):
    """_macros.sql is defined on every connection: a user's query may use scored_images."""
    q = tmp_path / "scored.sql"
    q.write_text("SELECT model, count(*) FILTER (WHERE ok) AS n_ok, count(aa) AS n_aa\n"
                 "FROM scored_images($images_glob, $model) GROUP BY model ORDER BY model")
    got = run_query(str(q), res.root)
    exp = img.group_by("model").agg(pl.len().alias("all")).sort("model")
    n_ok = {m: _scored(img.filter(pl.col("model") == m)).height for m in exp["model"]}
    assert got["model"].to_list() == exp["model"].to_list()
    assert dict(zip(got["model"], got["n_ok"])) == n_ok == dict(zip(got["model"], got["n_aa"]))
    assert n_ok["nulless"] == 0 and n_ok["vit_large"] == exp.filter(pl.col("model") == "vit_large")["all"][0]
    one = run_query(str(q), res.root, {"model": "ties"})
    assert one.rows() == [("ties", n_ok["ties"], n_ok["ties"])]
    assert "_macros" not in dict(queries.list_queries())

# ---------------------------------------------------------------------------- CLI

def test_cli_formats(res, tmp_path, capsys):
    args = ["class_leakage", "--results", str(res.root), "--param", "model=vit_large", "--param", "run=20240101",
            "-p", "top=5"]
    ref = run_query("class_leakage", res.root, {"model": "vit_large", "run": "20240101", "top": 5})
    assert cli_query(args) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["model", "run", "label"] and lines[-1] == "(5 rows)"
    assert f"{ref['median_abs_as'][0]:.3f}" in lines[2]
    assert cli_query(args + ["--format", "csv", "--out", str(tmp_path / "x.csv")]) == 0
    assert pl.read_csv(tmp_path / "x.csv")["label"].to_list() == ref["label"].to_list()
    assert cli_query(args + ["--format", "json"]) == 0
    recs = json.loads(capsys.readouterr().out)
    assert [r["label"] for r in recs] == ref["label"].to_list()
    assert cli_query(args + ["--format", "parquet", "--out", str(tmp_path / "x.parquet")]) == 0
    # DuckDB's parallel float sums may differ in the last bit between runs: compare with a tolerance
    assert_frame_equal(pl.read_parquet(tmp_path / "x.parquet"), ref, rel_tol=1e-12, abs_tol=1e-12)
    assert cli_query(["--list"]) == 0
    listed = capsys.readouterr().out
    assert "model_summary" in listed and "checkpoint_diff" in listed
    assert cli_query(["image_leakage", "--show"]) == 0 and "$order_by" in capsys.readouterr().out


@pytest.mark.parametrize("argv,needle", [
    (["model_summary", "--results", "{root}/nowhere"], "results directory not found"),
    (["nope", "--results", "{root}"], "unknown query 'nope'"),
    (["model_summary", "--results", "{root}", "--param", "bogus=1"], "unknown parameter 'bogus'"),
    (["model_summary", "--results", "{root}", "--param", "model=ghost"], "no rows for model 'ghost'"),
    (["class_leakage", "--results", "{root}", "--param", "model=ghost"], "no rows for model 'ghost'"),
    (["checkpoint_diff", "--results", "{root}", "-p", "model=ghost", "-p", "baseline_run=run-a",
      "-p", "candidate_run=run-a"], "no rows for model 'ghost'"),
    (["model_summary", "--results", "{root}", "--param", "noequals"], "key=value"),
    (["model_summary", "--results", "{root}", "--format", "parquet"], "needs --out"),
    (["model_summary"], "no results directory"),
])
def test_cli_errors(res, capsys, argv, needle):
    argv = [a.replace("{root}", str(res.root)) for a in argv]
    assert cli_query(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sing query: error:") and needle in err and "\n" not in err


def test_cli_bad_usage_returns_2(capsys):
    assert cli_query(["model_summary", "--format", "xml"]) == 2
    assert "invalid choice" in capsys.readouterr().err
    assert cli_query(["--help"]) == 0
