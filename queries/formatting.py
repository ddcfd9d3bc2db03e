"""Query results as text or bytes: the output formats of `sing query --format`."""
from __future__ import annotations

import io
import math

import polars as pl

from .errors import QueryError

FORMATS = ("table", "csv", "json", "parquet")


def _cell(v) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if math.isnan(v):
            return "NaN"
        text = f"{v:.3f}"
        # a difference of two equal sums may come out as -1e-17 (DuckDB's parallel sums vary
        # in the last bit): "-0.000" would claim a sign the value does not have
        return "0.000" if text == "-0.000" else text
    return str(v)


def _table(df: pl.DataFrame) -> str:
    cols = df.columns
    rows = [[_cell(v) for v in r] for r in df.iter_rows()]
    numeric = [df.schema[c].is_numeric() for c in cols]
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(cols)]

    def line(cells):
        return "  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric)).rstrip()

    out = [line(cols), line(["-" * w for w in widths])] + [line(r) for r in rows]
    out.append(f"({df.height} row{'s' if df.height != 1 else ''})")
    return "\n".join(out) + "\n"


def format_frame(df: pl.DataFrame, fmt: str = "table") -> str | bytes:
    """table: aligned text, floats to 3 decimals, NULL for missing; csv/json (records,
    NaN -> null): text; parquet: bytes."""
    if fmt == "table":
        return _table(df)
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
