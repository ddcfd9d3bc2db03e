"""The `sing` process exits quickly (pipelines.cli.entry skips the interpreter's teardown):
its output must still arrive whole and its exit code be main()'s."""
from __future__ import annotations

import json
import os
import subprocess
import sys

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}


def _sing(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True, env=ENV,
                          timeout=300)


def test_piped_output_arrives_whole_before_the_quick_exit():
    r = _sing("models", "--paper", "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)  # cut output would not parse
    assert len(rows) == 13


def test_exit_codes_are_mains():
    assert _sing("--help").returncode == 0
    bad_flag = _sing("audit", "--no-such-flag")
    assert bad_flag.returncode == 2 and "error" in bad_flag.stderr
    no_shards = _sing("audit", "--model", "lite0", "--translator", "t.safetensors", "--shards", "/nonexistent/*.tar",
                      "--out", "/tmp/never")
    assert no_shards.returncode == 2 and 'no shard matched "/nonexistent/*.tar"' in no_shards.stderr
