"""Offline without the wait (issue 16): each process probes the model hub at most once; an
unreachable hub makes it offline for the rest of its run (and its Ray workers), cached
weights still load, and missing ones fail fast with one line and exit 2.

No network is needed: the hub endpoint is pointed at a local server that counts
connections (and hangs up, answers 503, hangs or answers 200), or at a closed port."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from pipelines.models import hub, weights
from pipelines.cli import main as sing

TIMM_REPO = "timm/test_resnet.r160_in1k"  # where timm:test_resnet's pretrained weights live
PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


class CountingServer:
    """Counts TCP connections. mode: close (hang up at once), 503, 200, hang (never answer)."""

    def __init__(self, mode: str):
        self.mode, self.count, self._held = mode, 0, []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.count += 1
            if self.mode == "hang":
                self._held.append(conn)
                continue
            if self.mode != "close":
                conn.settimeout(2)
                try:
                    conn.recv(65536)
                    conn.sendall(f"HTTP/1.1 {self.mode} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
                except OSError:
                    pass
            conn.close()

    def close(self):
        self.sock.close()
        for c in self._held:
            c.close()


def closed_port_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now: connections are refused
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def point_hub(monkeypatch, tmp_path):
    """point_hub(url): this process's hub at url, an empty hub cache, HF_HUB_OFFLINE unset
    (conftest sets it for the suite) and no decision taken yet. Restored afterwards."""
    from huggingface_hub import constants

    def point(url: str) -> Path:
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", *PROXY_VARS):
            monkeypatch.delenv(v, raising=False)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "ENDPOINT", url)
        # huggingface_hub builds file URLs from this template (made from HF_ENDPOINT at import):
        # a request that slipped past the decision would reach the counting server too
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
        cache = tmp_path / "hf-cache"
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
        hub.forget()
        return cache

    yield point
    hub.forget()


@pytest.fixture
def server():
    made = []

    def make(mode):
        made.append(CountingServer(mode))
        return made[-1]

    yield make
    for s in made:
        s.close()


def _assert_names_the_ways(msg: str, model: str, arch: str):
    assert "\n" not in msg
    assert f"weights for {model} are not in the local cache" in msg
    assert "hub cache" in msg or "put it at" in msg  # the cache the loader reads
    assert f"{arch}@/path/to/weights.safetensors" in msg  # a local checkpoint
    assert f"{arch}@s3://" in msg  # a URL


@pytest.mark.parametrize("mode", ["close", "503"])
def test_an_unreachable_hub_is_probed_once_then_the_process_stays_offline(point_hub, server, mode):
    from huggingface_hub import constants

    from pipelines.models.classifiers import load_classifier

    srv = server(mode)
    point_hub(srv.url)
    assert hub.hub_online() is False
    assert hub.hub_online() is False
    for _ in range(2):
        with pytest.raises(hub.WeightsUnavailableError) as e:
            load_classifier("timm:test_resnet")
        _assert_names_the_ways(str(e.value), "timm:test_resnet", "timm:test_resnet")
        assert TIMM_REPO in str(e.value) and f"cannot be reached ({'HTTP 503' if mode == '503' else ''}" in str(e.value)
    assert srv.count == 1  # one probe; huggingface_hub itself never connected
    # offline for the rest of the run, in this process and (through Ray) its workers
    assert os.environ["HF_HUB_OFFLINE"] == "1" and constants.HF_HUB_OFFLINE is True
    assert hub.ray_env_vars() == {"HF_HUB_OFFLINE": "1"}


def test_a_hub_that_never_answers_is_given_up_quickly(point_hub, server, monkeypatch):
    monkeypatch.setattr(hub, "PROBE_TIMEOUT_S", 0.5)
    srv = server("hang")
    point_hub(srv.url)
    t0 = time.perf_counter()
    assert hub.hub_online() is False
    assert time.perf_counter() - t0 < 3.0
    assert hub.hub_online() is False and srv.count == 1


@pytest.mark.parametrize("mode", ["200", "404"])
def test_a_reachable_hub_keeps_the_process_online(point_hub, server, mode):
    srv = server(mode)
    point_hub(srv.url)
    assert hub.hub_online() and hub.hub_online()
    assert srv.count == 1 and "HF_HUB_OFFLINE" not in os.environ and hub.ray_env_vars() == {}
    assert weights.require_weights("timm:test_resnet") is None  # not cached: the loader downloads it


def test_an_explicit_setting_is_obeyed_without_a_probe(point_hub, server, monkeypatch):
    srv = server("200")
    point_hub(srv.url)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.hub_online() is False
    with pytest.raises(hub.WeightsUnavailableError, match="HF_HUB_OFFLINE=1 is set"):
        weights.require_weights("timm:test_resnet")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert hub.hub_online() is True
    assert srv.count == 0


def _put_in_hub_cache(cache: Path, repo: str, filename: str, sd: dict) -> Path:
    """The layout huggingface_hub reads: models--ORG--NAME/snapshots/<rev>/FILE + refs/main."""
    from safetensors.torch import save_file

    rev = "0123456789abcdef0123456789abcdef01234567"
    root = cache / ("models--" + repo.replace("/", "--"))
    (root / "snapshots" / rev).mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(rev)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(root / "snapshots" / rev / filename))
    return root / "snapshots" / rev / filename


def test_cached_hub_weights_still_load_offline(point_hub, server):
    import timm

    from pipelines.models.classifiers import load_classifier

    srv = server("close")
    cache = point_hub(srv.url)
    torch.manual_seed(123)
    sd = timm.create_model("test_resnet").state_dict()
    path = _put_in_hub_cache(cache, TIMM_REPO, "model.safetensors", sd)
    assert weights.require_weights("timm:test_resnet") == str(path)
    clf = load_classifier("timm:test_resnet")
    assert torch.equal(clf.head_weight, sd["fc.weight"])  # the cached file, not a fresh init
    assert srv.count == 1 and hub.hub_online() is False


def test_weight_sources_follow_the_loaders():
    from pipelines.models.spec import parse_model_spec

    def src(s):
        return weights.weight_sources(parse_model_spec(s))

    assert src("timm:resnet50.a1_in1k") == [
        hub.HubWeights("timm/resnet50.a1_in1k", ("model.safetensors", "pytorch_model.bin"))]
    assert src("openclip:ViT-B-32@openai") == [
        hub.HubWeights("timm/vit_base_patch32_clip_224.openai",
                       ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"))]
    (tv,) = src("torchvision:resnet18")
    assert tv.url.startswith("https://download.pytorch.org/") and tv.cache_path == os.path.join(
        torch.hub.get_dir(), "checkpoints", os.path.basename(tv.url))
    for s in ("timm:test_resnet@random", "lite0", "openclip:tiny@random", "timm:resnet50@/x/ck.pt"):
        assert src(s) == []


def test_torchvision_weights_fail_fast_or_load_from_torch_hub_cache(monkeypatch, tmp_path):
    import torchvision
    import torchvision.models._api as tv_api

    from pipelines.models.classifiers import load_classifier

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torch-hub"))
    hub.forget()
    probes = []

    def refused(url):
        probes.append(url)
        raise ConnectionRefusedError(111, "Connection refused")

    def no_download(*a, **k):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(hub, "_probe_url", refused)
    real_download = tv_api.load_state_dict_from_url
    monkeypatch.setattr(tv_api, "load_state_dict_from_url", no_download)
    try:
        for _ in range(2):
            with pytest.raises(hub.WeightsUnavailableError) as e:
                load_classifier("torchvision:mobilenet_v3_small")
            _assert_names_the_ways(str(e.value), "torchvision:mobilenet_v3_small", "torchvision:mobilenet_v3_small")
            assert "https://download.pytorch.org cannot be reached (ConnectionRefusedError" in str(e.value)
        assert len(probes) == 1  # once per host per process
        # cached in torch.hub's checkpoints dir: loads from there, without a probe or a download
        monkeypatch.setattr(tv_api, "load_state_dict_from_url", real_download)
        hub.forget()
        url = torchvision.models.get_model_weights("mobilenet_v3_small").DEFAULT.url
        (tmp_path / "torch-hub" / "checkpoints").mkdir(parents=True)
        torch.manual_seed(7)
        sd = torchvision.models.mobilenet_v3_small().state_dict()
        torch.save(sd, tmp_path / "torch-hub" / "checkpoints" / os.path.basename(url))
        clf = load_classifier("torchvision:mobilenet_v3_small")
        assert torch.equal(clf.head_weight, sd["classifier.3.weight"]) and len(probes) == 1
    finally:
        hub.forget()


def _inputs(tmp: Path) -> dict:
    """Just enough input for every command to reach its model loading."""
    import yaml
    from PIL import Image

    (tmp / "shards").mkdir()
    (tmp / "shards" / "shard-000000.tar").write_bytes(b"")  # never read: the model fails first
    Image.new("RGB", (32, 32)).save(tmp / "img.jpg")
    (tmp / "t.safetensors").write_bytes(b"")
    (tmp / "ckpts").mkdir()
    import timm
    from safetensors.torch import save_file

    save_file(timm.create_model("test_resnet").state_dict(), str(tmp / "ckpts" / "a.safetensors"))
    cfg = {"version": 1, "name": "offline",
           "checkpoints": {"source": str(tmp / "ckpts"), "arch": "timm:test_resnet"},
           "translator": {"refit": {"clip": "openclip:RN50@openai", "shards": str(tmp / "shards" / "*.tar")}},
           "audit": {"shards": str(tmp / "shards" / "*.tar")}, "output": {"dir": str(tmp / "out")}}
    (tmp / "nightly.yaml").write_text(yaml.safe_dump(cfg))
    return {"shards": str(tmp / "shards" / "*.tar"), "img": str(tmp / "img.jpg"), "tr": str(tmp / "t.safetensors"),
            "out": str(tmp / "out"), "cfg": str(tmp / "nightly.yaml")}


COMMANDS = {
    "audit": ("timm:test_resnet", "audit --model timm:test_resnet --translator {tr} --shards {shards} --out {out}"),
    "fit-translator": ("timm:test_resnet", "fit-translator --model timm:test_resnet --clip openclip:tiny@random "
                                           "--shards {shards} --out {out}/t.safetensors"),
    "explain": ("timm:test_resnet", "explain {img} --model timm:test_resnet --translator {tr}"),
    "steer": ("timm:test_resnet", "steer --model timm:test_resnet --translator {tr} --shards {shards} --class 0 "
                                  "--prompt jellyfish --is-deg 40 --out {out}"),
    "validate": ("timm:test_resnet", "validate --model timm:test_resnet --shards {shards} --out {out}"),
    "index": ("openclip:RN50@openai", "index --clip openclip:RN50@openai --shards {shards} --out {out}"),
    "embed-text": ("openclip:RN50@openai", "embed-text --clip openclip:RN50@openai --classes imagenet "
                                           "--out {out}/t.parquet"),
    "nightly": ("openclip:RN50@openai", "nightly --config {cfg}"),
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_fails_fast_with_exit_2_before_ray(command, point_hub, tmp_path, monkeypatch, capsys):
    import pipelines.stages.ray_session

    def no_ray(*a, **k):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(pipelines.stages.ray_session, "ensure_ray", no_ray)
    point_hub(closed_port_url())
    model, args = COMMANDS[command]
    argv = args.format(**_inputs(tmp_path)).split()
    assert sing(["-q", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"sing {command}: error: "), err
    arch = model.rsplit("@", 1)[0] if model.startswith("openclip:") else model
    _assert_names_the_ways(err[0], model, arch)
    assert "Connection refused" in err[0] or "ConnectError" in err[0]


def test_demo_knows_it_is_offline_at_once(point_hub, server):
    import open_clip  # noqa: F401 - imported up front: the time measured is the decision's
    import timm  # noqa: F401

    from pipelines.jobs.demo import OFFLINE_MODELS, pick_models

    srv = server("close")
    point_hub(srv.url)
    t0 = time.perf_counter()
    assert pick_models(offline=False) == (*OFFLINE_MODELS, False)
    assert time.perf_counter() - t0 < 10 and srv.count == 1


def test_ray_workers_get_the_offline_decision(monkeypatch):
    import json

    import ray

    import pipelines.stages.ray_session as rs

    seen = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: seen.append(kw))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rs.ensure_ray()
    assert seen[-1]["runtime_env"] == {"env_vars": {"HF_HUB_OFFLINE": "1"}}
    # a submitted job that sets the variable itself keeps it (Ray refuses a conflicting one)
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": {"env_vars": {"HF_HUB_OFFLINE": "0"}}}))
    rs.ensure_ray()
    assert "runtime_env" not in seen[-1]
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR")
    monkeypatch.delenv("HF_HUB_OFFLINE")
    hub.forget()
    rs.ensure_ray()  # online (or undecided): nothing to pass
    assert "runtime_env" not in seen[-1]


def test_a_fresh_process_without_network_fails_fast_with_one_probe(server, tmp_path):
    """The issue's case end to end: no variable set, HF_ENDPOINT read at import, the demo's
    real model strings, a new process."""
    srv = server("close")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", *PROXY_VARS)}
    env.update(HF_ENDPOINT=srv.url, HF_HOME=str(tmp_path / "hf"), TORCH_HOME=str(tmp_path / "torch"))
    (tmp_path / "s.tar").write_bytes(b"")
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "pipelines.cli", "-q", "fit-translator",
                        "--model", "timm:resnet50.a1_in1k", "--clip", "openclip:ViT-B-32@openai",
                        "--shards", str(tmp_path / "s.tar"), "--out", str(tmp_path / "t.safetensors")],
                       env=env, capture_output=True, text=True, timeout=120)
    took = time.perf_counter() - t0
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Retrying" not in r.stderr, r.stderr
    _assert_names_the_ways(lines[0], "timm:resnet50.a1_in1k", "timm:resnet50")
    assert srv.count == 1
    assert took < 60, took  # imports included; the retry storm alone took ~45 s
