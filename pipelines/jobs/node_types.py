"""Allocatable resources of the node types the cluster/ manifests are sized for, from the
providers' documented reserve formulas (the arithmetic is written out in cluster/README.md,
"Pod sizes from allocatable resources"; `sing cluster check` and the tests check the
manifests against it), and the labels those nodes carry (what the manifests' node affinity
selects on).

- CPU reserve (EKS AL2023 nodeadm and GKE alike): 6% of the first core, 1% of the second,
  0.5% of cores 3-4, 0.25% of every core above 4.
- Memory reserve, EKS (nodeadm `getMemoryMebibytesToReserve`): 11 MiB x maxPods + 255 MiB,
  maxPods = ENIs x (IPv4 addresses per ENI - 1) + 2 (VPC CNI without prefix delegation).
- Memory reserve, GKE: 25% of the first 4 GiB, 20% of the next 4, 10% of the next 8, 6% of
  the next 112, 2% of everything above 128 GiB.
- Both: a hard eviction threshold of 100 MiB (memory.available).
- Ephemeral storage (the kubelet's root disk; emptyDirs and container logs live there):
  both keep a hard eviction threshold of 10% (nodefs.available); EKS reserves 1 GiB more
  (kubeReserved), GKE min(50%, 6 GiB + 35%, 100 GiB) of the boot disk. Default disks: 20 GiB
  (EKS managed node groups) and 100 GB (GKE node pools); a node pool's own size is given
  as NAME:GIB (cluster_check).
- DaemonSets (kube-proxy, CNI, NVIDIA device plugin / DCGM exporter, CSI node drivers,
  logging and metrics agents): an assumption, DAEMONSETS below; read the real figure off
  `kubectl describe node` ("Allocated resources") and adjust.
"""
from __future__ import annotations

from dataclasses import dataclass

GIB = 2 ** 30
MIB = 2 ** 20


DEFAULT_DISK_GIB = {"eks": 20.0, "gke": 100e9 / GIB}  # EKS managed node group, GKE node pool (100 GB)
# Labels that mark a GPU node (cluster/README.md, "Node pools"): NVIDIA GPU Feature Discovery
# (part of the GPU Operator) sets the first on any cloud, GKE sets the second on every GPU node;
# the kubelet's well-known instance-type label covers EKS nodes without GPU Feature Discovery.
GPU_PRESENT, GKE_ACCELERATOR, INSTANCE_TYPE = "nvidia.com/gpu.present", "cloud.google.com/gke-accelerator", \
    "node.kubernetes.io/instance-type"


@dataclass(frozen=True)
class NodeType:
    name: str
    cloud: str          # "eks" or "gke"
    vcpu: int
    mem_gib: float      # capacity in GiB
    gpus: int
    max_pods: int = 110  # EKS: ENIs x (IPs per ENI - 1) + 2
    accelerator: str = ""  # GKE's cloud.google.com/gke-accelerator value

    @property
    def role(self) -> str:
        return "gpu" if self.gpus else "cpu"

    def labels(self, gpu_feature_discovery: bool = False) -> dict[str, str]:
        """The labels a node of this type carries (with NVIDIA GPU Feature Discovery or not)."""
        out = {INSTANCE_TYPE: self.name, "kubernetes.io/os": "linux"}
        if self.gpus and gpu_feature_discovery:
            out[GPU_PRESENT] = "true"
        if self.gpus and self.cloud == "gke":
            out[GKE_ACCELERATOR] = self.accelerator
        return out


NODE_TYPES = {n.name: n for n in (
    # AWS lists memory in GiB. ENIs / IPs per ENI from amazon-eks-ami nodeadm instance-info.jsonl.
    NodeType("p4d.24xlarge", "eks", 96, 1152, 8, max_pods=15 * 49 + 2),
    NodeType("p5.48xlarge", "eks", 192, 2048, 8, max_pods=2 * 49 + 2),
    NodeType("c6i.16xlarge", "eks", 64, 128, 0, max_pods=15 * 49 + 2),
    NodeType("m6i.4xlarge", "eks", 16, 64, 0, max_pods=8 * 29 + 2),
    # GCE lists "680 GB" / "256 GB" / "64 GB"; read as 10^9 bytes (the smaller reading, so a
    # pod size that fits here fits either way).
    NodeType("a2-highgpu-8g", "gke", 96, 680e9 / GIB, 8, accelerator="nvidia-tesla-a100"),
    NodeType("n2-standard-64", "gke", 64, 256e9 / GIB, 0),
    NodeType("n2-standard-16", "gke", 16, 64e9 / GIB, 0),
)}

# (vCPU, GiB) per node taken by DaemonSets: an assumption, see the module docstring.
DAEMONSETS = {"gpu": (1.0, 4.0), "cpu": (0.5, 2.0)}
EVICTION_GIB = 100 * MIB / GIB


def cpu_reserve(vcpu: int) -> float:
    milli, total = 0.0, vcpu * 1000
    for lo, hi, pct in ((0, 1000, 0.06), (1000, 2000, 0.01), (2000, 4000, 0.005), (4000, total, 0.0025)):
        milli += max(0, min(total, hi) - lo) * pct
    return milli / 1000


def mem_reserve_gib(node: NodeType) -> float:
    if node.cloud == "eks":
        return (11 * node.max_pods + 255) * MIB / GIB
    reserve, left = 0.0, node.mem_gib
    for size, pct in ((4, 0.25), (4, 0.20), (8, 0.10), (112, 0.06), (float("inf"), 0.02)):
        step = min(left, size)
        reserve, left = reserve + step * pct, left - step
    return reserve


def allocatable(node: NodeType) -> tuple[float, float]:
    """(vCPU, GiB) the kubelet reports as allocatable."""
    return node.vcpu - cpu_reserve(node.vcpu), node.mem_gib - mem_reserve_gib(node) - EVICTION_GIB


def ephemeral_gib(node: NodeType, disk_gib: float | None = None) -> float:
    """Allocatable ephemeral storage (GiB) with a root disk of disk_gib (default: the cloud's)."""
    disk = DEFAULT_DISK_GIB[node.cloud] if disk_gib is None else disk_gib
    reserve = 1.0 if node.cloud == "eks" else min(0.5 * disk, 6.0 + 0.35 * disk, 100.0)
    return max(0.0, disk - 0.1 * disk - reserve)


def disk_for(node: NodeType, ephemeral: float) -> float:
    """The smallest root disk (GiB) that gives `ephemeral` GiB of allocatable ephemeral storage."""
    lo, hi = 0.0, 1.0
    while ephemeral_gib(node, hi) < ephemeral:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if ephemeral_gib(node, mid) < ephemeral else (lo, mid)
    return hi


def for_pods(node: NodeType) -> tuple[float, float]:
    """(vCPU, GiB) left for sing's pods once the DaemonSets are placed."""
    cpu, mem = allocatable(node)
    ds_cpu, ds_mem = DAEMONSETS[node.role]
    return cpu - ds_cpu, mem - ds_mem


if __name__ == "__main__":  # the table in cluster/README.md: python -m pipelines.jobs.node_types
    for n in NODE_TYPES.values():
        cpu, mem = allocatable(n)
        pc, pm = for_pods(n)
        per = max(n.gpus, 1)
        print(f"{n.name:15s} {n.vcpu:4d} vCPU {n.mem_gib:8.2f} GiB  reserve {cpu_reserve(n.vcpu):.2f} vCPU "
              f"{mem_reserve_gib(n) + EVICTION_GIB:6.2f} GiB  allocatable {cpu:6.2f} / {mem:8.2f}  "
              f"for pods {pc:6.2f} / {mem - DAEMONSETS[n.role][1]:8.2f}  per GPU {pc / per:5.2f} / {pm / per:7.2f}")
