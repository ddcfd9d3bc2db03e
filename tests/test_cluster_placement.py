"""cluster/: pods where they belong, runs that end, a cluster that is not open. For every
RayJob spec (the audit, the fit, the leaderboard, the nightly RayCronJob's and the
fallback's): the GPU group's required node affinity admits every GPU node type and no CPU one, the head, decode and
submitter pods the reverse (with NVIDIA GPU Feature Discovery's labels and without);
preRunningDeadlineSeconds is set; Ray token authentication is on; the NetworkPolicy admits
only the Ray pods among themselves and the submitter and operator to the job API. Static
checks, with the node-affinity semantics `sing cluster check` uses."""
from __future__ import annotations

import copy

import pytest

from pipelines.jobs import node_types as nt
from pipelines.jobs.cluster_check import Group, _term_matches
from tests import k8s_schema
from tests.test_cluster_manifests import AUDIT_JOB, _k8s_objects, _one, _pod_specs, _rayjob_specs

SPECS = [pytest.param(w, s, id=w) for w, s in _rayjob_specs()]
RAY_PODS = {"head": "ray-head", "gpu": "ray-gpu-worker", "cpu-decode": "ray-cpu-worker"}


def _is_gpu(pod: dict) -> bool:
    return any("nvidia.com/gpu" in (c.get("resources", {}).get("limits") or {}) for c in pod["containers"])


def _admits(pod: dict, labels: dict) -> bool:
    return Group("", "", 1, {}, pod).admits(labels)


# GPU nodes outside the node_types table: one labelled by GPU Feature Discovery only, one by GKE only
OTHER_GPU_NODES = [{nt.INSTANCE_TYPE: "g6e.48xlarge", nt.GPU_PRESENT: "true"},
                   {nt.INSTANCE_TYPE: "a3-highgpu-8g", nt.GKE_ACCELERATOR: "nvidia-h100-80gb"}]


@pytest.mark.parametrize("where,spec", SPECS)
def test_gpu_pods_on_gpu_nodes_and_the_rest_on_cpu_nodes(where, spec):
    pods = _pod_specs(spec)
    assert {name for name, _ in pods} >= {"head", "gpu", "submitter"}, where
    for name, pod in pods:
        assert pod.get("affinity", {}).get("nodeAffinity"), (where, name, "no node affinity")
        for node in nt.NODE_TYPES.values():
            for gfd in (False, True):
                on_gpu_node = node.gpus > 0
                assert _admits(pod, node.labels(gfd)) == (on_gpu_node == _is_gpu(pod)), (where, name, node.name, gfd)
        for labels in OTHER_GPU_NODES:
            assert _admits(pod, labels) == _is_gpu(pod), (where, name, labels)
        assert not _admits(pod, {nt.INSTANCE_TYPE: "p4d.24xlarge", "kubernetes.io/os": "linux"}) or _is_gpu(pod)


@pytest.mark.parametrize("where,spec", SPECS)
def test_gpu_pods_tolerate_the_gpu_taint_and_cpu_pods_do_not(where, spec):
    for name, pod in _pod_specs(spec):
        keys = {t["key"] for t in pod.get("tolerations", [])}
        assert ("nvidia.com/gpu" in keys) == _is_gpu(pod), (where, name, keys)


def test_node_affinity_semantics():
    """The matcher the placement checks rely on: terms are ORed, expressions ANDed, NotIn and
    DoesNotExist hold for a node without the label."""
    term = {"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["x"]},
                                 {"key": "b", "operator": "DoesNotExist"}]}
    assert _term_matches(term, {}) and _term_matches(term, {"a": "y"})
    assert not _term_matches(term, {"a": "x"}) and not _term_matches(term, {"b": ""})
    pod = {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "a", "operator": "In", "values": ["x"]}]},
        {"matchExpressions": [{"key": "b", "operator": "Exists"}]}]}}}}
    assert _admits(pod, {"a": "x"}) and _admits(pod, {"b": "1"}) and not _admits(pod, {"a": "y"})
    assert not _admits({**pod, "nodeSelector": {"c": "1"}}, {"a": "x"})


@pytest.mark.parametrize("where,spec", SPECS)
def test_a_job_that_cannot_start_fails_instead_of_waiting(where, spec):
    """A pod that fits no node stays Pending: preRunningDeadlineSeconds fails the RayJob long
    before activeDeadlineSeconds, with time for node start-up and a several-GB image pull."""
    pre, active = spec.get("preRunningDeadlineSeconds"), spec["activeDeadlineSeconds"]
    assert isinstance(pre, int) and 600 <= pre <= 1800 and pre < active / 2, (where, pre, active)


@pytest.mark.parametrize("where,spec", SPECS)
def test_ray_token_authentication(where, spec):
    auth = spec["rayClusterSpec"].get("authOptions")
    assert auth == {"mode": "token"}, (where, auth)  # Kubernetes-delegated auth is unsupported for RayJobs
    # the operator refuses token mode below Ray 2.52.0 (KubeRay 1.7.0 ValidateRayClusterSpec)
    assert tuple(map(int, spec["rayClusterSpec"]["rayVersion"].split("."))) >= (2, 52, 0), where
    for name, pod in _pod_specs(spec):
        for c in pod["containers"]:
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            assert "RAY_AUTH_MODE" not in env and "RAY_AUTH_TOKEN" not in env, (where, name)  # the operator sets them


@pytest.mark.parametrize("change,field", [
    (lambda rc: rc.__setitem__("authOptions", {"mode": "tokens"}), "authOptions.mode"),
    (lambda rc: rc.__setitem__("authOptions", {"mode": "token", "secret": "x"}), "authOptions"),
])
def test_auth_options_are_validated_against_the_crd(change, field):
    doc = copy.deepcopy(_one("RayJob", AUDIT_JOB))
    change(doc["spec"]["rayClusterSpec"])
    assert any(field in e for e in k8s_schema.errors(doc)), k8s_schema.errors(doc)
    doc = copy.deepcopy(_one("RayJob", AUDIT_JOB))
    doc["spec"]["preRunningDeadlineSeconds"] = 0  # the CRD's minimum is 1
    assert any("preRunningDeadlineSeconds" in e for e in k8s_schema.errors(doc))


def _selects(selector: dict, labels: dict) -> bool:
    """A Kubernetes LabelSelector (matchLabels and matchExpressions, ANDed)."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    return _term_matches({"matchExpressions": selector.get("matchExpressions") or []}, labels)


def _admitted(policy: dict, labels: dict, port: int, same_namespace: bool = True) -> bool:
    """Whether the policy lets a pod with `labels` reach a selected pod on `port`."""
    for rule in policy["spec"]["ingress"]:
        ports = [p["port"] for p in rule.get("ports", [])]
        if ports and port not in ports:
            continue
        for peer in rule["from"]:
            if "namespaceSelector" not in peer and not same_namespace:
                continue
            if _selects(peer.get("podSelector", {}), labels):
                return True
    return False


def _labels(pod_template_owner: dict) -> dict:
    return pod_template_owner.get("metadata", {}).get("labels", {})


def test_network_policy_admits_only_ray_pods_the_submitter_and_the_operator():
    (policy,) = [d for _, d in _k8s_objects() if d["kind"] == "NetworkPolicy"]
    assert policy["metadata"]["namespace"] == "sing" and policy["spec"]["policyTypes"] == ["Ingress"]
    assert k8s_schema.errors(policy) == []
    for where, spec in _rayjob_specs():
        rc = spec["rayClusterSpec"]
        templates = {"head": rc["headGroupSpec"]["template"]}
        templates.update({g["groupName"]: g["template"] for g in rc["workerGroupSpecs"]})
        ray = [_labels(t) for t in templates.values()]
        submitter = _labels(spec["submitterPodTemplate"])
        assert [lab["app.kubernetes.io/component"] for lab in ray] == [RAY_PODS[n] for n in templates], where
        assert submitter.get("app.kubernetes.io/component") == "ray-submitter", where
        for target in ray:
            assert _selects(policy["spec"]["podSelector"], target), (where, target)
            for source in ray:
                assert _admitted(policy, source, 6379) and _admitted(policy, source, 12345), (where, source)
            assert _admitted(policy, submitter, 8265) and not _admitted(policy, submitter, 6379), where
        assert not _selects(policy["spec"]["podSelector"], submitter)
    operator = {"app.kubernetes.io/name": "kuberay-operator", "app.kubernetes.io/component": "kuberay-operator"}
    assert _admitted(policy, operator, 8265, same_namespace=False) and not _admitted(policy, operator, 6379, False)
    launcher = next(d for _, d in _k8s_objects() if d["kind"] == "CronJob")["spec"]["jobTemplate"]["spec"]["template"]
    for outsider in (_labels(launcher), {"app.kubernetes.io/name": "sing"}, {}):
        assert not any(_admitted(policy, outsider, p) for p in (6379, 8265, 10001)), outsider


def test_network_policy_schema_is_strict():
    (policy,) = [copy.deepcopy(d) for _, d in _k8s_objects() if d["kind"] == "NetworkPolicy"]
    policy["spec"]["ingress"][1]["ports"][0]["prot"] = "TCP"
    assert k8s_schema.errors(policy)
    policy = next(copy.deepcopy(d) for _, d in _k8s_objects() if d["kind"] == "NetworkPolicy")
    policy["spec"]["policyTypes"] = ["Inbound"]
    assert k8s_schema.errors(policy)
