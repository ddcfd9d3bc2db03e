"""`sing query`: list, show or run a query from the command line."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import QueryError
from .formatting import FORMATS, format_frame
from .params import parse_cli_params
from .runner import run_query
from .sqlfile import list_queries, load_query


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


def _fail(msg) -> int:
    print(f"sing query: error: {' '.join(str(msg).split())}", file=sys.stderr)
    return 2


def _print_list() -> int:
    items = list_queries()
    width = max(len(n) for n, _ in items)
    for name, desc in items:
        print(f"{name.ljust(width)}  {desc}")
    return 0


def _run(a: argparse.Namespace) -> int:
    spec = load_query(a.name)
    if a.show:
        print(spec.path.read_text(), end="")
        return 0
    if a.format == "parquet" and not a.out:
        return _fail("--format parquet needs --out FILE")
    df = run_query(a.name, a.results, parse_cli_params(a.param, spec))
    text = format_frame(df, a.format)
    if not a.out:
        sys.stdout.write(text)
        return 0
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        out.write_bytes(text)
    else:
        out.write_text(text)
    print(f"{df.height} rows -> {out}", file=sys.stderr)
    return 0


def cli_query(args: list[str] | None = None) -> int:
    """`sing query NAME --results DIR [--param k=v ...] [--format F] [--out FILE]`,
    `sing query --list`. Returns the exit status (2 on any error, message on stderr)."""
    try:
        a = _query_parser().parse_args(list(sys.argv[1:] if args is None else args))
    except SystemExit as exc:  # argparse already printed usage / help
        return exc.code if isinstance(exc.code, int) else 2
    try:
        if a.list:
            return _print_list()
        if not a.name:
            return _fail("give a query name (sing query --list) or a .sql file")
        return _run(a)
    except (QueryError, OSError) as exc:
        return _fail(exc)
