# The image every cluster manifest in cluster/ runs (Ray cluster launcher, KubeRay RayJob,
# RayCronJob and the CronJob fallback). Build from the repository root:
#
#   docker build -t ghcr.io/your-org/sing:0.1.0 .
#
# - CUDA user-space base; torch==2.14.1 from PyPI brings its own CUDA 13 libraries, so the
#   host (or node) NVIDIA driver must support CUDA 13 (driver >= 580).
# - No weights are baked in: timm / open_clip / torchvision download into HF_HOME /
#   TORCH_HOME (a volume) at run time, checkpoints are read from their paths or URLs.
# - Runs as the non-root user `sing` (uid/gid 1000). No ENTRYPOINT: KubeRay and the Ray
#   cluster launcher supply their own commands (`ray start ...`, `sing audit ...`).
FROM nvidia/cuda:13.0.1-cudnn-runtime-ubuntu22.04

# Ray must be the same version on every node and in the KubeRay manifests (`rayVersion`).
ARG RAY_VERSION=2.60.0

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LANG=C.UTF-8 \
    LC_ALL=C.UTF-8

# python3.11 (the project requires 3.11), rsync (the Ray cluster launcher copies its
# bootstrap files into the container with `rsync -e 'docker exec -i'`), wget (KubeRay's
# injected readiness/liveness probes call it), ca-certificates (S3/GCS/HF over TLS).
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3.11 python3.11-venv ca-certificates rsync wget \
    && rm -rf /var/lib/apt/lists/*

# One virtual environment on PATH for every shell (also login shells, which the Ray
# cluster launcher uses).
RUN python3.11 -m venv /opt/venv \
    && echo 'export PATH=/opt/venv/bin:$PATH' > /etc/profile.d/sing-venv.sh
ENV PATH=/opt/venv/bin:$PATH

# Only what `pip install .` needs: no tests, results, caches or weights (see .dockerignore).
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sing_ops ./sing_ops
COPY pipelines ./pipelines
COPY queries ./queries

# The project, plus what a cluster needs beyond it: ray[default] (dashboard and job
# server: KubeRay submits RayJobs through them), s3fs / gcsfs (fsspec URLs for shards,
# translators, results), boto3 (the AWS autoscaler running on the launcher's head node).
RUN pip install --upgrade pip \
    && pip install . "ray[default,data]==${RAY_VERSION}" s3fs gcsfs boto3 \
    && sing --help > /dev/null

# Non-root user; caches on a volume it owns.
RUN groupadd --gid 1000 sing \
    && useradd --uid 1000 --gid 1000 --create-home --shell /bin/bash sing \
    && mkdir -p /cache/hf \
    && chown -R 1000:1000 /cache
# HOME in the image config: the Ray cluster launcher reads it (`docker inspect`) to place
# its bootstrap files, and falls back to /root when it is missing.
ENV HOME=/home/sing \
    HF_HOME=/cache/hf \
    TORCH_HOME=/cache/hf/torch \
    HF_HUB_DISABLE_TELEMETRY=1 \
    RAY_USAGE_STATS_ENABLED=0
VOLUME ["/cache/hf"]

USER 1000:1000
WORKDIR /home/sing
# Reset the base image's entrypoint script: commands run exactly as given.
ENTRYPOINT []
CMD ["bash"]
