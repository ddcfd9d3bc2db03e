"""Parameter values: checked and converted to the type a query file declares.

Values given as strings (`sing query NAME --param key=value`) are converted by this rule:
`NULL`/`null`/`None` or an empty value -> NULL; otherwise by the declared type (INTEGER ->
int, DOUBLE -> float, BOOLEAN -> true/false/1/0/yes/no/on/off, VARCHAR -> the text
unchanged); an undeclared parameter (user files) becomes an int if the text is an integer
literal, else a float if it is a decimal/exponent literal, else true/false for those words,
else the text. Quote-free: `--param model=resnet50`, `--param k=50`.
"""
from __future__ import annotations

import re

from .errors import QueryError
from .sqlfile import Param, QuerySpec

_INT = re.compile(r"^[-+]?\d+$")
_FLOAT = re.compile(r"^[-+]?(?:\d+\.\d*|\.\d+|\d+(?:\.\d*)?[eE][-+]?\d+|\d+\.\d*[eE][-+]?\d+)$")
_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def _typed(value, t: str | None):
    """`value` as SQL type `t` (strings are parsed); ValueError/TypeError if it is not one."""
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
        return str(value)
    return value


def coerce(value, param: Param, query: str = ""):
    """Check/convert one parameter value to the declared type (strings are parsed)."""
    where = f"parameter {param.name!r}" + (f" of query {query!r}" if query else "")
    if value is None:
        return None
    try:
        value = _typed(value, param.type)
    except (TypeError, ValueError):
        raise QueryError(f"{where} expects {param.type}, got {value!r}") from None
    if param.type in ("INTEGER", "DOUBLE", "BOOLEAN"):
        return value                 # choices are 'quoted' text: they restrict text parameters
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
        check_known(key, spec)
        out[key] = parse_cli_value(text, spec.params[key])
    return out


def check_known(key: str, spec: QuerySpec) -> None:
    """QueryError unless `key` is a parameter of the query that the caller may set."""
    if key not in spec.params:
        known = ", ".join(spec.user_params) or "(none)"
        raise QueryError(f"unknown parameter {key!r} for query {spec.name!r}; its parameters: {known}")
    if spec.params[key].auto:
        raise QueryError(f"parameter {key!r} of query {spec.name!r} is bound from --results; it cannot be set")
