"""cluster/ and the Dockerfile: every manifest parses, has the fields its controller needs,
runs the project image as a non-root user, and every `sing ...` command it contains is one
the real command line accepts. Static checks only: no cluster, no Docker, a few seconds."""
from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
YAML_FILES = sorted(p for p in CLUSTER.iterdir() if p.suffix in (".yaml", ".yml"))
LAUNCHER = CLUSTER / "ray-cluster-aws-gpu.yaml"
NIGHTLY_EXAMPLE = CLUSTER / "nightly.example.yaml"
DOCKERFILE = ROOT / "Dockerfile"
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
CRON = re.compile(r"^\S+( \S+){4}$")


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _k8s_objects() -> list[tuple[str, dict]]:
    return [(p.name, d) for p in YAML_FILES for d in _docs(p) if isinstance(d, dict) and "kind" in d]


def _one(kind: str) -> dict:
    found = [d for _, d in _k8s_objects() if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind} under cluster/, found {len(found)}"
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
        "cronjob-nightly-fallback.yaml", "nightly.example.yaml", "k8s-common.yaml"}
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
                   "object_spilling_config", "rerun the same command"):
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
    hf = re.search(r"HF_HOME=(\S+)", opts).group(1)
    assert re.search(rf"-v \S+:{re.escape(hf)}(\s|$)", opts), "HF_HOME is not on a mounted volume"
    start = " ".join(cfg["head_start_ray_commands"])
    assert "object_spilling_config" in start and "--object-store-memory" in start
    assert cfg["file_mounts"] == {} and not cfg["setup_commands"]


# ------------------------------------------------------------------------- KubeRay

def test_rayjob_audit():
    job = _one("RayJob")
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
    from pipelines.actor_pool import DEFAULT_ACTORS_PER_GPU

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
    from pipelines.cli import _parser

    (sub,) = [a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return set(sub.choices) | {"query", "report", "bench-ops"}


PASSTHROUGH = {"query", "report", "bench-ops"}
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
    assert argv[0] in _subcommands(), f"`sing {argv[0]}` is not a subcommand"
    if argv[0] in PASSTHROUGH:
        from pipelines.cli import main

        with pytest.raises(SystemExit) as exc:  # argparse exits after printing the help
            rc = main([argv[0], "--help"])
            raise SystemExit(rc)
        assert exc.value.code in (0, None)
        return
    from pipelines.cli import _parser

    try:
        ns = _parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"`sing {shlex.join(argv)}` is rejected by the real parser (exit {exc.code})")
    assert ns.command == argv[0]


# ------------------------------------------------------------------------- Dockerfile

def test_dockerfile():
    instrs = _dockerfile()
    froms = [a for i, a in instrs if i == "FROM"]
    assert froms and re.match(r"(docker\.io/)?(nvidia/cuda|pytorch/pytorch):\S*cuda", froms[-1]) or \
        froms[-1].startswith("nvidia/cuda:"), froms
    users = [a for i, a in instrs if i == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    for i, a in instrs:
        if i in ("COPY", "ADD"):
            srcs = [t for t in shlex.split(a) if not t.startswith("--")][:-1]
            assert not any(s.endswith(WEIGHT_SUFFIXES) for s in srcs), a
            assert "." not in srcs or (ROOT / ".dockerignore").exists(), a
    runs = " ".join(a for i, a in instrs if i == "RUN")
    assert re.search(r"pip install (\S+ )*\.(\s|\[|$)", runs), "the project is not pip-installed"
    env = _docker_env()
    assert env.get("RAY_USAGE_STATS_ENABLED") == "0"
    assert env.get("HOME", "/root") != "/root", "the Ray launcher needs the non-root user's HOME in ENV"
    hf = env["HF_HOME"]
    volumes = [v for i, a in instrs if i == "VOLUME" for v in (yaml.safe_load(a) if a.startswith("[") else a.split())]
    assert any(hf == v or hf.startswith(v.rstrip("/") + "/") for v in volumes), (hf, volumes)
    assert not any(i == "HEALTHCHECK" for i, _ in instrs)
    assert all(a.replace(" ", "") == "[]" for i, a in instrs if i == "ENTRYPOINT")
    # Python matches the project's requires-python.
    assert "python3.11" in runs and ">=3.11,<3.12" in (ROOT / "pyproject.toml").read_text()


def test_dockerignore():
    ignored = {ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
               if ln.strip() and not ln.startswith("#")}
    assert {".venv", ".git", ".pytest_cache"} <= ignored
    for suf in WEIGHT_SUFFIXES:
        assert f"**/*{suf}" in ignored, suf
    assert "README.md" not in ignored and "pyproject.toml" not in ignored


# ------------------------------------------------------------------------- nightly config

def test_nightly_example_config():
    from pipelines.model_spec import parse_model_spec

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
                       "buffer_gb", "stall_timeout"}
    assert au["decode"] == "device" and au["device"] == "cuda"  # the nightly audits run on GPUs
    assert au["templates"] in ("single", "ensemble")
    assert cfg["baseline"] == "previous" or set(cfg["baseline"]) <= {"run", "model"}
    th = cfg["thresholds"]
    assert set(th) == {"max_median_abs_as_increase_deg", "max_is_as_ratio_drop_rel", "is_as_ratio", "max_error_rate"}
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
    from pipelines.nightly_config import parse_nightly_config

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
