"""Query files: the header mini-language, `$name` parameters, and the built-in queries.

Header of a query file (a leading block of `--` comment lines):
  * the first line is the one-line description (`sing query --list`);
  * a parameter line declares `$name TYPE DEFAULT doc`, TYPE in VARCHAR|INTEGER|DOUBLE|BOOLEAN,
    DEFAULT one of NULL, a number, true/false, a 'quoted string', `required` or `auto`
    (a glob bound by the runner); a doc containing "one of 'a', 'b'" restricts the values;
  * `-- @nonempty: p1 p2 ...`: an empty result while any of these filters is set raises
    QueryError("no rows for ...") naming the filters and what the results hold;
  * `-- @require_any: p1 p2`: at least one of these parameters must be set.
A user's .sql file needs none of this: its `$name` tokens are its parameters (default NULL).
The built-in queries are the `*.sql` files of this package; a name starting with `_`
(the shared macros) is not a query.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import QueryError

QUERY_DIR = Path(__file__).resolve().parent
# The parameters bound by the runner from `--results DIR`: parameter -> table directory.
GLOB_PARAMS = {"images_glob": "images", "concepts_glob": "concepts", "steer_glob": "steer",
               "errors_glob": "errors", "concept_angles_glob": "concept_angles", "concept_vocab_glob": "concept_vocab",
               "leaderboard_glob": "leaderboard"}
# Tables a query may read in either of two layouts (queries/_macros.sql `concept_rows`): a
# query needs one whole layout; a missing one is bound to an empty file of its schema.
LAYOUTS = {"concept_angles_glob": "concepts", "concept_vocab_glob": "concepts", "concepts_glob": "concepts"}
LAYOUT_SETS = {"concepts": (("concept_angles_glob", "concept_vocab_glob"), ("concepts_glob",))}


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


def _declaration(line: str) -> Param | None:
    """The Param a `$name TYPE DEFAULT doc` header line declares (None for other lines)."""
    m = _PARAM_LINE.match(line)
    if not m:
        return None
    name, tok, doc = m.group("name"), m.group("default"), (m.group("doc") or "").strip()
    ch = _CHOICES.search(doc)
    return Param(
        name=name, type=m.group("type"),
        default=None if tok in ("required", "auto") else _literal(tok),
        required=tok == "required", auto=tok == "auto" or name in GLOB_PARAMS,
        choices=tuple(c.strip()[1:-1] for c in ch.group(1).split(",")) if ch else None, doc=doc)


def parse_query(path: Path, name: str | None = None) -> QuerySpec:
    path = Path(path)
    text = path.read_text()
    header = _header(text)
    declared: dict[str, Param] = {}
    nonempty: list[str] = []
    require_any: list[tuple[str, ...]] = []
    for h in header:
        if h.startswith("@nonempty:"):
            nonempty += h.split(":", 1)[1].split()
        elif h.startswith("@require_any:"):
            require_any.append(tuple(h.split(":", 1)[1].split()))
        elif (p := _declaration(h)) is not None:
            declared[p.name] = p
    sql = _strip_statement(text)
    params = {p: declared.get(p) or Param(name=p, auto=p in GLOB_PARAMS) for p in sql_parameters(sql)}
    return QuerySpec(name=name or path.stem, path=path, sql=sql, description=next((h for h in header if h), ""),
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
