"""cluster/ and the Dockerfile: every manifest parses, validates strictly against the
KubeRay release's own CRD schemas (tests/fixtures/kuberay) or a lighter core-object schema,
has the fields its controller needs, fits the node types it is sized for, runs the project
image as a non-root user, and every `sing ...` command it contains is one the real command
line accepts. The image: layer order, pins, ssh client. Static checks only: no cluster, no
Docker, a few seconds."""
from __future__ import annotations

import argparse
import copy
import fnmatch
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines.jobs import node_types as node_sizing
from tests import k8s_schema

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
YAML_FILES = sorted(p for p in CLUSTER.iterdir() if p.suffix in (".yaml", ".yml"))
LAUNCHER = CLUSTER / "ray-cluster-aws-gpu.yaml"
NIGHTLY_EXAMPLE = CLUSTER / "nightly.example.yaml"
AUDIT_JOB, FIT_JOB = "sing-audit-in1k-val", "sing-fit-rn50-vitl14"
DOCKERFILE = ROOT / "Dockerfile"
CONSTRAINTS = ROOT / "constraints.txt"
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
CRON = re.compile(r"^\S+( \S+){4}$")


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _k8s_objects() -> list[tuple[str, dict]]:
    return [(p.name, d) for p in YAML_FILES for d in _docs(p) if isinstance(d, dict) and "kind" in d]


def _one(kind: str, name: str | None = None) -> dict:
    found = [d for _, d in _k8s_objects() if d["kind"] == kind and name in (None, d["metadata"].get("name"))]
    assert len(found) == 1, f"expected one {kind} {name or ''} under cluster/, found {len(found)}"
    return found[0]


def _fallback_rayjob() -> dict:
    cms = [d for f, d in _k8s_objects() if d["kind"] == "ConfigMap" and f == "cronjob-nightly-fallback.yaml"]
    assert len(cms) == 1
    (text,) = cms[0]["data"].values()
    return yaml.safe_load(text)


def _rayjob_specs() -> list[tuple[str, dict]]:
    """Every RayJob spec in cluster/: RayJobs, the RayCronJob's template, the fallback's ConfigMap."""
    specs = [(f"{f}:{d['metadata']['name']}", d["spec"]) for f, d in _k8s_objects() if d["kind"] == "RayJob"]
    specs.append(("raycronjob-nightly.yaml:jobTemplate", _one("RayCronJob")["spec"]["jobTemplate"]))
    specs.append(("cronjob-nightly-fallback.yaml:ConfigMap", _fallback_rayjob()["spec"]))
    return specs


def _pod_specs(job_spec: dict) -> list[tuple[str, dict]]:
    rc = job_spec["rayClusterSpec"]
    pods = [("head", rc["headGroupSpec"]["template"]["spec"])]
    pods += [(g["groupName"], g["template"]["spec"]) for g in rc["workerGroupSpecs"]]
    if "submitterPodTemplate" in job_spec:
        pods.append(("submitter", job_spec["submitterPodTemplate"]["spec"]))
    return pods


def _repo(image: str) -> str:
    name, _, tag = image.rpartition(":")
    return name if name and "/" not in tag else image


def _launcher() -> dict:
    (cfg,) = _docs(LAUNCHER)
    return cfg


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, buf = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.lstrip().startswith("#"):
            continue
        buf += line.rstrip()
        if buf.endswith("\\"):
            buf = buf[:-1] + " "
            continue
        instr, _, args = buf.strip().partition(" ")
        out.append((instr.upper(), args.strip()))
        buf = ""
    return out


def _docker_env() -> dict[str, str]:
    env = {}
    for instr, args in _dockerfile():
        if instr == "ENV":
            for tok in shlex.split(args):
                k, _, v = tok.partition("=")
                env[k] = v
    return env


def _docker_arg(name: str) -> str:
    for instr, args in _dockerfile():
        if instr == "ARG" and args.startswith(name + "="):
            return args.split("=", 1)[1]
    raise AssertionError(f"Dockerfile has no ARG {name}=...")


# ------------------------------------------------------------------------- parsing

def test_every_yaml_parses():
    assert {p.name for p in YAML_FILES} >= {
        "ray-cluster-aws-gpu.yaml", "rayjob-audit.yaml", "raycronjob-nightly.yaml",
        "cronjob-nightly-fallback.yaml", "nightly.example.yaml", "k8s-common.yaml", "rayjob-fit-translator.yaml",
        "rayjob-leaderboard.yaml", "leaderboard-weights.yaml"}
    for p in YAML_FILES:
        docs = _docs(p)
        assert docs and all(isinstance(d, dict) for d in docs), p.name
    for f, d in _k8s_objects():
        meta = d.get("metadata", {})
        assert d.get("apiVersion") and (meta.get("name") or meta.get("generateName")), (f, d["kind"])


def test_readme_covers_every_manifest():
    text = (CLUSTER / "README.md").read_text()
    for p in YAML_FILES:
        assert p.name in text, f"cluster/README.md does not mention {p.name}"
    for needle in ("exit code", "3", "RayCronJob", "ActorPoolStrategy(min_size=n, max_size=n)",
                   "object-spilling-directory", "rerun the same command", "feature gate", "iam:PassRole",
                   "fit-translator", "GB uncompressed", "GB to pull", "fsGroupChangePolicy"):
        assert needle.lower() in text.lower(), needle


# ------------------------------------------------------------------------- launcher

def test_launcher_config_is_valid_for_ray():
    pytest.importorskip("ray")
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = _launcher()
    validate_config(cfg)
    validate_config(prepare_config(cfg))


def test_launcher_layout():
    cfg = _launcher()
    types = cfg["available_node_types"]
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"].get("CPU") == 0
    gpu = [n for n, t in types.items() if n != cfg["head_node_type"] and "gpu" in n]
    assert gpu, "no GPU worker node type"
    for name, t in types.items():
        if name != cfg["head_node_type"]:
            assert 0 <= t["min_workers"] <= t["max_workers"], name
    opts = " ".join(cfg["docker"]["run_options"])
    assert "RAY_USAGE_STATS_ENABLED=0" in opts
    # The image is no CUDA image: without NVIDIA_VISIBLE_DEVICES the NVIDIA runtime that Ray
    # adds on GPU hosts would give the container no GPU.
    assert "-e NVIDIA_VISIBLE_DEVICES=all" in opts
    for var in ("HF_HOME", "SING_CACHE"):
        path = re.search(rf"{var}=(\S+)", opts).group(1)
        assert re.search(rf"-v \S+:{re.escape(path)}(\s|$)", opts), f"{var} is not on a mounted volume"
    # Spilling through the stable `ray start` parameter on every node, onto a mounted directory.
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = " ".join(cfg[key])
        assert "object_spilling_config" not in start and "--system-config" not in start, key
        spill = re.search(r"--object-spilling-directory=(\S+)", start).group(1)
        assert re.search(rf"-v \S+:{re.escape(spill)}(\s|$)", opts), (key, spill)
    assert "--object-store-memory" in " ".join(cfg["head_start_ray_commands"])
    assert cfg["file_mounts"] == {} and not cfg["setup_commands"]


# ------------------------------------------------------------------------- KubeRay

def test_rayjob_audit():
    job = _one("RayJob", AUDIT_JOB)
    assert job["apiVersion"] == "ray.io/v1"
    spec = job["spec"]
    assert spec["entrypoint"].startswith("sing audit")
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    argv = shlex.split(spec["entrypoint"])
    assert "s3://" in argv[argv.index("--translator") + 1] and argv[argv.index("--out") + 1].startswith("s3://")
    # The actor pool starts at full size: --actors-per-gpu actors on each GPU of a fixed-size cluster.
    gpus = 0
    for g in spec["rayClusterSpec"]["workerGroupSpecs"]:
        assert g["replicas"] == g["minReplicas"] == g["maxReplicas"], g["groupName"]
        for c in g["template"]["spec"]["containers"]:
            gpus += g["replicas"] * int(c["resources"].get("limits", {}).get("nvidia.com/gpu", 0))
    from pipelines.stages.actor_pool import DEFAULT_ACTORS_PER_GPU

    per_gpu = int(argv[argv.index("--actors-per-gpu") + 1]) if "--actors-per-gpu" in argv else DEFAULT_ACTORS_PER_GPU
    assert gpus > 0 and int(argv[argv.index("--num-actors") + 1]) == gpus * per_gpu
    assert spec["rayClusterSpec"].get("enableInTreeAutoscaling") is False


@pytest.mark.parametrize("where,spec", [pytest.param(w, s, id=w) for w, s in _rayjob_specs()])
def test_ray_pods(where, spec):
    launcher_repo = _repo(_launcher()["docker"]["image"])
    assert spec["rayClusterSpec"]["rayVersion"] == _docker_arg("RAY_VERSION"), where
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0, where
    pods = _pod_specs(spec)
    gpu_groups = 0
    for name, pod in pods:
        sc = pod.get("securityContext", {})
        assert sc.get("runAsNonRoot") is True and sc.get("runAsUser", 0) != 0, (where, name)
        for c in pod["containers"]:
            assert _repo(c["image"]) == launcher_repo, (where, name, c["image"])
            assert c.get("securityContext", {}).get("allowPrivilegeEscalation") is False, (where, name)
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            assert env.get("RAY_USAGE_STATS_ENABLED") == "0", (where, name)
            if c["resources"].get("limits", {}).get("nvidia.com/gpu"):
                gpu_groups += 1
                assert int(c["resources"]["limits"]["nvidia.com/gpu"]) >= 1
            if "HF_HOME" in env:
                mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
                assert env["HF_HOME"] in mounts, (where, name, "HF_HOME not on a volume")
    assert gpu_groups >= 1, f"{where}: no worker group with nvidia.com/gpu limits"


_SUFFIX = {"Ki": 2 ** 10, "Mi": 2 ** 20, "Gi": 2 ** 30, "Ti": 2 ** 40, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
           "m": 1e-3, "": 1}


def _qty(v) -> float:
    """A Kubernetes quantity as a number: bytes, or cores for CPU."""
    m = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([A-Za-z]*)", str(v))
    assert m and m.group(2) in _SUFFIX, f"not a quantity: {v!r}"
    return float(m.group(1)) * _SUFFIX[m.group(2)]


def _ray_groups(spec: dict) -> list[tuple[str, int, dict, dict]]:
    """(group name, pods, rayStartParams, pod spec) for the head and every worker group."""
    rc = spec["rayClusterSpec"]
    out = [("head", 1, rc["headGroupSpec"].get("rayStartParams", {}), rc["headGroupSpec"]["template"]["spec"])]
    for g in rc["workerGroupSpecs"]:
        out.append((g["groupName"], g["replicas"], g.get("rayStartParams", {}), g["template"]["spec"]))
    return out


@pytest.mark.parametrize("where,spec", [pytest.param(w, s, id=w) for w, s in _rayjob_specs()])
def test_ray_pod_storage_and_spilling(where, spec):
    """Spilling through `object-spilling-directory` onto a disk emptyDir, SING_CACHE on a
    volume, every disk emptyDir inside the pod's ephemeral-storage request, the object store
    inside its memory-backed /dev/shm and that inside the memory limit, fsGroup without a
    recursive chown at every start, Guaranteed QoS."""
    for name, _, params, pod in _ray_groups(spec):
        ctx = (where, name)
        sc = pod.get("securityContext", {})
        if "fsGroup" in sc:
            assert sc.get("fsGroupChangePolicy") == "OnRootMismatch", ctx
        vols = {v["name"]: v for v in pod.get("volumes", [])}
        (c,) = pod["containers"]
        mounts = {m["mountPath"]: vols[m["name"]] for m in c.get("volumeMounts", [])}
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        assert not [k for k in env if k.startswith("RAY_object_spilling")], (ctx, "unstable spilling API")
        spill = mounts[params["object-spilling-directory"]]
        assert "emptyDir" in spill and spill["emptyDir"].get("medium") != "Memory", ctx
        assert _qty(spill["emptyDir"]["sizeLimit"]) >= 2 * _qty(params["object-store-memory"]), ctx
        assert env.get("SING_CACHE") in mounts, (ctx, "SING_CACHE is not on a volume")
        res = c["resources"]
        assert res["requests"] == res["limits"], (ctx, "requests != limits: not Guaranteed QoS")
        disk = [v["emptyDir"] for v in vols.values() if "emptyDir" in v and v["emptyDir"].get("medium") != "Memory"]
        assert all("sizeLimit" in d for d in disk), ctx
        assert _qty(res["requests"]["ephemeral-storage"]) >= sum(_qty(d["sizeLimit"]) for d in disk), ctx
        shm = mounts["/dev/shm"]["emptyDir"]
        assert shm.get("medium") == "Memory", ctx
        store, shm_size = _qty(params["object-store-memory"]), _qty(shm["sizeLimit"])
        assert store <= shm_size and shm_size + 4 * 2 ** 30 <= _qty(res["limits"]["memory"]), ctx


# ------------------------------------------------------------------------- KubeRay's schema

def _kuberay_docs() -> list[tuple[str, dict]]:
    docs = [(f"{f}:{d['metadata']['name']}", d) for f, d in _k8s_objects() if d["kind"] in k8s_schema.PLURAL]
    docs.append(("cronjob-nightly-fallback.yaml:ConfigMap", _fallback_rayjob()))
    return docs


def _core_docs() -> list[tuple[str, dict]]:
    return [(f"{f}:{d['kind']}:{d['metadata'].get('name')}", d) for f, d in _k8s_objects()
            if d["kind"] not in k8s_schema.PLURAL]


def test_kuberay_fixture_provenance():
    """The schemas are KubeRay's, of the release cluster/README.md names, unmodified."""
    src, release = k8s_schema.source(), k8s_schema.kuberay_release()
    assert src["repository"] == "https://github.com/ray-project/kuberay" and src["tag"] == release
    assert re.fullmatch(r"[0-9a-f]{40}", src["commit"]) and src["license"].startswith("Apache-2.0")
    assert "Apache License" in (k8s_schema.FIXTURES / release / "LICENSE").read_text()
    kinds = set()
    for name, f in src["files"].items():
        assert f["path"].startswith("ray-operator/config/crd/bases/") and re.fullmatch(r"[0-9a-f]{40}", f["git_blob"])
        schema = k8s_schema.crd_schema(name.split(".")[0])  # checks the sha256
        assert {"apiVersion", "kind", "metadata", "spec"} <= set(schema["properties"])
        kinds.add(f["kind"])
    assert kinds == set(k8s_schema.PLURAL)
    readme = (CLUSTER / "README.md").read_text()
    assert set(re.findall(r"validated against KubeRay (v\d+\.\d+\.\d+)", readme)) == {release}
    for text in (readme, (CLUSTER / "raycronjob-nightly.yaml").read_text()):
        assert set(re.findall(r"kuberay-operator --version (\S+)", text)) == {release.lstrip("v")}


def test_kuberay_documents_found():
    kinds = [d["kind"] for _, d in _kuberay_docs()]
    # the audit, the fit, the leaderboard, the fallback's embedded RayJob; the nightly RayCronJob
    assert kinds.count("RayJob") == 4 and kinds.count("RayCronJob") == 1, kinds


@pytest.mark.parametrize("where,doc", [pytest.param(w, d, id=w) for w, d in _kuberay_docs()])
def test_manifest_matches_kuberay_schema(where, doc):
    errs = k8s_schema.errors(doc)
    assert not errs, f"{where} does not validate against KubeRay {k8s_schema.kuberay_release()}:\n" + "\n".join(errs)


@pytest.mark.parametrize("where,doc", [pytest.param(w, d, id=w) for w, d in _core_docs()])
def test_core_object_matches_schema(where, doc):
    errs = k8s_schema.errors(doc)
    assert not errs, f"{where}:\n" + "\n".join(errs)


def _mutations():
    """(what, kind, change): each change puts a field where the schema has no place for it."""
    gpu = lambda d: d["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]  # noqa: E731
    ctr = lambda d: gpu(d)["template"]["spec"]["containers"][0]  # noqa: E731
    return [
        ("replicas in headGroupSpec", "RayJob",
         lambda d: d["spec"]["rayClusterSpec"]["headGroupSpec"].__setitem__("replicas", 1)),
        ("typo shutdownAfterJobFinish", "RayJob", lambda d: d["spec"].__setitem__("shutdownAfterJobFinish", True)),
        ("typo in metadata (lables)", "RayJob", lambda d: d["metadata"].__setitem__("lables", {"a": "b"})),
        ("env on the pod, not the container", "RayJob",
         lambda d: gpu(d)["template"]["spec"].__setitem__("env", [{"name": "A", "value": "1"}])),
        ("typo in a container (resource)", "RayJob", lambda d: ctr(d).__setitem__("resource", {})),
        ("rayStartParams value not a string", "RayJob",
         lambda d: d["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"].__setitem__("num-cpus", 0)),
        ("duplicate env name", "RayJob", lambda d: ctr(d)["env"].append(dict(ctr(d)["env"][0]))),
        ("unknown top-level field", "RayJob", lambda d: d.__setitem__("specs", {})),
        ("schedule inside jobTemplate", "RayCronJob", lambda d: d["spec"]["jobTemplate"].__setitem__("schedule", "0 2 * * *")),
        ("typo timezone", "RayCronJob", lambda d: d["spec"].__setitem__("timezone", "Etc/UTC")),
    ]


@pytest.mark.parametrize("what,kind,change", [pytest.param(*m, id=m[0]) for m in _mutations()])
def test_schema_validation_is_strict(what, kind, change):
    doc = copy.deepcopy(_one(kind, AUDIT_JOB if kind == "RayJob" else None))
    assert k8s_schema.errors(doc) == []
    change(doc)
    assert k8s_schema.errors(doc), f"a manifest with {what} passed validation"


def test_schema_validation_accepts_what_kubernetes_accepts():
    """Strictness does not reject valid spellings: int-or-string quantities, free label keys."""
    doc = copy.deepcopy(_one("RayJob", AUDIT_JOB))
    c = doc["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    c["resources"]["limits"]["cpu"] = 11  # an integer quantity
    c["resources"]["requests"]["memory"] = "77309411328"
    doc["metadata"]["labels"]["example.com/any-key"] = "v1.2"
    c["ports"] = [{"containerPort": 8080, "name": "a"}, {"containerPort": 8080, "protocol": "UDP", "name": "b"}]
    assert k8s_schema.errors(doc) == []
    c["ports"].append({"containerPort": 8080, "protocol": "TCP", "name": "c"})  # TCP is the key's default
    assert k8s_schema.errors(doc)


def test_core_schema_is_strict():
    pvc = copy.deepcopy(next(d for _, d in _core_docs() if d["kind"] == "PersistentVolumeClaim"))
    pvc["spec"]["storageClass"] = "efs-sc"
    assert k8s_schema.errors(pvc)
    cron = copy.deepcopy(next(d for _, d in _core_docs() if d["kind"] == "CronJob"))
    cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["comand"] = ["kubectl"]
    assert k8s_schema.errors(cron)


# ------------------------------------------------------------------------- sizing and storage

# Node types each group is sized for, and how many of its pods share one node.
SIZED_FOR = {
    "gpu": ("p4d.24xlarge", "a2-highgpu-8g", "p5.48xlarge"),
    "cpu-decode": ("c6i.16xlarge", "n2-standard-64"),
    "head": ("m6i.4xlarge", "n2-standard-16"),
}
PODS_PER_NODE = {"cpu-decode": 2, "head": 1}


def _pods_per_node(group: str, node: node_sizing.NodeType, gpus_per_pod: int) -> int:
    return node.gpus // gpus_per_pod if gpus_per_pod else PODS_PER_NODE[group]


@pytest.mark.parametrize("where,spec", [pytest.param(w, s, id=w) for w, s in _rayjob_specs()])
def test_pod_sizes_from_allocatable(where, spec):
    """Every group's pods fit the node types they are sized for, as many per node as
    cluster/README.md says, after kubelet reserve, eviction threshold and DaemonSets; and the
    GPU and decode pods take their whole share of the tightest node type (CPUs rounded down
    to a core, memory to 8 GiB), so the sizes follow from allocatable resources."""
    for name, _, _, pod in _ray_groups(spec):
        (c,) = pod["containers"]
        req = c["resources"]["requests"]
        cpu, mem, gpus = _qty(req["cpu"]), _qty(req["memory"]) / 2 ** 30, int(req.get("nvidia.com/gpu", 0))
        slack = []
        for node_name in SIZED_FOR[name]:
            node = node_sizing.NODE_TYPES[node_name]
            n = _pods_per_node(name, node, gpus)
            free_cpu, free_mem = node_sizing.for_pods(node)
            assert n * cpu <= free_cpu and n * mem <= free_mem, (where, name, node_name, n, cpu, mem)
            slack.append((free_cpu / n - cpu, free_mem / n - mem))
        if name != "head":
            assert min(s[0] for s in slack) < 1 and min(s[1] for s in slack) < 8, (where, name, slack)


def test_readme_sizing_arithmetic():
    """cluster/README.md shows the allocatable figures the sizing test computes."""
    readme = (CLUSTER / "README.md").read_text()
    for names in SIZED_FOR.values():
        for name in names:
            node = node_sizing.NODE_TYPES[name]
            cpu, mem = node_sizing.allocatable(node)
            row = next((ln for ln in readme.splitlines() if ln.startswith(f"| {name} |")), None)
            assert row, f"cluster/README.md has no sizing row for {name}"
            assert f"{cpu:.2f}" in row and f"{mem:.1f}" in row, (name, f"{cpu:.2f}", f"{mem:.1f}", row)
    spec = _one("RayJob", AUDIT_JOB)["spec"]
    for name, _, _, pod in _ray_groups(spec):
        req = pod["containers"][0]["resources"]["requests"]
        assert f"{req['cpu']} CPU / {req['memory']}" in readme, (name, req)


def test_rwx_claims_name_their_storage_class():
    readme = (CLUSTER / "README.md").read_text()
    for _, d in _core_docs():
        if d["kind"] == "PersistentVolumeClaim" and "ReadWriteMany" in d["spec"]["accessModes"]:
            sc = d["spec"].get("storageClassName")
            assert sc, f"{d['metadata']['name']}: no storageClassName, stays Pending on a default RWO class"
            assert sc in readme


def test_fit_recipe():
    spec = _one("RayJob", FIT_JOB)["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["sing", "fit-translator"] and argv[argv.index("--device") + 1] == "cuda"
    assert argv[argv.index("--clip") + 1] == "openclip:ViT-L-14@openai"
    # the whole train set: 1282 shards of ImageNet-1k
    assert argv[argv.index("--shards") + 1].endswith("shard-{000000..001281}.tar")
    assert re.match(r"(s3|gs)://", argv[argv.index("--out") + 1])
    assert 0 < spec["activeDeadlineSeconds"] <= 6 * 3600
    groups = spec["rayClusterSpec"]["workerGroupSpecs"]
    assert [g["groupName"] for g in groups] == ["gpu"]  # the fit decodes on the GPU pods' CPUs


def test_shared_objects_exist():
    """Service accounts, claims and config maps the Ray pods use are defined (or documented)."""
    defined = {(d["kind"], d["metadata"]["name"]) for _, d in _k8s_objects() if "name" in d["metadata"]}
    readme = (CLUSTER / "README.md").read_text()
    for where, spec in _rayjob_specs():
        for name, pod in _pod_specs(spec):
            assert ("ServiceAccount", pod["serviceAccountName"]) in defined, (where, name)
            for v in pod.get("volumes", []):
                if "persistentVolumeClaim" in v:
                    assert ("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"]) in defined
                if "configMap" in v:  # the nightly config: made from the user's copy of the example
                    cm = v["configMap"]["name"]
                    assert ("ConfigMap", cm) in defined or f"create configmap {cm}" in readme, cm


def _nightly_config_mount(spec: dict) -> str:
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["sing", "nightly"]
    config = argv[argv.index("--config") + 1]
    head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    cms = {v["name"] for v in head["volumes"] if "configMap" in v}
    mounts = [m for c in head["containers"] for m in c["volumeMounts"] if m["name"] in cms]
    assert any(config.startswith(m["mountPath"].rstrip("/") + "/") for m in mounts), config
    return config


def test_raycronjob_nightly():
    cj = _one("RayCronJob")
    assert cj["apiVersion"] == "ray.io/v1"
    assert CRON.match(cj["spec"]["schedule"])
    tmpl = cj["spec"]["jobTemplate"]
    assert "entrypoint" in tmpl and "rayClusterSpec" in tmpl and "metadata" not in tmpl
    _nightly_config_mount(tmpl)


def test_cronjob_fallback():
    objs = {(d["kind"], d["metadata"].get("name")): d for f, d in _k8s_objects() if f == "cronjob-nightly-fallback.yaml"}
    cron = next(d for (k, _), d in objs.items() if k == "CronJob")
    assert cron["apiVersion"] == "batch/v1" and CRON.match(cron["spec"]["schedule"])
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    sa = pod["serviceAccountName"]
    assert ("ServiceAccount", sa) in objs
    # RBAC: the launcher may create and read RayJobs, nothing else.
    binding = next(d for (k, _), d in objs.items() if k == "RoleBinding"
                   and any(s["kind"] == "ServiceAccount" and s["name"] == sa for s in d["subjects"]))
    role = objs[("Role", binding["roleRef"]["name"])]
    assert role["rules"] == [{"apiGroups": ["ray.io"], "resources": ["rayjobs"],
                              "verbs": ["create", "get", "list", "watch"]}]
    # kubectl create -f <RayJob from the ConfigMap>, with a generated name.
    (c,) = pod["containers"]
    cmd = c.get("command", []) + c.get("args", [])
    assert cmd[:3] == ["kubectl", "create", "-f"]
    mount = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    vols = {v["name"]: v for v in pod["volumes"]}
    (vol,) = [n for n in mount if cmd[3].startswith(mount[n].rstrip("/") + "/")]
    cm = objs[("ConfigMap", vols[vol]["configMap"]["name"])]
    assert cmd[3].rsplit("/", 1)[1] in cm["data"]
    rj = _fallback_rayjob()
    assert rj["apiVersion"] == "ray.io/v1" and rj["kind"] == "RayJob"
    assert rj["metadata"].get("generateName") and "name" not in rj["metadata"]
    # The same nightly RayJob as the RayCronJob's.
    assert rj["spec"] == _one("RayCronJob")["spec"]["jobTemplate"]
    _nightly_config_mount(rj["spec"])


# ------------------------------------------------------------------------- sing commands

def _subcommands() -> set[str]:
    from pipelines.cli import parser

    (sub,) = [a for a in parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return set(sub.choices) | {"query", "report", "bench-ops"}


PASSTHROUGH = {"query", "report", "bench-ops"}
# Subcommands a manifest here runs that another branch is writing: until they are on this
# branch the real parser cannot check them (none now).
PENDING: set[str] = set()
_SHELL_OPS = {"&&", "||", ";", "|", "&"}


def _sing_argvs(command: str) -> list[list[str]]:
    toks = shlex.split(command.replace("\\\n", " "), comments=True)
    out, i = [], 0
    while i < len(toks):
        # `sing` as a command word (not e.g. the namespace in `kubectl -n sing ...`)
        if toks[i] == "sing" and i + 1 < len(toks) and (i == 0 or toks[i - 1] in _SHELL_OPS | {"--"}):
            j = i + 1
            while j < len(toks) and toks[j] not in _SHELL_OPS:
                j += 1
            out.append(toks[i + 1:j])
            i = j
        else:
            i += 1
    return out


def _walk_strings(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _walk_strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk_strings(v)
    elif isinstance(obj, str):
        yield obj


def _sing_commands() -> list[tuple[str, list[str]]]:
    found = []
    for p in YAML_FILES:
        if p == NIGHTLY_EXAMPLE:
            continue
        for d in _docs(p):
            for s in _walk_strings(d):  # one-line commands (entrypoints, launcher commands)
                if "\n" not in s.strip() and re.search(r"(^|\s)sing\s+[a-z]", s):
                    found += [(p.name, a) for a in _sing_argvs(s)]
    for _, spec in _rayjob_specs():  # also the RayJob embedded as text in the fallback's ConfigMap
        found += [("embedded", a) for a in _sing_argvs(spec["entrypoint"])]
    readme = (CLUSTER / "README.md").read_text()
    for block in re.findall(r"```bash\n(.*?)```", readme, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if re.search(r"(^|\s)sing\s+[a-z]", line):
                found += [("README.md", a) for a in _sing_argvs(line)]
    unique = {}
    for where, argv in found:
        unique.setdefault(tuple(argv), where)
    return [(where, list(argv)) for argv, where in unique.items()]


def _command_params():
    params = []
    for where, argv in _sing_commands():
        params.append(pytest.param(argv, id=f"{where}:{argv[0]}"))
    return params


def test_commands_found():
    cmds = {a[0] for _, a in _sing_commands()}
    assert {"audit", "nightly"} <= cmds


@pytest.mark.parametrize("argv", _command_params())
def test_sing_command_is_real(argv):
    if argv[0] in PENDING and argv[0] not in _subcommands():
        pytest.skip(f"`sing {argv[0]}` is not on this branch yet (checked against its contract instead)")
    assert argv[0] in _subcommands(), f"`sing {argv[0]}` is not a subcommand"
    if argv[0] in PASSTHROUGH:
        from pipelines.cli import main

        with pytest.raises(SystemExit) as exc:  # argparse exits after printing the help
            rc = main([argv[0], "--help"])
            raise SystemExit(rc)
        assert exc.value.code in (0, None)
        return
    from pipelines.cli import parser

    try:
        ns = parser(argv[0]).parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"`sing {shlex.join(argv)}` is rejected by the real parser (exit {exc.code})")
    assert ns.command == argv[0]


# ------------------------------------------------------------------------- Dockerfile

def _copy_sources(args: str) -> list[str]:
    return [t for t in shlex.split(args) if not t.startswith("--")][:-1]


def test_dockerfile():
    instrs = _dockerfile()
    froms = [a for i, a in instrs if i == "FROM"]
    # No CUDA base: the torch / torchvision wheels bring their CUDA libraries (cluster/README.md).
    assert len(froms) == 1 and re.fullmatch(r"(docker\.io/(library/)?)?python:3\.11(\.\d+)?-slim(-\w+)?", froms[0]), froms
    users = [a for i, a in instrs if i == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    for i, a in instrs:
        if i in ("COPY", "ADD"):
            srcs = _copy_sources(a)
            assert not any(s.endswith(WEIGHT_SUFFIXES) for s in srcs), a
            assert "." not in srcs or (ROOT / ".dockerignore").exists(), a
    runs = " ".join(a for i, a in instrs if i == "RUN")
    assert re.search(r"pip install (\S+ )*\.(\s|\[|$)", runs), "the project is not pip-installed"
    # The Ray launcher's autoscaler (in the head container) sets workers up over ssh + rsync.
    apt = next(a for i, a in instrs if i == "RUN" and "apt-get install" in a).split()
    assert {"openssh-client", "rsync", "wget", "ca-certificates"} <= set(apt), apt
    env = _docker_env()
    assert env.get("RAY_USAGE_STATS_ENABLED") == "0"
    assert env.get("HOME", "/root") != "/root", "the Ray launcher needs the non-root user's HOME in ENV"
    assert "/usr/local/nvidia/lib64" in env.get("LD_LIBRARY_PATH", "").split(":"), "GKE mounts the driver there"
    assert "compute" in env.get("NVIDIA_DRIVER_CAPABILITIES", "") and "NVIDIA_VISIBLE_DEVICES" not in env
    volumes = [v for i, a in instrs if i == "VOLUME" for v in (yaml.safe_load(a) if a.startswith("[") else a.split())]
    for var in ("HF_HOME", "SING_CACHE"):
        assert any(env[var] == v or env[var].startswith(v.rstrip("/") + "/") for v in volumes), (var, volumes)
    assert not any(i == "HEALTHCHECK" for i, _ in instrs)
    assert all(a.replace(" ", "") == "[]" for i, a in instrs if i == "ENTRYPOINT")
    # Python matches the project's requires-python.
    assert "python3.11" in runs and ">=3.11,<3.12" in (ROOT / "pyproject.toml").read_text()


def test_dockerfile_installs_dependencies_before_the_source():
    """The multi-GB dependency layer depends on pyproject.toml + constraints.txt only; the
    source is copied after it and installed without dependencies, all with the pins."""
    instrs = _dockerfile()
    deps = next(k for k, (i, a) in enumerate(instrs) if i == "RUN" and "pip install -c constraints.txt -r" in a)
    before = [s for i, a in instrs[:deps] if i in ("COPY", "ADD") for s in _copy_sources(a)]
    assert sorted(before) == ["constraints.txt", "pyproject.toml"], before
    after = [s for i, a in instrs[deps:] if i in ("COPY", "ADD") for s in _copy_sources(a)]
    assert {"sing_ops", "pipelines", "queries"} <= set(after), after
    (project,) = [a for i, a in instrs[deps:] if i == "RUN" and re.search(r"pip install (\S+ )*\.(\s|$)", a)]
    assert "--no-deps" in project and "-c constraints.txt" in project and "pip check" in project
    assert all("-c constraints.txt" in a for i, a in instrs if i == "RUN" and "pip install" in a)
    assert not any("pip install --upgrade" in a or "pip install -U " in a for i, a in instrs if i == "RUN")


def test_dockerfile_requirements_step(tmp_path):
    """The Dockerfile's own one-liner lists the project's dependencies and its `cluster` and
    `hf` extras from pyproject.toml (run here, as the build runs it), all pinned by
    constraints.txt; the build imports transformers (the paper's DINOv2 runs in the cluster)."""
    run = next(a for i, a in _dockerfile() if i == "RUN" and "tomllib" in a)
    argv = shlex.split(run.split(">", 1)[0])
    assert argv[:2] == ["python", "-c"]
    out = subprocess.run([sys.executable, "-c", argv[2]], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    reqs = out.split("\n")[:-1]
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert reqs == project["dependencies"] + extras["cluster"] + extras["hf"]
    pins = _constraints()
    assert all(_req_name(r) in pins for r in reqs), [r for r in reqs if _req_name(r) not in pins]
    imports = next(a for i, a in _dockerfile() if i == "RUN" and "pip check" in a)
    assert {"ray.dashboard", "s3fs", "gcsfs", "boto3", "transformers"} <= set(re.findall(r"[\w.]+", imports))


def test_dockerfile_copy_sources_exist_and_are_not_ignored():
    patterns = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    assert not any(p.startswith("!") for p in patterns), "negations: extend this check"
    for i, a in _dockerfile():
        if i in ("COPY", "ADD"):
            for src in _copy_sources(a):
                assert (ROOT / src).exists(), src
                files = [ROOT / src] if (ROOT / src).is_file() else [f for f in (ROOT / src).rglob("*") if f.is_file()
                                                                     and "__pycache__" not in f.parts]
                assert files, src
                for f in files:
                    rel = f.relative_to(ROOT).as_posix()
                    parts = rel.split("/")
                    hit = [p for p in patterns for k in range(1, len(parts) + 1)
                           if fnmatch.fnmatch("/".join(parts[:k]), p)
                           or (p.startswith("**/") and fnmatch.fnmatch(parts[k - 1], p[3:]))]
                    assert not hit, f"{rel} is copied by the Dockerfile but excluded by .dockerignore {hit}"


# ------------------------------------------------------------------------- pins

def _req_name(req: str) -> str:
    return re.sub(r"[-_.]+", "-", re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req).group(1)).lower()


def _constraints() -> dict[str, str]:
    pins = {}
    for ln in CONSTRAINTS.read_text().splitlines():
        if ln.strip() and not ln.startswith("#"):
            m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s=;]+)", ln.strip())
            assert m, f"constraints.txt: not a name==version pin: {ln!r}"
            assert _req_name(m.group(1)) not in pins, f"constraints.txt pins {m.group(1)} twice"
            pins[_req_name(m.group(1))] = m.group(2)
    return pins


def test_constraints_pin_every_requirement():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    pins = _constraints()
    missing = [r for r in reqs if _req_name(r) != "sing" and _req_name(r) not in pins]
    assert not missing, f"constraints.txt does not pin {missing}: regenerate it (see its header)"
    for r in project["dependencies"]:  # exact pins in pyproject.toml (torch, torchvision) agree
        m = re.fullmatch(r"([A-Za-z0-9._-]+)==(\S+)", r)
        if m:
            assert pins[_req_name(m.group(1))] == m.group(2), r
    assert pins["ray"] == _docker_arg("RAY_VERSION")
    assert {"ray", "s3fs", "gcsfs", "boto3", "transformers", "jsonschema", "pytest"} <= set(pins)


def test_readme_setup_is_what_ci_and_the_image_run():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Set-up[^\n]*\n+```bash\n(.*?)```", readme, flags=re.S).group(1).strip()
    assert "\n" not in block and "pip install -c constraints.txt -e \".[test,cluster]\"" in block, block
    ci = [ln for ln in (ROOT / ".ci" / "run").read_text().splitlines() if "pip install" in ln]
    assert ci == [block], "`.ci/run` must install exactly as README.md's Set-up says"
    # ... which is every extra the image installs (the test extra brings demo and hf)
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    installed = set(re.search(r'-e "\.\[([a-z,]+)\]"', block).group(1).split(","))
    for r in extras["test"]:
        m = re.fullmatch(r"sing\[([a-z,]+)\]", r)
        installed |= set(m.group(1).split(",")) if m else set()
    assert {"cluster", "hf"} <= installed, installed


def test_dockerignore():
    ignored = {ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
               if ln.strip() and not ln.startswith("#")}
    assert {".venv", ".git", ".pytest_cache"} <= ignored
    for suf in WEIGHT_SUFFIXES:
        assert f"**/*{suf}" in ignored, suf
    assert "README.md" not in ignored and "pyproject.toml" not in ignored


# ------------------------------------------------------------------------- nightly config

def test_nightly_example_config():
    from pipelines.models.spec import parse_model_spec

    (cfg,) = _docs(NIGHTLY_EXAMPLE)
    assert set(cfg) == {"version", "name", "checkpoints", "translator", "audit", "baseline", "thresholds", "output"}
    assert cfg["version"] == 1 and re.fullmatch(r"[A-Za-z0-9._-]+", cfg["name"])
    ck = cfg["checkpoints"]
    assert set(ck) == {"source", "pattern", "arch", "select", "order", "max_per_run"}
    assert isinstance(ck["source"], (str, list)) and ck["select"] in ("new", "latest")
    assert ck["order"] in ("mtime", "name") and ck["max_per_run"] >= 1
    assert "@" not in ck["arch"] and parse_model_spec(ck["arch"] + "@/ckpt/x.safetensors").weights == "file"
    tr = cfg["translator"]
    assert len(tr) == 1 and set(tr) <= {"reuse", "refit"}
    au = cfg["audit"]
    assert set(au) == {"shards", "concepts", "class_text", "templates", "batch_size", "num_actors", "device",
                       "rank_atol", "rank_rtol", "decode", "host_decode_share", "actors_per_gpu", "actor_threads",
                       "buffer_gb", "stall_timeout", "resource_wait"}
    assert au["decode"] == "device" and au["device"] == "cuda"  # the nightly audits run on GPUs
    assert au["templates"] in ("single", "ensemble")
    assert cfg["baseline"] == "previous" or set(cfg["baseline"]) <= {"run", "model"}
    th = cfg["thresholds"]
    assert set(th) == {"max_median_abs_as_increase_deg", "max_is_as_ratio_drop_rel", "is_as_ratio", "max_error_rate",
                       "alarm_on", "confidence", "bootstrap_resamples"}
    assert th["alarm_on"] in ("point", "interval") and 0.5 <= th["confidence"] < 1 and th["bootstrap_resamples"] >= 100
    assert th["is_as_ratio"] in ("median_ratio", "ratio_of_means")
    assert th["max_median_abs_as_increase_deg"] > 0 and 0 < th["max_is_as_ratio_drop_rel"] < 1
    assert 0 <= th["max_error_rate"] < 1
    assert set(cfg["output"]) == {"dir", "report"}
    text = NIGHTLY_EXAMPLE.read_text()
    assert re.search(r"^#\s+3\s+ALARM", text, flags=re.M), "the alarm exit code is not documented"
    # The commented-out alternatives are valid YAML of the documented shape.
    refit = _commented_block(text, "refit")["refit"]
    assert set(refit) == {"clip", "shards", "heldout_shards", "templates", "out"}
    parse_model_spec(refit["clip"])
    assert set(_commented_block(text, "baseline")["baseline"]) == {"run", "model"}
    # ... and `sing nightly`'s own parser accepts the example and both alternatives.
    from pipelines.jobs.nightly.config import parse_nightly_config

    parsed = parse_nightly_config(cfg)
    assert parsed.reuse == tr.get("reuse") and parsed.thresholds.max_error_rate == th["max_error_rate"]
    alt = parse_nightly_config({**cfg, "translator": {"refit": refit},
                                "baseline": _commented_block(text, "baseline")["baseline"]})
    assert alt.refit.clip == refit["clip"] and alt.baseline["run"] == _commented_block(text, "baseline")["baseline"]["run"]


def _commented_block(text: str, key: str) -> dict:
    """The YAML of a commented-out `key:` block (`# key:` followed by deeper `#   ...` lines)."""
    lines = text.splitlines()
    start = next(i for i, ln in enumerate(lines) if re.fullmatch(rf"(\s*)# {key}:\s*", ln))
    indent = lines[start].index("#")
    block = [lines[start]]
    for ln in lines[start + 1:]:
        if not re.match(rf"\s{{{indent}}}#   ", ln):
            break
        block.append(ln)
    return yaml.safe_load("\n".join(ln[indent + 2:] for ln in block))
