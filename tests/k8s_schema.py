"""Strict schema validation of the Kubernetes manifests in cluster/, offline.

RayJob and RayCronJob documents are checked against the `openAPIV3Schema` of KubeRay's own
CRDs, kept as fixtures in tests/fixtures/kuberay/<release>/ (see SOURCE.json there and
extract.py to regenerate them). The API server prunes fields a structural schema does not
declare, and `kubectl apply` (field validation `Strict`, kubectl's default) rejects them;
jsonschema ignores them. So `strict()` closes every object schema that declares
`properties` (or nothing at all) and does not say `x-kubernetes-preserve-unknown-fields`:
an unknown or misplaced field is then an error here too. It also honours
`x-kubernetes-int-or-string`, `nullable` and the uniqueness of `x-kubernetes-list-type`
set/map lists. Not checked: the few CEL rules (`x-kubernetes-validations`; the manifests
use none of the fields they guard) and `format`.

The core objects (Namespace, ServiceAccount, PVC, ConfigMap, Role, RoleBinding, CronJob, Job,
NetworkPolicy)
get a lighter check: their top-level fields are a hand-written subset of the Kubernetes
API reference (closed, so typos fail), while the parts that matter most reuse core/v1
schemas embedded in the KubeRay CRD (k8s.io/api v0.36.0 there): a Job's or CronJob's pod template
is checked as a full PodTemplateSpec, a PVC's spec as a PersistentVolumeClaimSpec, a
NetworkPolicy's rules and selectors as the NetworkPolicy rules KubeRay 1.7 embeds.
"""
from __future__ import annotations

import copy
import functools
import gzip
import hashlib
import json
from pathlib import Path

from jsonschema import Draft4Validator, ValidationError
from jsonschema.validators import extend

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "kuberay"
PLURAL = {"RayJob": "rayjobs", "RayCronJob": "raycronjobs"}

DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}


def kuberay_release() -> str:
    """The one KubeRay release whose schemas the fixtures hold, e.g. 'v1.7.0'."""
    (d,) = [p for p in FIXTURES.iterdir() if p.is_dir() and p.name.startswith("v")]
    return d.name


def source() -> dict:
    return json.loads((FIXTURES / kuberay_release() / "SOURCE.json").read_text())


@functools.lru_cache(maxsize=None)
def crd_schema(plural: str) -> dict:
    """The CRD's v1 openAPIV3Schema exactly as stored, after checking it against SOURCE.json."""
    name = f"{plural}.v1.schema.json.gz"
    text = gzip.decompress((FIXTURES / kuberay_release() / name).read_bytes())
    want = source()["files"][name]["json_sha256"]
    if hashlib.sha256(text).hexdigest() != want:
        raise AssertionError(f"{name} does not match the sha256 in SOURCE.json: regenerate it with extract.py")
    return json.loads(text)


# ------------------------------------------------------------------------- strictness

def _strict_node(node: dict) -> dict:
    node = dict(node)
    for key in ("properties",):
        if key in node:
            node[key] = {k: _strict_node(v) for k, v in node[key].items()}
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            node[key] = _strict_node(node[key])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in node:
            node[key] = [_strict_node(v) for v in node[key]]
    preserve = node.get("x-kubernetes-preserve-unknown-fields") is True
    is_object = node.get("type") == "object" or "properties" in node
    if is_object and not preserve and "additionalProperties" not in node:
        # a structural schema prunes what it does not declare; `{type: object}` alone keeps nothing
        node["additionalProperties"] = False
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in node and "type" not in node:
        node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") is True:
        node = {"anyOf": [{"type": "null"}, {k: v for k, v in node.items() if k != "nullable"}]}
    return node


def strict(schema: dict) -> dict:
    """A copy of a CRD schema in which undeclared fields fail (see the module docstring)."""
    return _strict_node(copy.deepcopy(schema))


def _list_type(validator, list_type, instance, schema):
    if not validator.is_type(instance, "array"):
        return
    if list_type == "set":
        seen = []
        for i, item in enumerate(instance):
            if item in seen:
                yield ValidationError(f"duplicate item {item!r} in a set list (item {i})")
            seen.append(item)
    elif list_type == "map":
        keys = schema.get("x-kubernetes-list-map-keys", [])
        props = schema.get("items", {}).get("properties", {})
        seen = {}
        for i, item in enumerate(instance):
            if not isinstance(item, dict):
                continue
            k = tuple(json.dumps(item.get(key, props.get(key, {}).get("default"))) for key in keys)
            if k in seen:
                yield ValidationError(f"duplicate entry for {dict(zip(keys, k))} in a map list "
                                      f"(items {seen[k]} and {i})")
            seen[k] = i


# Draft 4 is the JSON Schema dialect OpenAPI v3.0 (and so Kubernetes) builds on.
K8sValidator = extend(Draft4Validator, {"x-kubernetes-list-type": _list_type})


# ------------------------------------------------------------------------- object schemas

OBJECT_META = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 253, "pattern": DNS1123_SUBDOMAIN},
        "generateName": {"type": "string", "maxLength": 253},
        "namespace": {"type": "string", "maxLength": 63, "pattern": DNS1123_SUBDOMAIN},
        "labels": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 63,
                                                              "pattern": LABEL_VALUE}},
        "annotations": STR_MAP,
        "finalizers": {"type": "array", "items": {"type": "string"}},
        "ownerReferences": {"type": "array", "items": {"type": "object"}},
    },
    "additionalProperties": False,
}


def _top(kind: str, api_version: str, **fields) -> dict:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata"],
        "properties": {"apiVersion": {"enum": [api_version]}, "kind": {"enum": [kind]},
                       "metadata": OBJECT_META, **fields},
        "additionalProperties": False,
    }


def _closed(required=(), **props) -> dict:
    return {"type": "object", "properties": props, "required": list(required), "additionalProperties": False}


INT = {"type": "integer"}
BOOL = {"type": "boolean"}
STR = {"type": "string"}
STR_LIST = {"type": "array", "items": STR}


def _pod_template_schema() -> dict:
    """core/v1 PodTemplateSpec, as embedded in the RayJob CRD (its submitterPodTemplate)."""
    return strict(crd_schema("rayjobs"))["properties"]["spec"]["properties"]["submitterPodTemplate"]


def _pvc_spec_schema() -> dict:
    """core/v1 PersistentVolumeClaimSpec, as embedded in the RayJob CRD (ephemeral volumes)."""
    vol = _pod_template_schema()["properties"]["spec"]["properties"]["volumes"]["items"]
    return vol["properties"]["ephemeral"]["properties"]["volumeClaimTemplate"]["properties"]["spec"]


def _network_policy_spec_schema() -> dict:
    """networking/v1 NetworkPolicySpec: its rules and label selectors as embedded in the RayJob
    CRD (rayClusterSpec.networkPolicy of KubeRay 1.7 holds NetworkPolicyIngressRule and
    NetworkPolicyEgressRule lists), the rest from the Kubernetes API reference, closed."""
    rules = strict(crd_schema("rayjobs"))["properties"]["spec"]["properties"]["rayClusterSpec"]["properties"][
        "networkPolicy"]["properties"]["head"]["properties"]
    selector = rules["ingressRules"]["items"]["properties"]["from"]["items"]["properties"]["podSelector"]
    return _closed(["podSelector"], podSelector=selector, ingress=rules["ingressRules"], egress=rules["egressRules"],
                   policyTypes={"type": "array", "items": {"enum": ["Ingress", "Egress"]}})


@functools.lru_cache(maxsize=None)
def schema_for(kind: str, api_version: str) -> dict:
    if kind in PLURAL:
        s = strict(crd_schema(PLURAL[kind]))
        s["properties"]["metadata"] = OBJECT_META
        s["properties"]["apiVersion"] = {"enum": ["ray.io/v1"]}
        s["properties"]["kind"] = {"enum": [kind]}
        s["properties"].pop("status", None)  # written by the operator, never in a manifest
        s["required"] = sorted(set(s.get("required", [])) | {"apiVersion", "kind", "metadata", "spec"})
        return s
    # Lighter: the Kubernetes API reference's fields for what cluster/ uses, closed.
    job_spec = _closed(
        ["template"], parallelism=INT, completions=INT, activeDeadlineSeconds=INT, backoffLimit=INT,
        backoffLimitPerIndex=INT, maxFailedIndexes=INT, ttlSecondsAfterFinished=INT, suspend=BOOL,
        completionMode={"enum": ["NonIndexed", "Indexed"]}, manualSelector=BOOL, managedBy=STR,
        podReplacementPolicy={"enum": ["TerminatingOrFailed", "Failed"]},
        selector={"type": "object"}, podFailurePolicy={"type": "object"}, successPolicy={"type": "object"},
        template=_pod_template_schema())
    schemas = {
        ("Namespace", "v1"): _top("Namespace", "v1", spec=_closed(finalizers=STR_LIST)),
        ("ServiceAccount", "v1"): _top(
            "ServiceAccount", "v1", automountServiceAccountToken=BOOL,
            imagePullSecrets={"type": "array", "items": _closed(["name"], name=STR)},
            secrets={"type": "array", "items": {"type": "object"}}),
        ("PersistentVolumeClaim", "v1"): _top("PersistentVolumeClaim", "v1", spec=_pvc_spec_schema()),
        ("ConfigMap", "v1"): _top("ConfigMap", "v1", data=STR_MAP, binaryData=STR_MAP, immutable=BOOL),
        ("NetworkPolicy", "networking.k8s.io/v1"): _top("NetworkPolicy", "networking.k8s.io/v1",
                                                        spec=_network_policy_spec_schema()),
        ("Role", "rbac.authorization.k8s.io/v1"): _top(
            "Role", "rbac.authorization.k8s.io/v1",
            rules={"type": "array", "items": _closed(["verbs"], apiGroups=STR_LIST, resources=STR_LIST,
                                                     verbs=STR_LIST, resourceNames=STR_LIST,
                                                     nonResourceURLs=STR_LIST)}),
        ("RoleBinding", "rbac.authorization.k8s.io/v1"): _top(
            "RoleBinding", "rbac.authorization.k8s.io/v1",
            roleRef=_closed(["apiGroup", "kind", "name"], apiGroup=STR, kind={"enum": ["Role", "ClusterRole"]},
                            name=STR),
            subjects={"type": "array", "items": _closed(["kind", "name"], kind=STR, name=STR, namespace=STR,
                                                        apiGroup=STR)}),
        ("Job", "batch/v1"): _top("Job", "batch/v1", spec=job_spec),
        ("CronJob", "batch/v1"): _top("CronJob", "batch/v1", spec=_closed(
            ["schedule", "jobTemplate"], schedule=STR, timeZone=STR, startingDeadlineSeconds=INT, suspend=BOOL,
            concurrencyPolicy={"enum": ["Allow", "Forbid", "Replace"]},
            successfulJobsHistoryLimit=INT, failedJobsHistoryLimit=INT,
            jobTemplate=_closed(["spec"], metadata=OBJECT_META, spec=job_spec))),
    }
    try:
        return schemas[(kind, api_version)]
    except KeyError:
        raise KeyError(f"no schema for {api_version} {kind}: add one to tests/k8s_schema.py") from None


def errors(doc: dict) -> list[str]:
    """Every schema violation of one manifest document, as 'path: message' lines."""
    validator = K8sValidator(schema_for(doc.get("kind"), doc.get("apiVersion")))
    out = []
    for e in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path))):
        where = ".".join(str(p) for p in e.absolute_path) or "<root>"
        out.append(f"{where}: {e.message[:300]}")
    return out


__all__ = ["errors", "strict", "crd_schema", "schema_for", "kuberay_release", "source"]
