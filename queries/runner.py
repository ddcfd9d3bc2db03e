"""Run the SQL files of this package (or a user's .sql file) over a results directory.

Each query is one DuckDB statement that reads the hive-partitioned result tables through
parameters bound by the runner from `--results DIR`:

    $images_glob   = DIR/images/**/*.parquet
    $concepts_glob = DIR/concepts/**/*.parquet
    $steer_glob    = DIR/steer/**/*.parquet
    $errors_glob   = DIR/errors/**/*.parquet

Every value reaches DuckDB as a bound parameter (`$name`), never as SQL text.

Header of a query file (a leading block of `--` comment lines):
  * the first line is the one-line description (`sing query --list`);
  * a parameter line declares `$name TYPE DEFAULT doc`, TYPE in VARCHAR|INTEGER|DOUBLE|BOOLEAN,
    DEFAULT one of NULL, a number, true/false, a 'quoted string', `required` or `auto`
    (a glob bound by the runner); a doc containing "one of 'a', 'b'" restricts the values;
  * `-- @nonempty: p1 p2 ...`: an empty result while any of these filters is set raises
    QueryError("no rows for ...") naming the filters and what the results hold;
  * `-- @require_any: p1 p2`: at least one of these parameters must be set.
A user's .sql file needs none of this: its `$name` tokens are its parameters (default NULL).

Parameter values given as strings (`sing query NAME --param key=value`) are converted by
this rule: `NULL`/`null`/`None` or an empty value -> NULL; otherwise by the declared
type (INTEGER -> int, DOUBLE -> float, BOOLEAN -> true/false/1/0/yes/no, VARCHAR -> the text
unchanged); an undeclared parameter (user files) becomes an int if the text is an integer
literal, else a float if it is a decimal/exponent literal, else true/false for those
words, else the text. Quote-free: `--param model=resnet50`, `--param k=50`.
"""
from __future__ import annotations

import argparse
import io
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import polars as pl

QUERY_DIR = Path(__file__).resolve().parent
GLOB_PARAMS = {"images_glob": "images", "concepts_glob": "concepts", "steer_glob": "steer",
               "errors_glob": "errors"}
FORMATS = ("table", "csv", "json", "parquet")
TYPES = ("VARCHAR", "INTEGER", "DOUBLE", "BOOLEAN")


class QueryError(Exception):
    """A user-facing error: unknown query/parameter, missing results, empty filter, SQL error."""


# ----------------------------------------------------------------------------- parsing

@dataclass(frozen=True)
class Param:
    name: str
    type: str | None = None          # declared SQL type; None for undeclared (user files)
    default: Any = None
    required: bool = False
    auto: bool = False               # bound by the runner (result globs)
    choices: tuple | None = None
    doc: str = ""


@dataclass(frozen=True)
class QuerySpec:
    name: str
    path: Path
    sql: str
    description: str
    header: str
    params: dict[str, Param] = field(default_factory=dict)   # every $name the SQL uses
    nonempty: tuple[str, ...] = ()
    require_any: tuple[tuple[str, ...], ...] = ()

    @property
    def user_params(self) -> list[str]:
        return [p for p, spec in self.params.items() if not spec.auto]


_TOKENS = re.compile(
    r"""(?P<str>'(?:[^']|'')*')|(?P<ident>"(?:[^"]|"")*")|(?P<line>--[^\n]*)|(?P<block>/\*.*?\*/)"""
    r"""|\$(?P<param>[A-Za-z_][A-Za-z0-9_]*)""", re.S)
_PARAM_LINE = re.compile(
    r"^\$(?P<name>[A-Za-z_]\w*)\s+(?P<type>VARCHAR|INTEGER|DOUBLE|BOOLEAN)\s+"
    r"(?P<default>NULL|auto|required|true|false|'[^']*'|[-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)(?:\s+(?P<doc>.*))?$")
_CHOICES = re.compile(r"one of\s+('[^']*'(?:\s*,\s*'[^']*')*)")


def sql_parameters(sql: str) -> list[str]:
    """`$name` tokens of `sql` in order of first use, ignoring comments and string literals."""
    seen: dict[str, None] = {}
    for m in _TOKENS.finditer(sql):
        if m.group("param"):
            seen.setdefault(m.group("param"), None)
    return list(seen)


def _strip_statement(sql: str) -> str:
    """The SQL without a trailing ';'; QueryError if it holds more than one statement."""
    body = sql.strip()
    # Drop comments and literals, then look for a ';' that is not the last character.
    code = _TOKENS.sub(lambda m: "" if (m.group("line") or m.group("block")) else " x ", body).strip()
    if code.rstrip(";").strip().count(";"):
        raise QueryError("a query file must hold exactly one SQL statement")
    return body[:-1].rstrip() if body.endswith(";") else body


def _header(sql: str) -> list[str]:
    lines = []
    for line in sql.lstrip("\ufeff").splitlines():
        s = line.strip()
        if s.startswith("--"):
            lines.append(s[2:].strip())
        elif s:
            break
        else:
            lines.append("")
    return lines


def _literal(tok: str):
    if tok == "NULL":
        return None
    if tok in ("true", "false"):
        return tok == "true"
    if tok.startswith("'"):
        return tok[1:-1]
    return float(tok) if re.search(r"[.eE]", tok) else int(tok)


def parse_query(path: Path, name: str | None = None) -> QuerySpec:
    path = Path(path)
    text = path.read_text()
    header = _header(text)
    description = next((h for h in header if h), "")
    declared: dict[str, Param] = {}
    nonempty: list[str] = []
    require_any: list[tuple[str, ...]] = []
    for h in header:
        if h.startswith("@nonempty:"):
            nonempty += h.split(":", 1)[1].split()
            continue
        if h.startswith("@require_any:"):
            require_any.append(tuple(h.split(":", 1)[1].split()))
            continue
        m = _PARAM_LINE.match(h)
        if not m:
            continue
        tok, doc = m.group("default"), (m.group("doc") or "").strip()
        ch = _CHOICES.search(doc)
        declared[m.group("name")] = Param(
            name=m.group("name"), type=m.group("type"),
            default=None if tok in ("required", "auto") else _literal(tok),
            required=tok == "required", auto=tok == "auto" or m.group("name") in GLOB_PARAMS,
            choices=tuple(c.strip()[1:-1] for c in ch.group(1).split(",")) if ch else None, doc=doc)
    sql = _strip_statement(text)
    params = {}
    for p in sql_parameters(sql):
        params[p] = declared.get(p) or Param(name=p, auto=p in GLOB_PARAMS)
    return QuerySpec(name=name or path.stem, path=path, sql=sql, description=description,
                     header="\n".join(header).strip("\n"), params=params, nonempty=tuple(nonempty),
                     require_any=tuple(require_any))


def _builtin_paths() -> dict[str, Path]:
    return {p.stem: p for p in sorted(QUERY_DIR.glob("*.sql")) if not p.name.startswith("_")}


def list_queries() -> list[tuple[str, str]]:
    """(name, one-line description) of every built-in query."""
    return [(name, parse_query(p).description) for name, p in _builtin_paths().items()]


def load_query(name_or_path: str | Path) -> QuerySpec:
    builtins = _builtin_paths()
    key = str(name_or_path)
    if key in builtins:
        return parse_query(builtins[key], key)
    if key.endswith(".sql"):
        path = Path(key).expanduser()
        if not path.is_file():
            raise QueryError(f"query file not found: {path}")
        return parse_query(path)
    raise QueryError(f"unknown query {key!r}; available: {', '.join(builtins)} (or a path to a .sql file)")


# --------------------------------------------------------------------------- values

_INT = re.compile(r"^[-+]?\d+$")
_FLOAT = re.compile(r"^[-+]?(?:\d+\.\d*|\.\d+|\d+(?:\.\d*)?[eE][-+]?\d+|\d+\.\d*[eE][-+]?\d+)$")
_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def coerce(value, param: Param, query: str = ""):
    """Check/convert one parameter value to the declared type (strings are parsed)."""
    where = f"parameter {param.name!r}" + (f" of query {query!r}" if query else "")
    if value is None:
        return None
    t = param.type
    try:
        if t == "INTEGER":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value.strip()) if isinstance(value, str) else int(value)
        if t == "DOUBLE":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if t == "BOOLEAN":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
                return value.strip().lower() in _TRUE
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise ValueError
        if t == "VARCHAR" and not isinstance(value, str):
            value = str(value)
    except (TypeError, ValueError):
        raise QueryError(f"{where} expects {t}, got {value!r}") from None
    if param.choices is not None and value not in param.choices:
        raise QueryError(f"{where} must be one of {', '.join(param.choices)}; got {value!r}")
    return value


def parse_cli_value(text: str, param: Param | None = None):
    """A `--param key=value` text to a Python value (rule in the module docstring)."""
    if text.strip() in ("", "NULL", "null", "None"):
        return None
    if param is not None and param.type is not None:
        return coerce(text, param)
    s = text.strip()
    if _INT.match(s):
        return int(s)
    if _FLOAT.match(s):
        return float(s)
    if s.lower() in ("true", "false"):
        return s.lower() == "true"
    return text


def parse_cli_params(pairs: list[str], spec: QuerySpec) -> dict:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise QueryError(f"--param needs key=value, got {pair!r}")
        key, text = pair.split("=", 1)
        key = key.strip().lstrip("$")
        _check_known(key, spec)
        out[key] = parse_cli_value(text, spec.params[key])
    return out


def _check_known(key: str, spec: QuerySpec) -> None:
    if key not in spec.params:
        known = ", ".join(spec.user_params) or "(none)"
        raise QueryError(f"unknown parameter {key!r} for query {spec.name!r}; its parameters: {known}")
    if spec.params[key].auto:
        raise QueryError(f"parameter {key!r} of query {spec.name!r} is bound from --results; it cannot be set")


# -------------------------------------------------------------------------- running

def _results_dir(results) -> Path:
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


def _bind_globs(root: Path, names, what: str) -> dict:
    out = {}
    for p in names:
        table = GLOB_PARAMS[p]
        if not has_table(root, table):
            raise QueryError(f"no Parquet files under {root / table} ({what} reads the {table} table)")
        out[p] = table_glob(root, table)
    return out


def _connect():
    import duckdb

    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    con.execute((QUERY_DIR / "_macros.sql").read_text())
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
    root = _results_dir(results)
    names = sql_parameters(sql)
    bound = _bind_globs(root, [p for p in names if p in GLOB_PARAMS], what)
    bound.update({k: v for k, v in (params or {}).items() if k in names})
    return _execute(sql, bound, what)


def run_query(name_or_path, results, params: dict | None = None) -> pl.DataFrame:
    """Run a built-in query by name (see list_queries) or a user's .sql file over `results`.

    params: {name: value} (a leading `$` is allowed); unset parameters take the header
    default (NULL for undeclared ones). String values are converted to the declared type.
    """
    spec = load_query(name_or_path)
    given = {}
    for key, value in (params or {}).items():
        key = str(key).lstrip("$")
        _check_known(key, spec)
        given[key] = coerce(value, spec.params[key], spec.name)
    bound = {}
    for name, p in spec.params.items():
        if p.auto:
            continue
        bound[name] = given.get(name, p.default)
    missing = [n for n, p in spec.params.items() if p.required and bound.get(n) is None]
    if missing:
        raise QueryError(f"query {spec.name!r} needs parameter(s) {', '.join(missing)} (--param {missing[0]}=...)")
    for group in spec.require_any:
        if all(bound.get(n) is None for n in group):
            raise QueryError(f"query {spec.name!r} needs one of the parameters {', '.join(group)}")
    root = _results_dir(results)
    bound.update(_bind_globs(root, [n for n, p in spec.params.items() if p.auto], f"query {spec.name!r}"))
    df = _execute(spec.sql, bound, f"query {spec.name!r}")
    if df.height == 0 and spec.nonempty:
        set_filters = {n: bound[n] for n in spec.nonempty if bound.get(n) is not None}
        if set_filters:
            raise QueryError(_no_rows_message(root, spec, set_filters))
    return df


def _no_rows_message(root: Path, spec: QuerySpec, filters: dict) -> str:
    """'no rows for model 'x' ...' plus what the results do hold, for the first table the
    query reads."""
    what = ", ".join(f"{k} {v!r}" for k, v in filters.items())
    tables = [GLOB_PARAMS[n] for n, p in spec.params.items() if p.auto and n in GLOB_PARAMS]
    table = "images" if "images" in tables or not tables else tables[0]
    try:
        avail = _execute(
            "SELECT DISTINCT model, run FROM read_parquet($g, hive_partitioning = true, "
            "hive_types = {'model': VARCHAR, 'run': VARCHAR}) ORDER BY model, run",
            {"g": table_glob(root, table)}, "listing")
    except QueryError:
        return f"no rows for {what} in {root / table}"
    models = sorted(set(avail["model"].to_list()))
    runs = sorted(set(avail["run"].to_list()))
    missing = [f"{k} {v!r}" for k, v in filters.items()
               if ("model" in k and v not in models) or ("run" in k.split("_") and v not in runs)]
    pairs = ", ".join(f"{m}/{r}" for m, r in avail.iter_rows())
    if len(pairs) > 400:
        pairs = pairs[:400] + " ..."
    if missing:
        return (f"no rows for {', '.join(missing)} in {root / table} "
                f"(models: {', '.join(models)}; runs: {', '.join(runs)})")
    return f"no rows for {what}: the filters select nothing in {root / table} (model/run: {pairs})"


# ------------------------------------------------------------------------- formatting

def _cell(v) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "NaN" if math.isnan(v) else f"{v:.3f}"
    return str(v)


def format_frame(df: pl.DataFrame, fmt: str = "table") -> str | bytes:
    """table: aligned text, floats to 3 decimals, NULL for missing; csv/json (records,
    NaN -> null): text; parquet: bytes."""
    if fmt == "table":
        cols = df.columns
        rows = [[_cell(v) for v in r] for r in df.iter_rows()]
        numeric = [df.schema[c].is_numeric() for c in cols]
        widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(cols)]

        def line(cells):
            return "  ".join(c.rjust(w) if num else c.ljust(w)
                             for c, w, num in zip(cells, widths, numeric)).rstrip()

        out = [line(cols), line(["-" * w for w in widths])] + [line(r) for r in rows]
        out.append(f"({df.height} row{'s' if df.height != 1 else ''})")
        return "\n".join(out) + "\n"
    if fmt == "csv":
        return df.write_csv()
    if fmt == "json":
        floats = [c for c, t in df.schema.items() if t.is_float()]
        return df.with_columns(pl.col(floats).fill_nan(None)).write_json() + "\n"
    if fmt == "parquet":
        buf = io.BytesIO()
        df.write_parquet(buf)
        return buf.getvalue()
    raise QueryError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")


# -------------------------------------------------------------- notebook conveniences

def model_summary(results, **params) -> pl.DataFrame:
    return run_query("model_summary", results, params)


def class_leakage(results, **params) -> pl.DataFrame:
    return run_query("class_leakage", results, params)


def image_leakage(results, **params) -> pl.DataFrame:
    return run_query("image_leakage", results, params)


def concept_shift(results, **params) -> pl.DataFrame:
    return run_query("concept_shift", results, params)


def steer_summary(results, **params) -> pl.DataFrame:
    return run_query("steer_summary", results, params)


class RankCorrelation(NamedTuple):
    rho: float | None
    p_value: float | None
    n_classes: int


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularized incomplete beta (Numerical Recipes, Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    lbt = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(lbt) * _betacf(a, b, x) / a
    return 1.0 - math.exp(lbt) * _betacf(b, a, 1.0 - x) / b


def spearman_p_value(rho: float | None, n: int) -> float | None:
    """Two-sided p-value of Spearman's rho, t-approximation with n - 2 degrees of freedom
    (what scipy.stats.spearmanr reports). None when n < 3 or rho is undefined."""
    if rho is None or n < 3 or math.isnan(rho):
        return None
    df = n - 2
    if abs(rho) >= 1.0:
        return 0.0
    t2 = rho * rho * df / (1.0 - rho * rho)
    # P(|T| > t) = I_{df/(df+t^2)}(df/2, 1/2)
    return _betainc(df / 2.0, 0.5, df / (df + t2))


def rank_correlation(results, model_a: str, model_b: str, run_a: str | None = None,
                     run_b: str | None = None, min_n: int = 1) -> RankCorrelation:
    """Spearman's rho of per-class median |AS| between two models, its two-sided p-value
    (t-approximation) and the number of shared classes."""
    df = run_query("model_rank_correlation", results,
                   {"model_a": model_a, "model_b": model_b, "run_a": run_a, "run_b": run_b, "min_n": min_n})
    row = df.row(0, named=True)
    rho, n = row["spearman_rho"], int(row["n_classes"])
    rho = None if rho is None or math.isnan(rho) else float(rho)
    return RankCorrelation(rho, spearman_p_value(rho, n), n)


def checkpoint_diff(results, model: str | None = None, baseline_run: str | None = None,
                    candidate_run: str | None = None, baseline_model: str | None = None,
                    candidate_model: str | None = None, top_classes: int = 10) -> dict:
    """Baseline vs candidate: {'baseline': {'model', 'run'}, 'candidate': {...},
    'stats': {statistic: {'baseline', 'candidate', 'delta', 'rel_delta'}} (model level, in
    checkpoint_diff.sql order), 'deltas': {statistic: delta}, 'top_classes': DataFrame
    (rank, label, class_name, baseline, candidate, delta, rel_delta, n_baseline,
    n_candidate; largest growth of median |AS| first), 'frame': the full query result}."""
    df = run_query("checkpoint_diff", results, {
        "model": model, "baseline_run": baseline_run, "candidate_run": candidate_run,
        "baseline_model": baseline_model, "candidate_model": candidate_model, "top_classes": top_classes})
    first = df.row(0, named=True)
    model_rows = df.filter(pl.col("kind") == "model").sort("rank")
    stats = {r["statistic"]: {k: r[k] for k in ("baseline", "candidate", "delta", "rel_delta")}
             for r in model_rows.iter_rows(named=True)}
    return {
        "baseline": {"model": first["baseline_model"], "run": first["baseline_run"]},
        "candidate": {"model": first["candidate_model"], "run": first["candidate_run"]},
        "stats": stats,
        "deltas": {k: v["delta"] for k, v in stats.items()},
        "top_classes": df.filter(pl.col("kind") == "class").sort("rank").select(
            "rank", "label", "class_name", "baseline", "candidate", "delta", "rel_delta",
            "n_baseline", "n_candidate"),
        "frame": df,
    }


# --------------------------------------------------------------------------------- CLI

def _query_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sing query",
        description="Run a named SQL query (or a .sql file) over a results directory.",
        epilog="Parameter values: NULL/null/empty -> NULL; otherwise converted to the type the "
               "query header declares (INTEGER, DOUBLE, BOOLEAN, VARCHAR). "
               "`sing query NAME --show` prints a query's documentation and SQL.")
    p.add_argument("name", nargs="?", help="query name (see --list) or path to a .sql file")
    p.add_argument("--list", action="store_true", help="list the built-in queries and exit")
    p.add_argument("--show", action="store_true", help="print the query file (header + SQL) and exit")
    p.add_argument("--results", metavar="DIR", help="results directory (images/, concepts/, steer/ ...)")
    p.add_argument("--param", "-p", action="append", default=[], metavar="KEY=VALUE",
                   help="query parameter (repeatable), e.g. --param model=resnet50 --param k=50")
    p.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")
    p.add_argument("--out", metavar="FILE", help="write the output here instead of stdout")
    return p


def _fail(prog: str, msg) -> int:
    print(f"{prog}: error: {' '.join(str(msg).split())}", file=sys.stderr)
    return 2


def cli_query(args: list[str] | None = None) -> int:
    """`sing query NAME --results DIR [--param k=v ...] [--format F] [--out FILE]`,
    `sing query --list`. Returns the exit status (2 on any error, message on stderr)."""
    parser = _query_parser()
    try:
        a = parser.parse_args(list(sys.argv[1:] if args is None else args))
    except SystemExit as exc:  # argparse already printed usage / help
        return exc.code if isinstance(exc.code, int) else 2
    try:
        if a.list:
            items = list_queries()
            width = max(len(n) for n, _ in items)
            for name, desc in items:
                print(f"{name.ljust(width)}  {desc}")
            return 0
        if not a.name:
            return _fail("sing query", "give a query name (sing query --list) or a .sql file")
        spec = load_query(a.name)
        if a.show:
            print(spec.path.read_text(), end="")
            return 0
        if a.format == "parquet" and not a.out:
            return _fail("sing query", "--format parquet needs --out FILE")
        params = parse_cli_params(a.param, spec)
        df = run_query(a.name, a.results, params)
        text = format_frame(df, a.format)
        if a.out:
            out = Path(a.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(text, bytes):
                out.write_bytes(text)
            else:
                out.write_text(text)
            print(f"{df.height} rows -> {out}", file=sys.stderr)
        else:
            sys.stdout.write(text)
        return 0
    except QueryError as exc:
        return _fail("sing query", exc)
    except OSError as exc:
        return _fail("sing query", exc)
