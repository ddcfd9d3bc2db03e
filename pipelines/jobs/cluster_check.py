"""`sing cluster check MANIFEST`: will the pods of a KubeRay manifest schedule on the node
types you have? Before submitting: a RayJob whose pods fit no node waits Pending on billed
nodes until its deadline. For every pod group (the Ray head, each worker group, the job's
submitter) and every node type given (default: every type pipelines.jobs.node_types knows):
does the group's required node affinity admit the type, and how many of its pods fit one
node after the kubelet's reserve, the eviction thresholds and the DaemonSets, in CPU,
memory, GPUs and ephemeral storage (the node's root disk: NAME:GIB gives a node pool's
disk, else the cloud's default)? Exit 2 when a group fits none of them.

Each group is checked on its own: pods of different groups sharing a node are not packed
together, and taints are not modelled (the GPU pods tolerate nvidia.com/gpu).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from pipelines.errors import BadInput
from pipelines.jobs import node_types as nt

GIB = 2 ** 30
_SUFFIX = {"Ki": 2 ** 10, "Mi": 2 ** 20, "Gi": 2 ** 30, "Ti": 2 ** 40, "Pi": 2 ** 50, "k": 1e3, "M": 1e6, "G": 1e9,
           "T": 1e12, "P": 1e15, "m": 1e-3, "": 1.0}
RESOURCES = ("cpu", "memory", "nvidia.com/gpu", "ephemeral-storage")


def quantity(v) -> float:
    """A Kubernetes quantity as a number (bytes; cores for CPU)."""
    m = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)(?:[eE]([0-9]+))?([A-Za-z]*)", str(v).strip())
    if not m or m.group(3) not in _SUFFIX:
        raise BadInput(f"not a Kubernetes quantity: {v!r}")
    return float(m.group(1)) * 10 ** int(m.group(2) or 0) * _SUFFIX[m.group(3)]


@dataclass
class Group:
    """Pods of one template: the head, a worker group or the submitter."""
    where: str  # "<file>: <job>"
    name: str
    pods: int
    requests: dict[str, float]  # RESOURCES -> cores / bytes / GPUs, per pod
    pod: dict  # the pod spec

    def admits(self, labels: dict[str, str]) -> bool:
        """Whether the pod's nodeSelector and required node affinity admit a node with `labels`."""
        if any(labels.get(k) != v for k, v in (self.pod.get("nodeSelector") or {}).items()):
            return False
        required = (((self.pod.get("affinity") or {}).get("nodeAffinity") or {})
                    .get("requiredDuringSchedulingIgnoredDuringExecution") or {})
        terms = required.get("nodeSelectorTerms") or []
        return not terms or any(_term_matches(t, labels) for t in terms)


def _term_matches(term: dict, labels: dict[str, str]) -> bool:
    """One nodeSelectorTerm: every expression holds (Kubernetes' semantics: NotIn and
    DoesNotExist hold for a node without the label)."""
    for e in term.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], e.get("values") or []
        have = labels.get(key)
        if op in ("Gt", "Lt"):
            if len(values) != 1 or not str(values[0]).lstrip("-").isdigit():
                raise BadInput(f"node affinity {op} on {key} needs one integer value, got {values}")
            number = int(have) if have is not None and have.lstrip("-").isdigit() else None
            ok = number is not None and (number > int(values[0]) if op == "Gt" else number < int(values[0]))
        elif op in ("In", "NotIn", "Exists", "DoesNotExist"):
            ok = {"In": have in values, "NotIn": have not in values, "Exists": key in labels,
                  "DoesNotExist": key not in labels}[op]
        else:
            raise BadInput(f"node affinity operator {op!r} is not one Kubernetes knows")
        if not ok:
            return False
    return not term.get("matchFields")  # fields (metadata.name) select single nodes: not a pool


def _requests(pod: dict) -> dict[str, float]:
    """What the scheduler reserves for one pod: its containers' requests summed (a limit alone
    is its request), or the largest init container's if larger."""
    def of(containers):
        total = dict.fromkeys(RESOURCES, 0.0)
        for c in containers or []:
            res = c.get("resources") or {}
            asked = {**(res.get("limits") or {}), **(res.get("requests") or {})}
            for r in RESOURCES:
                total[r] += quantity(asked[r]) if r in asked else 0.0
        return total
    main = of(pod.get("containers"))
    for init in pod.get("initContainers") or []:
        main = {r: max(v, of([init])[r]) for r, v in main.items()}
    return main


def _job_specs(path: Path) -> list[tuple[str, dict]]:
    """(name, RayJob spec) of each RayJob, RayCronJob template, RayJob kept as text in a
    ConfigMap (the nightly fallback), or RayCluster (as a RayJob spec) in the file."""
    import yaml

    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]
    except (OSError, yaml.YAMLError) as exc:
        raise BadInput(f"cannot read the manifest {path}: {exc}") from None
    out = []
    for d in docs:
        kind, name, spec = d.get("kind"), (d.get("metadata") or {}).get("name", "?"), d.get("spec") or {}
        if kind == "RayJob":
            out.append((name, spec))
        elif kind == "RayCronJob":
            out.append((name, spec.get("jobTemplate") or {}))
        elif kind == "RayCluster":
            out.append((name, {"rayClusterSpec": spec}))
        elif kind == "ConfigMap":
            for key, text in (d.get("data") or {}).items():
                inner = yaml.safe_load(text) if key.endswith((".yaml", ".yml")) else None
                if isinstance(inner, dict) and inner.get("kind") == "RayJob":
                    out.append((f"{name}/{key}", inner.get("spec") or {}))
    if not out:
        raise BadInput(f"{path}: no RayJob, RayCronJob or RayCluster to check")
    return out


def groups(path: Path) -> list[Group]:
    """Every pod group of every Ray job in the manifest file."""
    out = []
    for job, spec in _job_specs(path):
        where = f"{path.name}: {job}"
        rc = spec.get("rayClusterSpec") or {}
        templates = [("head", 1, (rc.get("headGroupSpec") or {}).get("template") or {})]
        templates += [(g.get("groupName", "?"), int(g.get("replicas", g.get("minReplicas", 1)) or 0),
                       g.get("template") or {}) for g in rc.get("workerGroupSpecs") or []]
        if spec.get("submitterPodTemplate"):
            templates.append(("submitter", 1, spec["submitterPodTemplate"]))
        for name, pods, tmpl in templates:
            pod = tmpl.get("spec") or {}
            out.append(Group(where, name, pods, _requests(pod), pod))
    return out


@dataclass(frozen=True)
class Target:
    node: nt.NodeType
    disk_gib: float | None  # the node pool's root disk; None: the cloud's default

    @property
    def label(self) -> str:
        disk = nt.DEFAULT_DISK_GIB[self.node.cloud] if self.disk_gib is None else self.disk_gib
        return f"{self.node.name} ({disk:.0f} GiB disk)"


def parse_target(text: str) -> Target:
    name, _, disk = text.partition(":")
    if name not in nt.NODE_TYPES:
        raise BadInput(f"unknown node type {name!r} (--node-type); known: {', '.join(nt.NODE_TYPES)}")
    try:
        gib = float(disk) if disk else None
    except ValueError:
        raise BadInput(f"--node-type {text}: the disk after ':' must be a size in GiB") from None
    if gib is not None and gib <= 0:
        raise BadInput(f"--node-type {text}: the disk must be positive")
    return Target(nt.NODE_TYPES[name], gib)


def fit(group: Group, target: Target) -> tuple[int, str]:
    """(pods of the group one node holds, the resource that limits it, in words)."""
    node = target.node
    cpu, mem = nt.for_pods(node)
    have = {"cpu": cpu, "memory": mem * GIB, "nvidia.com/gpu": float(node.gpus),
            "ephemeral-storage": nt.ephemeral_gib(node, target.disk_gib) * GIB}
    best, why = node.max_pods, "pods per node"
    for r in RESOURCES:
        need = group.requests[r]
        if need > 0:
            n = math.floor(have[r] / need + 1e-9)
            if n < best:
                best, why = n, _shortfall(r, need, have[r])
    return best, why


def _shortfall(r: str, need: float, have: float) -> str:
    if r in ("memory", "ephemeral-storage"):
        return f"{r} {need / GIB:g} GiB a pod, {have / GIB:.1f} GiB allocatable"
    return f"{r} {need:g} a pod, {have:.2f} allocatable"


def _disk_hint(group: Group, target: Target, pods: int) -> str:
    need = pods * group.requests["ephemeral-storage"] / GIB
    return f"a root disk of >= {math.ceil(nt.disk_for(target.node, need))} GiB holds {pods}"


def check_group(group: Group, targets: list[Target]) -> tuple[list[str], str | None]:
    """(report lines, why the group cannot be scheduled or None) on the given node types."""
    admitted = [t for t in targets if group.admits(t.node.labels())]
    if not admitted:
        return [], f"{group.name}: its node affinity admits none of {', '.join(t.node.name for t in targets)}"
    lines, placeable, problems = [], False, []
    for t in admitted:
        n, why = fit(group, t)
        # GPUs a node would leave idle because another resource holds fewer pods
        gpus = group.requests["nvidia.com/gpu"]
        by_gpu = math.floor(t.node.gpus / gpus + 1e-9) if gpus else None
        other = fit(Group(group.where, group.name, group.pods, {**group.requests, "ephemeral-storage": 0.0},
                          group.pod), t)[0]
        hint = f" ({_disk_hint(group, t, other)})" if why.startswith("ephemeral-storage") and other > n else ""
        if n == 0:
            lines.append(f"    {t.label}: cannot be scheduled: {why}{hint}")
            problems.append(f"{t.node.name}: {why}")
        elif by_gpu is not None and n < by_gpu:
            lines.append(f"    {t.label}: {n} pod{'s' * (n != 1)} a node, leaving {t.node.gpus - n * int(gpus)} of its "
                         f"{t.node.gpus} GPUs idle: {why}{hint}")
            problems.append(f"{t.node.name}: {n} of {by_gpu} pods a node ({why})")
        else:
            placeable = True
            lines.append(f"    {t.label}: {n} pod{'s' * (n != 1)} a node, {math.ceil(group.pods / n)} node(s) for "
                         f"{group.pods}")
    return lines, None if placeable else f"{group.name}: " + "; ".join(problems)


def _describe(g: Group) -> str:
    r = g.requests
    gpu = f", {r['nvidia.com/gpu']:g} GPU" if r["nvidia.com/gpu"] else ""
    return (f"{g.name}: {g.pods} pod{'s' * (g.pods != 1)} of {r['cpu']:g} CPU, {r['memory'] / GIB:g} GiB{gpu}, "
            f"{r['ephemeral-storage'] / GIB:g} GiB ephemeral storage")


def check(path: str, node_types: list[str] | None = None) -> list[str]:
    """The report's lines; BadInput (exit 2) naming every group that cannot be scheduled."""
    p = Path(path)
    if not p.is_file():
        raise BadInput(f"manifest not found: {path}")
    targets = [parse_target(t) for t in node_types] if node_types else [Target(n, None) for n in nt.NODE_TYPES.values()]
    lines, failed, where = [], [], None
    for g in groups(p):
        if g.where != where:
            lines.append(g.where)
            where = g.where
        more, problem = check_group(g, targets)
        lines += [f"  {_describe(g)}", *more]
        if problem:
            lines.append(f"    CANNOT BE SCHEDULED on the node types given: {problem.split(': ', 1)[1]}")
            failed.append(f"{g.where.split(': ', 1)[1]} {g.name}")
    if failed:
        print("\n".join(lines))
        raise BadInput(f"{path}: {len(failed)} pod group(s) cannot be scheduled on the node types given: "
                       f"{', '.join(failed)} (details above)")
    return lines


def cli_args(p) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    c = sub.add_parser("check", help="compare a KubeRay manifest's pod requests with node types' allocatable "
                                     "resources (exit 2 when a pod group fits none)",
                       description=__doc__.split("\n\n")[0])
    c.add_argument("manifest", help="a YAML file with RayJob, RayCronJob, RayCluster objects (or a ConfigMap "
                                    "holding a RayJob)")
    c.add_argument("--node-type", action="append", metavar="NAME[:GIB]",
                   help="a node type of your cluster, optionally with its node pool's root disk in GiB "
                        f"(repeat; default: every known type with its cloud's default disk): {', '.join(nt.NODE_TYPES)}")


def cli_run(a) -> int:
    print("\n".join(check(a.manifest, a.node_type)))
    return 0
