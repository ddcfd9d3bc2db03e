"""Run a query file (or ad-hoc SQL) over a results directory with DuckDB.

Each query is one DuckDB statement that reads the hive-partitioned result tables through
parameters bound by the runner from `--results DIR`:

    $images_glob   = DIR/images/**/*.parquet
    $concepts_glob = DIR/concepts/**/*.parquet
    $steer_glob    = DIR/steer/**/*.parquet
    $errors_glob   = DIR/errors/**/*.parquet
    $leaderboard_glob = DIR/leaderboard/**/*.parquet (`sing leaderboard`: one row per model and board)
    $concept_angles_glob, $concept_vocab_glob, $concepts_glob: the concept angles, as lists
                     (since 2026-12-03) or long (before); the layout a directory lacks is
                     bound to an empty file (empty_table_glob)

Every value reaches DuckDB as a bound parameter (`$name`), never as SQL text. Each run gets
a fresh in-memory connection with the shared macros of `_macros.sql` defined on it.
"""
from __future__ import annotations

import functools
from pathlib import Path

import polars as pl

from .errors import QueryError
from .params import check_known, coerce
from .sqlfile import GLOB_PARAMS, LAYOUT_SETS, LAYOUTS, QUERY_DIR, QuerySpec, load_query, sql_parameters


def results_dir(results) -> Path:
    if results is None:
        raise QueryError("no results directory given (--results DIR)")
    root = Path(results).expanduser()
    if not root.is_dir():
        raise QueryError(f"results directory not found: {root}")
    return root


def table_glob(root: Path, table: str) -> str:
    return str(root / table / "**" / "*.parquet")


def has_table(results, table: str) -> bool:
    d = Path(results) / table
    return d.is_dir() and any(p.is_file() and not p.name.startswith(".") for p in d.rglob("*.parquet"))


def has_concepts(results) -> bool:
    """Concept angles in either layout (lists + vocabulary, or the long table of older runs)."""
    return (has_table(results, "concept_angles") and has_table(results, "concept_vocab")) \
        or has_table(results, "concepts")


def _bind_globs(root: Path, names, what: str) -> dict:
    out = {}
    for p in names:
        table = GLOB_PARAMS[p]
        if has_table(root, table):
            out[p] = table_glob(root, table)
        elif p in LAYOUTS:
            out[p] = empty_table_glob(table)
        else:
            raise QueryError(f"no Parquet files under {root / table} ({what} reads the {table} table)")
    for kind, sets in LAYOUT_SETS.items():
        wanted = [s for s in sets if any(p in names for p in s)]
        if wanted and not any(all(has_table(root, GLOB_PARAMS[p]) for p in s) for s in wanted):
            tables = " or ".join("+".join(GLOB_PARAMS[p] for p in s) for s in wanted)
            raise QueryError(f"no {kind} under {root} ({what} reads the {tables} tables; audit with --concepts)")
    return out


@functools.cache
def empty_table_glob(table: str) -> str:
    """A glob matching one empty Parquet file of `table`'s schema, in the hive layout (a layout
    a results directory does not hold contributes no rows). Written once per process."""
    import tempfile

    import pyarrow.parquet as pq

    from .layouts import SCHEMAS

    d = Path(tempfile.mkdtemp(prefix="sing-empty-")) / table / "model=-" / "run=-"
    d.mkdir(parents=True)
    pq.write_table(SCHEMAS[table].empty_table(), d / "empty.parquet")
    return str(d.parents[1] / "**" / "*.parquet")


@functools.cache
def _macros() -> str:
    return (QUERY_DIR / "_macros.sql").read_text()


def _connect():
    import duckdb

    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    con.execute(_macros())
    return con


def _execute(sql: str, params: dict, what: str) -> pl.DataFrame:
    import duckdb

    con = _connect()
    try:
        # duckdb 2: a DB-API result (con.execute) has no .pl(); a relation from con.sql has.
        return con.sql(sql, params=params).pl()
    except duckdb.Error as exc:
        msg = " ".join(str(exc).split())
        raise QueryError(f"{what} failed: {msg}") from None
    finally:
        con.close()


def sql_frame(results, sql: str, params: dict | None = None, what: str = "query") -> pl.DataFrame:
    """Run ad-hoc SQL whose `$<table>_glob` parameters are bound from `results` (used by the
    report; other parameters must be given in `params`)."""
    root = results_dir(results)
    names = sql_parameters(sql)
    bound = _bind_globs(root, [p for p in names if p in GLOB_PARAMS], what)
    bound.update({k: v for k, v in (params or {}).items() if k in names})
    return _execute(sql, bound, what)


def _bind_values(spec: QuerySpec, params: dict | None) -> dict:
    """The query's settable parameters: given values (converted) or the header defaults;
    QueryError for unknown, missing required, or none of a @require_any group."""
    given = {}
    for key, value in (params or {}).items():
        key = str(key).lstrip("$")
        check_known(key, spec)
        given[key] = coerce(value, spec.params[key], spec.name)
    bound = {name: given.get(name, p.default) for name, p in spec.params.items() if not p.auto}
    missing = [n for n, p in spec.params.items() if p.required and bound.get(n) is None]
    if missing:
        raise QueryError(f"query {spec.name!r} needs parameter(s) {', '.join(missing)} (--param {missing[0]}=...)")
    for group in spec.require_any:
        if all(bound.get(n) is None for n in group):
            raise QueryError(f"query {spec.name!r} needs one of the parameters {', '.join(group)}")
    return bound


def run_query(name_or_path, results, params: dict | None = None) -> pl.DataFrame:
    """Run a built-in query by name (see list_queries) or a user's .sql file over `results`.

    params: {name: value} (a leading `$` is allowed); unset parameters take the header
    default (NULL for undeclared ones). String values are converted to the declared type.
    """
    spec = load_query(name_or_path)
    bound = _bind_values(spec, params)
    root = results_dir(results)
    bound.update(_bind_globs(root, [n for n, p in spec.params.items() if p.auto], f"query {spec.name!r}"))
    df = _execute(spec.sql, bound, f"query {spec.name!r}")
    if df.height == 0 and spec.nonempty:
        set_filters = {n: bound[n] for n in spec.nonempty if bound.get(n) is not None}
        if set_filters:
            raise QueryError(_no_rows_message(root, spec, set_filters))
    return df


def _short(values, limit: int = 400) -> str:
    """Values joined by ', ', cut after about `limit` characters (a zoo holds ~1,300 models)."""
    text = ", ".join(map(str, values))
    return text if len(text) <= limit else text[:limit].rsplit(", ", 1)[0] + f" ... ({len(values)} in all)"


def _column_values(root: Path, table: str, filters: dict) -> dict[str, list]:
    """The distinct values of each filter that names a text column of `table` (other than
    model and run): {filter: sorted values}; {} where the table cannot be read."""
    cols = [k for k, v in filters.items() if isinstance(v, str) and k not in ("model", "run") and k.isidentifier()]
    if not cols:
        return {}
    try:
        names = set(_execute("SELECT * FROM result_rows($g) LIMIT 0", {"g": table_glob(root, table)}, "listing").columns)
        cols = [c for c in cols if c in names]
        got = {c: _execute(f'SELECT DISTINCT "{c}" AS v FROM result_rows($g) WHERE v IS NOT NULL ORDER BY v',
                           {"g": table_glob(root, table)}, "listing")["v"].to_list() for c in cols}
    except QueryError:
        return {}
    return {c: v for c, v in got.items() if filters[c] not in v}


def _no_rows_message(root: Path, spec: QuerySpec, filters: dict) -> str:
    """'no rows for model 'x' ...' plus what the results do hold, for the first table the
    query reads (and, for a filter on another text column such as family, its values)."""
    what = ", ".join(f"{k} {v!r}" for k, v in filters.items())
    tables = [GLOB_PARAMS[n] for n, p in spec.params.items() if p.auto and n in GLOB_PARAMS]
    table = "images" if "images" in tables or not tables else tables[0]
    try:
        avail = _execute("SELECT DISTINCT model, run FROM result_rows($g) ORDER BY model, run",
                         {"g": table_glob(root, table)}, "listing")
    except QueryError:
        return f"no rows for {what} in {root / table}"
    models = sorted(set(avail["model"].to_list()))
    runs = sorted(set(avail["run"].to_list()))
    missing = [f"{k} {v!r}" for k, v in filters.items()
               if ("model" in k and v not in models) or ("run" in k.split("_") and v not in runs)]
    pairs = _short([f"{m}/{r}" for m, r in avail.iter_rows()])
    if missing:
        return (f"no rows for {', '.join(missing)} in {root / table} "
                f"(models: {_short(models)}; runs: {_short(runs)})")
    other = _column_values(root, table, filters)
    if other:
        held = "; ".join(f"{k}: {_short(v)}" for k, v in other.items())
        return f"no rows for {', '.join(f'{k} {filters[k]!r}' for k in other)} in {root / table} ({held})"
    return f"no rows for {what}: the filters select nothing in {root / table} (model/run: {pairs})"
