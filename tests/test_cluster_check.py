"""`sing cluster check MANIFEST`: the manifests' pods against node types' allocatable CPU,
memory, GPUs and ephemeral storage, through the real command line. On the clouds' default
root disks the GPU and decode pods fit nowhere (exit 2, before anything is submitted); on
the node-pool disks cluster/README.md names, every manifest fits; too small a disk that
leaves GPUs idle, a node type the affinity excludes, and bad input are refused."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipelines.cli import main
from pipelines.jobs import node_types as nt
from pipelines.jobs.cluster_check import quantity

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
RAY_MANIFESTS = ["rayjob-audit.yaml", "rayjob-fit-translator.yaml", "rayjob-leaderboard.yaml",
                 "raycronjob-nightly.yaml", "cronjob-nightly-fallback.yaml"]


def _check(capsys, *args) -> tuple[int, str, str]:
    rc = main(["cluster", "check", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _readme_checks() -> list[list[str]]:
    """The node-type arguments of the `sing cluster check` lines in cluster/README.md."""
    text = (CLUSTER / "README.md").read_text()
    return [line.split()[4:] for line in re.findall(r"^sing cluster check .*$", text, flags=re.M)]


def test_default_disks_are_too_small_for_the_gpu_and_decode_pods(capsys):
    rc, out, err = _check(capsys, str(CLUSTER / "rayjob-audit.yaml"))
    assert rc == 2
    assert re.search(r"2 pod group\(s\) cannot be scheduled .*: sing-audit-in1k-val gpu, sing-audit-in1k-val "
                     r"cpu-decode", err), err
    # the report says what is short, and which disk would do
    assert "p4d.24xlarge (20 GiB disk): cannot be scheduled: ephemeral-storage 68 GiB a pod, 17.0 GiB allocatable " \
           "(a root disk of >= 606 GiB holds 8)" in out, out
    assert "a2-highgpu-8g (93 GiB disk): cannot be scheduled: ephemeral-storage 68 GiB a pod" in out
    # node affinity: the GPU pods are not even considered for CPU node types, and the reverse
    gpu_block = out.split("  gpu:")[1].split("  cpu-decode:")[0]
    assert "c6i.16xlarge" not in gpu_block and "p4d.24xlarge" in gpu_block
    assert "p4d.24xlarge" not in out.split("  head:")[1].split("  gpu:")[0]


@pytest.mark.parametrize("manifest", RAY_MANIFESTS)
def test_the_documented_node_pools_fit_every_manifest(manifest, capsys):
    checks = _readme_checks()
    assert len(checks) == 2, "cluster/README.md names one EKS and one GKE set of node pools"
    for args in checks:
        rc, out, err = _check(capsys, str(CLUSTER / manifest), *args)
        assert rc == 0, out + err
        assert re.search(r"\(\d+ GiB disk\): 8 pods a node, 1 node\(s\) for 8", out), out  # a whole 8-GPU node


def test_a_disk_that_leaves_gpus_idle_is_refused(capsys):
    rc, out, err = _check(capsys, str(CLUSTER / "rayjob-fit-translator.yaml"), "--node-type", "p4d.24xlarge:300",
                          "--node-type", "m6i.4xlarge:100")
    assert rc == 2 and "sing-fit-rn50-vitl14 gpu" in err, err
    assert "p4d.24xlarge (300 GiB disk): 3 pods a node, leaving 5 of its 8 GPUs idle: ephemeral-storage" in out, out
    assert "(a root disk of >= 606 GiB holds 8)" in out


def test_a_node_type_the_affinity_excludes(capsys):
    rc, out, err = _check(capsys, str(CLUSTER / "rayjob-fit-translator.yaml"), "--node-type", "p4d.24xlarge:700")
    assert rc == 2 and "sing-fit-rn50-vitl14 head" in err and "sing-fit-rn50-vitl14 submitter" in err, err
    head = out.split("  head:")[1].split("  gpu:")[0]
    assert "CANNOT BE SCHEDULED on the node types given: its node affinity admits none of p4d.24xlarge" in head, out


@pytest.mark.parametrize("args,message", [
    (["cluster/rayjob-audit.yaml", "--node-type", "p9.huge"], "unknown node type 'p9.huge' (--node-type); known: "),
    (["cluster/rayjob-audit.yaml", "--node-type", "p4d.24xlarge:big"], "the disk after ':' must be a size in GiB"),
    (["cluster/none.yaml"], "manifest not found: cluster/none.yaml"),
    (["cluster/k8s-common.yaml"], "k8s-common.yaml: no RayJob, RayCronJob or RayCluster to check"),
])
def test_bad_input(args, message, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    rc, _, err = _check(capsys, *args)
    assert rc == 2 and message in err and err.count("\n") == 1, err


def test_requests_of_a_pod(tmp_path, capsys):
    """Requests summed over containers, a limit alone counts as the request, the largest init
    container when it asks for more; a RayCluster is checked as a RayJob's cluster."""
    (tmp_path / "rc.yaml").write_text("""
apiVersion: ray.io/v1
kind: RayCluster
metadata: {name: small}
spec:
  headGroupSpec:
    template:
      spec:
        initContainers: [{name: i, resources: {requests: {cpu: "60"}}}]
        containers:
          - {name: a, resources: {requests: {cpu: 500m, memory: 1Gi}, limits: {cpu: "1", memory: 1Gi}}}
          - {name: b, resources: {limits: {memory: "2147483648", ephemeral-storage: 1e9}}}
""")
    rc, out, err = _check(capsys, str(tmp_path / "rc.yaml"), "--node-type", "c6i.16xlarge:100")
    assert rc == 0 and "head: 1 pod of 60 CPU, 3 GiB, 0.931323 GiB ephemeral storage" in out, out + err
    rc, out, err = _check(capsys, str(tmp_path / "rc.yaml"), "--node-type", "m6i.4xlarge:100")
    assert rc == 2 and "cpu 60 a pod, 15.39 allocatable" in out


@pytest.mark.parametrize("text,value", [("500m", 0.5), ("72Gi", 72 * 2 ** 30), ("11", 11.0), ("1e3", 1000.0),
                                        ("100M", 1e8), ("0.5", 0.5)])
def test_quantity(text, value):
    assert quantity(text) == pytest.approx(value)


def test_ephemeral_storage_reserve():
    """The clouds' reserve on the root disk: 10% eviction threshold plus 1 GiB on EKS, plus
    min(50%, 6 GiB + 35%, 100 GiB) on GKE; disk_for inverts it."""
    eks, gke = nt.NODE_TYPES["p4d.24xlarge"], nt.NODE_TYPES["a2-highgpu-8g"]
    assert nt.ephemeral_gib(eks) == pytest.approx(20 * 0.9 - 1)
    assert nt.ephemeral_gib(gke, 1000) == pytest.approx(900 - 100)
    assert nt.ephemeral_gib(gke, 100) == pytest.approx(90 - 41)
    for node in (eks, gke):
        assert nt.ephemeral_gib(node, nt.disk_for(node, 544)) == pytest.approx(544, abs=1e-6)
