"""The shape the codebase keeps (docs/ARCHITECTURE.md): small modules, short functions, no
import cycles, and help text on every flag of every command."""
from __future__ import annotations

import argparse
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipelines", "queries", "sing_ops")
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 80


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for f in (ROOT / pkg).rglob("*.py"):
            name = ".".join(f.relative_to(ROOT).with_suffix("").parts)
            out[name[: -len(".__init__")] if name.endswith(".__init__") else name] = f
    return out


def _imports(name: str, path: Path, modules: dict) -> set[str]:
    """Every project module `name` imports, at any level (function-level imports included)."""
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            for a in node.names:
                found.add(f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {m for m in found if m in modules and m != name}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v), on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def test_modules_are_small_and_functions_short():
    big, long = [], []
    for name, path in _modules().items():
        text = path.read_text()
        if len(text.splitlines()) > MAX_MODULE_LINES:
            big.append((name, len(text.splitlines())))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append((name, node.name, n))
    assert big == [] and long == []


def test_no_import_cycles():
    modules = _modules()
    assert _cycles({n: _imports(n, p, modules) for n, p in modules.items()}) == []


def test_the_cycle_check_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _flags(parser: argparse.ArgumentParser, where: str):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _flags(sub, f"{where} {name}")
        elif not isinstance(action, argparse._HelpAction):
            yield where, action


@pytest.mark.parametrize("command", __import__("pipelines.cli", fromlist=["COMMANDS"]).COMMANDS)
def test_every_flag_has_help(command):
    from pipelines.cli import parser

    (sub,) = [a for a in parser(command)._actions if isinstance(a, argparse._SubParsersAction)]
    missing = [f"{where}: {'/'.join(a.option_strings) or a.dest}" for where, a in _flags(sub.choices[command], command)
               if not a.help]
    assert missing == []


# Rooms, lowest first: a module imports its own room and lower ones only (imports under
# `if TYPE_CHECKING:` are annotations, not dependencies). A feature (bench, fit... the jobs
# that use other jobs) gets a room of its own above the jobs it builds on.
ROOMS = [("base", ("sing_ops", "pipelines.errors", "pipelines.timeline")),
         ("io", ("pipelines.io",)),
         ("models", ("pipelines.models",)),
         ("stages", ("pipelines.stages", "pipelines.options", "pipelines.console")),
         ("queries", ("queries",)),
         ("jobs", ("pipelines", "pipelines.jobs", "pipelines.cli")),
         ("features", ("pipelines.jobs.bench", "pipelines.jobs.nightly", "pipelines.jobs.reproduce",
                       "pipelines.jobs.leaderboard"))]


def _room(name: str) -> int:
    best = max(((len(p), i) for i, (_, prefixes) in enumerate(ROOMS) for p in prefixes
                if name == p or name.startswith(p + ".")), default=None)
    assert best is not None, f"{name} is in no room: add it to ROOMS"
    return best[1]


def _runtime_imports(name: str, path: Path, modules: dict) -> set[str]:
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in
                   ast.unparse(node.test) for n in ast.walk(node)}
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom):
            base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            found |= {f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {m for m in found if m in modules and m != name}


def _upward(modules: dict) -> list[str]:
    return sorted(f"{n} ({ROOMS[_room(n)][0]}) imports {m} ({ROOMS[_room(m)][0]})"
                  for n, p in modules.items() for m in _runtime_imports(n, p, modules) if _room(m) > _room(n))


def test_lower_rooms_never_import_higher_ones():
    assert _upward(_modules()) == []


def test_the_room_check_finds_an_upward_import(tmp_path):
    low, high = tmp_path / "low.py", tmp_path / "high.py"
    low.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pipelines.jobs.audit\n"
                   "def f():\n    from pipelines.jobs.leaderboard import run\n")
    high.write_text("from pipelines.io import low\n")  # downward: allowed
    assert _upward({"pipelines.io.low": low, "pipelines.jobs.leaderboard.run": high, "pipelines.jobs.audit": high}) \
        == ["pipelines.io.low (io) imports pipelines.jobs.leaderboard.run (features)"]
