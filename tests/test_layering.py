"""sing_ops is pure math: no file, network or Ray access (pipelines/ does the I/O).
A static check over its source, so a stray import fails here rather than in review."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SING_OPS = Path(__file__).resolve().parents[1] / "sing_ops"
FORBIDDEN = {"os", "io", "pathlib", "shutil", "tempfile", "glob", "pickle", "socket", "urllib", "requests",
             "ray", "safetensors", "pyarrow", "polars", "duckdb", "fsspec", "PIL", "webdataset", "pipelines"}
# the benchmark entry point (python -m sing_ops.bench) prints timings; it reads and writes no files
EXEMPT = {"bench.py"}


def _violations(path: Path) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        out += [f"{path.name}:{node.lineno} imports {n}" for n in names if n.split(".")[0] in FORBIDDEN]
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "open":
            out.append(f"{path.name}:{node.lineno} calls open()")
    return out


@pytest.mark.parametrize("path", sorted(p for p in SING_OPS.glob("*.py") if p.name not in EXEMPT), ids=lambda p: p.name)
def test_sing_ops_module_does_no_io(path):
    assert _violations(path) == []


def test_the_check_catches_io(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nfrom pathlib import Path\nfrom ray import data\n\ndef f():\n    return open('x')\n")
    assert len(_violations(bad)) == 4


def test_the_read_stage_does_not_import_torch():
    """Ray runs a read task per CPU; importing torch there costs each worker ~275 MB of
    private memory and a second or two, for nothing (decoding is PIL and numpy)."""
    import subprocess
    import sys

    code = ("import sys, pipelines.stages.read, pipelines.io.shards, pipelines.io.images; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'timm')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]", out.stdout
