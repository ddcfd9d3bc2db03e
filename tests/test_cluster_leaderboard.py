"""cluster/rayjob-leaderboard.yaml and cluster/leaderboard-weights.yaml, beyond what every
manifest gets (CRD schema, placement, deadlines, auth, network policy and `sing cluster
check`, in the other test_cluster_* files): the entrypoint keeps the `sing leaderboard`
command-line contract (test_cluster_manifests.test_sing_command_is_real checks it with the real
parser too), its actor pools fit the pods by sing's own placement rule, the
weights come from the pre-warmed claim with the hub offline, the download Job selects what
`--models 'timm:*'` selects and runs as written (offline, against a rehearsal hub cache),
and the README's sizing agrees with the manifests."""
from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipelines.jobs import node_types as nt
from pipelines.jobs.cluster_check import Group
from pipelines.stages.capacity import Node, actors_that_fit
from tests.test_cluster_manifests import CLUSTER, _k8s_objects, _one, _pod_specs, _qty, _ray_groups, _sing_commands
from tests.test_hub_cache_rehearsal import _place, _safetensors

ROOT = Path(__file__).resolve().parents[1]
JOB, WARM, CLAIM = "sing-leaderboard-timm", "sing-warm-zoo", "sing-hf-zoo"
FIT_PER_CLASS = 100  # the manifest's fit100 shards (cluster/README.md, "Recipe: the leaderboard")
# the stream options every shard job takes, as the contract names them
CONTRACT_STREAM = ("--batch-size", "--num-actors", "--device", "--actors-per-gpu", "--actor-threads", "--precision",
                   "--stall-timeout", "--max-attempts", "--resource-wait", "--decode")


def contract_parser() -> argparse.ArgumentParser:
    """`sing leaderboard` as its contract states it: its own flags, and the stream options
    exactly as the real shard jobs declare them (types, choices)."""
    from pipelines.options import DecodeOptions, PrecisionOptions, StreamOptions, add_arguments

    real = argparse.ArgumentParser()
    for cls in (StreamOptions, PrecisionOptions, DecodeOptions):
        add_arguments(real, cls)
    p = argparse.ArgumentParser(prog="sing leaderboard", exit_on_error=False)
    p.add_argument("--models", action="append", required=True)
    p.add_argument("--clip", required=True)
    p.add_argument("--fit-shards", nargs="+", required=True)
    p.add_argument("--eval-shards", nargs="+", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--concepts")
    p.add_argument("--class-text")
    for flag in ("--models-per-pass", "--bootstrap-resamples"):
        p.add_argument(flag, type=int)
    by_flag = {a.option_strings[0]: a for a in real._actions if a.option_strings}
    for flag in CONTRACT_STREAM:
        a = by_flag[flag]
        p.add_argument(flag, dest=a.dest, type=a.type, choices=a.choices, default=None)
    return p


def _entrypoint() -> list[str]:
    return shlex.split(_one("RayJob", JOB)["spec"]["entrypoint"])


def _brace_count(url: str) -> int:
    lo, hi = re.search(r"\{(\d+)\.\.(\d+)\}", url).groups()
    return int(hi) - int(lo) + 1


def test_contract_parser_is_strict():
    """The contract check can fail: an unknown flag, a bad choice, a missing required flag."""
    p = contract_parser()
    base = ["--models", "paper", "--clip", "c", "--fit-shards", "a", "--eval-shards", "b", "--out", "o"]
    assert p.parse_args(base + ["--decode", "host"]).decode == "host"
    for extra in (["--model", "x"], ["--decode", "gpu"], ["--precision", "fp8"], ["--batch-size", "many"]):
        with pytest.raises((argparse.ArgumentError, SystemExit)):
            p.parse_args(base + extra)
    with pytest.raises((argparse.ArgumentError, SystemExit)):
        p.parse_args(base[:-2])


@pytest.mark.parametrize("where,argv", [pytest.param(w, a, id=w) for w, a in _sing_commands()
                                        if a[0] == "leaderboard"])
def test_leaderboard_commands_keep_the_contract(where, argv):
    ns = contract_parser().parse_args(argv[1:])
    assert ns.clip == "openclip:ViT-L-14@openai"  # the CLIP the translators are fitted into (issue 23)
    # the fit shards: FIT_PER_CLASS images of each of the 1000 classes, 1000 images a shard
    (fit,) = ns.fit_shards
    assert _brace_count(fit) == FIT_PER_CLASS, fit
    assert ns.eval_shards == ["s3://your-bucket/imagenet/val/shard-{000000..000049}.tar"]  # the 50,000 val images
    assert re.match(r"(s3|gs)://", ns.out), "workers write their own files: a bucket, not the head's disk"
    assert ns.precision in (None, "fp32"), "bf16 fails the precision budget (README.md, Precision)"
    assert ns.device == "cuda" and ns.decode == "host"


def test_the_leaderboard_is_the_rayjob_documented():
    assert len([a for _, a in _sing_commands() if a[0] == "leaderboard"]) == 1, \
        "cluster/README.md shows a `sing leaderboard` command other than the RayJob's"
    argv = _entrypoint()
    assert argv[:2] == ["sing", "leaderboard"] and contract_parser().parse_args(argv[2:]).models == ["timm:*"]


def _cluster_nodes(spec: dict) -> list[Node]:
    """The Ray nodes the RayJob starts, with the resources Ray sees (pod CPUs, GPUs; the
    head's num-cpus)."""
    nodes = []
    for name, n, params, pod in _ray_groups(spec):
        (c,) = pod["containers"]
        lim = c["resources"]["limits"]
        cpus = float(params["num-cpus"]) if "num-cpus" in params else _qty(lim["cpu"])
        nodes += [Node(f"{name}-{i}", cpus, float(lim.get("nvidia.com/gpu", 0))) for i in range(n)]
    return nodes


def test_actor_pools_fit_the_pods():
    """Every model of a pass gets --num-actors actors of 1 CPU and 1/(actors-per-gpu x K) GPU
    (pipelines.jobs.spine.ActorPlan); all K pools must fit at once, by the placement rule a
    run checks before it starts (pipelines.stages.capacity), or the run waits and fails."""
    spec = _one("RayJob", JOB)["spec"]
    ns = contract_parser().parse_args(_entrypoint()[2:])
    nodes = _cluster_nodes(spec)
    gpus = sum(n.gpus for n in nodes)
    assert gpus == 8 and ns.num_actors == gpus * ns.actors_per_gpu
    k = ns.models_per_pass
    share = min(1.0, gpus / ns.num_actors) / k
    assert actors_that_fit(nodes, 1.0, share) >= ns.num_actors * k
    # the bound the README states: K x actors-per-gpu <= the 11 CPUs of a GPU pod
    gpu_pod = next(n for n in nodes if n.gpus)
    assert k * ns.actors_per_gpu <= gpu_pod.cpus
    over = int(gpu_pod.cpus) // ns.actors_per_gpu + 1
    assert actors_that_fit(nodes, 1.0, min(1.0, gpus / ns.num_actors) / over) < ns.num_actors * over


def _env(c: dict) -> dict:
    return {e["name"]: e.get("value") for e in c.get("env", [])}


def _claim_at(pod: dict, path: str) -> str | None:
    vols = {v["name"]: v for v in pod.get("volumes", [])}
    for c in pod["containers"]:
        for m in c.get("volumeMounts", []):
            if m["mountPath"] == path and "persistentVolumeClaim" in vols[m["name"]]:
                return vols[m["name"]]["persistentVolumeClaim"]["claimName"]
    return None


def _warm_pod() -> dict:
    return _one("Job", WARM)["spec"]["template"]["spec"]


def test_weights_come_from_the_prewarmed_claim_with_the_hub_offline():
    spec = _one("RayJob", JOB)["spec"]
    for name, pod in _pod_specs(spec):
        if name == "submitter":
            continue
        (c,) = pod["containers"]
        env = _env(c)
        assert env.get("HF_HUB_OFFLINE") == "1", name  # a missing tag is a row, not a download on the GPUs
        assert _claim_at(pod, env["HF_HOME"]) == CLAIM, name
        assert env["TORCH_HOME"].startswith(env["HF_HOME"] + "/"), name  # torch hub URL weights on the same claim
    (w,) = _warm_pod()["containers"]
    env = _env(w)
    assert _claim_at(_warm_pod(), env["HF_HOME"]) == CLAIM and env["TORCH_HOME"].startswith(env["HF_HOME"] + "/")
    assert "HF_HUB_OFFLINE" not in env  # the one pod that downloads
    # what it downloads is what the RayJob loads
    ns = contract_parser().parse_args(_entrypoint()[2:])
    assert [f"timm:{env['SING_ZOO_PATTERN']}"] == ns.models and env["SING_ZOO_CLIP"] == ns.clip
    claim = _one("PersistentVolumeClaim", CLAIM)["spec"]
    assert claim["accessModes"] == ["ReadWriteMany"] and claim.get("storageClassName")


def test_the_claim_holds_the_zoo_the_readme_counts():
    readme = (CLUSTER / "README.md").read_text()
    gb = float(re.search(r"\*\*(\d+) GB \((\d+) GiB\) as float32 files\*\*", readme).group(1))
    size = _qty(_one("PersistentVolumeClaim", CLAIM)["spec"]["resources"]["requests"]["storage"])
    assert size >= 1.25 * gb * 1e9, (size, gb)
    assert f"storage: {_one('PersistentVolumeClaim', CLAIM)['spec']['resources']['requests']['storage']}" in \
        (CLUSTER / "leaderboard-weights.yaml").read_text()


def test_the_zoo_is_the_one_the_readme_and_manifests_count():
    """1,321 tags: timm 1.0.31's pretrained tags with a 1000-class head (the rule of `timm:*`)."""
    import timm
    from timm.models import get_pretrained_cfg

    n = sum(getattr(get_pretrained_cfg(t), "num_classes", None) == 1000 for t in timm.list_pretrained())
    words = f"{n:,}"
    for f in ("README.md", "rayjob-leaderboard.yaml", "leaderboard-weights.yaml"):
        text = (CLUSTER / f).read_text()
        counts = re.findall(r"\b(\d,\d{3})(?: (?:timm |pretrained )?tags\b| in timm\b)", text)
        assert counts and set(counts) == {words}, (f, n, counts)


def test_warm_job_runs_on_cpu_nodes_as_a_restricted_pod():
    pod, job = _warm_pod(), _one("Job", WARM)
    group = Group("", "", 1, {}, pod)
    for node in nt.NODE_TYPES.values():
        for gfd in (False, True):
            assert group.admits(node.labels(gfd)) == (node.gpus == 0), (node.name, gfd)
    assert not pod.get("tolerations")
    sc = pod["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] != 0 and sc["seccompProfile"] == {"type": "RuntimeDefault"}
    (c,) = pod["containers"]
    assert c["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
    req = c["resources"]["requests"]
    assert req == c["resources"]["limits"] and "nvidia.com/gpu" not in req
    for name in ("m6i.4xlarge", "n2-standard-16", "c6i.16xlarge", "n2-standard-64"):  # fits any CPU node, default disk
        node = nt.NODE_TYPES[name]
        cpu, mem = nt.for_pods(node)
        assert _qty(req["cpu"]) <= cpu and _qty(req["memory"]) / 2 ** 30 <= mem, name
        assert _qty(req["ephemeral-storage"]) / 2 ** 30 <= nt.ephemeral_gib(node), name
    assert c["image"] == _one("RayJob", JOB)["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"][
        "containers"][0]["image"]
    assert pod["restartPolicy"] == "Never" and job["spec"]["backoffLimit"] >= 1 and job["spec"]["activeDeadlineSeconds"]
    # not one of the Ray pods the NetworkPolicy lets in among themselves
    (policy,) = [d for _, d in _k8s_objects() if d["kind"] == "NetworkPolicy"]
    ray = policy["spec"]["podSelector"]["matchExpressions"][0]["values"]
    assert job["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] not in ray


def test_deadlines_follow_the_readme_estimate():
    """activeDeadlineSeconds covers the README's 8 x H100 estimate for the manifest's fit size
    with room (KubeRay does not retry an attempt that ran out of time); preRunning stays the
    20-minute fence of every RayJob."""
    spec = _one("RayJob", JOB)["spec"]
    per_class = FIT_PER_CLASS
    readme = (CLUSTER / "README.md").read_text()
    row = re.search(rf"^\| {per_class} \| fp32 \(default\) \|.*\| (\d+)-(\d+) h \|$", readme, flags=re.M)
    assert row, f"cluster/README.md has no fp32 sizing row for {per_class} fit images per class"
    assert spec["activeDeadlineSeconds"] >= 2 * int(row.group(2)) * 3600, (spec["activeDeadlineSeconds"], row.group(0))
    assert spec["preRunningDeadlineSeconds"] == 1200 and spec["backoffLimit"] >= 1


# ------------------------------------------------------------------------- the download Job, run

def _warm_script() -> str:
    (c,) = _warm_pod()["containers"]
    assert c["command"] == ["python", "-c"]
    (script,) = c["args"]
    return script


def _run_warm(cache: Path, tmp: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp / "hf_home"),
           "TORCH_HOME": str(tmp / "torch"), "SING_ZOO_PATTERN": "test_vit*",
           "SING_ZOO_CLIP": "openclip:ViT-B-32@openai", "SING_ZOO_THREADS": "2"}
    return subprocess.run([sys.executable, "-c", _warm_script()], env=env, capture_output=True, text=True, timeout=600,
                          cwd=ROOT)


def test_warm_job_script_offline(tmp_path):
    """The Job's script as written, against a hub cache holding random weights in exactly the
    files timm and open_clip look up: it selects the 1000-class tags the pattern matches,
    names the one whose weights are missing (exit 1), and succeeds once it is there."""
    import open_clip
    import timm

    cache = tmp_path / "hub"
    tags = sorted(timm.list_pretrained("test_vit*"))
    assert len(tags) == 3
    torch.manual_seed(0)

    def place(tag):
        _place(cache, f"timm/{tag}", {"model.safetensors": _safetensors(timm.create_model(tag).state_dict(), tmp_path)})

    for tag in tags[:2]:
        place(tag)
    clip = open_clip.create_model("ViT-B-32", pretrained=None)
    _place(cache, "timm/vit_base_patch32_clip_224.openai",
           {"open_clip_model.safetensors": _safetensors(clip.state_dict(), tmp_path)})
    proc = _run_warm(cache, tmp_path)
    out = proc.stdout
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "3 timm tags with a 1000-class head match 'test_vit*'" in out and "openclip:ViT-B-32@openai: cached" in out
    assert f"FAILED {tags[2]}: " in out and f"2 of 3 tags cached; failed: {tags[2]}" in out, out
    place(tags[2])
    proc = _run_warm(cache, tmp_path)
    assert proc.returncode == 0 and "3 of 3 tags cached; failed: none" in proc.stdout, proc.stdout + proc.stderr[-3000:]
