# The image every cluster manifest in cluster/ runs (Ray cluster launcher, KubeRay RayJob,
# RayCronJob and the CronJob fallback). Build from the repository root:
#
#   docker build -t ghcr.io/your-org/sing:0.1.0 .
#
# - Base: Debian slim with CPython 3.11, no CUDA image. torch==2.14.1 from PyPI brings its
#   CUDA 13 user-space libraries as wheels (nvidia-cublas, nvidia-cudnn-cu13,
#   nvidia-nccl-cu13, nvidia-cufft, nvidia-cusparse, nvidia-nvjitlink, ...) and torchvision
#   bundles libnvjpeg and libcudart for decode_jpeg on CUDA, so a CUDA base image only
#   duplicated ~3 GB of libraries. The one library that must come from the host is the
#   driver's libcuda, which the NVIDIA container toolkit / device plugin mounts in: GPU hosts
#   need an NVIDIA driver >= 580 (CUDA 13).
# - Layers, slowest-changing first: OS packages and the user; the pinned dependencies,
#   installed from pyproject.toml + constraints.txt alone (a code change reuses this
#   multi-GB layer); then the source, installed without dependencies.
# - Versions: every Python package is pinned by constraints.txt, the same file the tests
#   install with (README "Set-up", .ci/run).
# - No weights are baked in: timm / open_clip / torchvision download into HF_HOME /
#   TORCH_HOME (a volume) at run time, checkpoints are read from their paths or URLs.
# - Runs as the non-root user `sing` (uid/gid 1000). No ENTRYPOINT: KubeRay and the Ray
#   cluster launcher supply their own commands (`ray start ...`, `sing audit ...`).
FROM python:3.11-slim-bookworm

# Ray must be the same version on every node and in the KubeRay manifests (`rayVersion`);
# constraints.txt pins the same version (pip fails the build if they differ).
ARG RAY_VERSION=2.60.0

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LANG=C.UTF-8 \
    LC_ALL=C.UTF-8 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    LD_LIBRARY_PATH=/usr/local/nvidia/lib:/usr/local/nvidia/lib64
# NVIDIA_DRIVER_CAPABILITIES: which driver libraries the NVIDIA container toolkit mounts
# (compute: libcuda; utility: nvidia-smi). Which GPUs a container sees is not set here: the
# Kubernetes device plugin sets NVIDIA_VISIBLE_DEVICES per pod, the Ray launcher passes it
# in docker.run_options. LD_LIBRARY_PATH: GKE mounts the driver at /usr/local/nvidia (as
# the nvidia/cuda images, which set the same path); elsewhere it does not exist.

# openssh-client + rsync: the Ray cluster launcher's autoscaler runs in the head container
# and sets up every worker with ssh and rsync from there (and copies its bootstrap files
# into containers with `rsync -e 'docker exec -i'`); wget: KubeRay's exec probes;
# ca-certificates: S3/GCS/HF over TLS.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        openssh-client rsync wget ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# Non-root user; caches on volumes it owns (HF/torch weights, sing's URL download cache).
RUN groupadd --gid 1000 sing \
    && useradd --uid 1000 --gid 1000 --create-home --shell /bin/bash sing \
    && mkdir -p /cache/hf /cache/sing \
    && chown -R 1000:1000 /cache

# One virtual environment on PATH for every shell (also login shells, which the Ray
# cluster launcher uses).
RUN python3.11 -m venv /opt/venv \
    && echo 'export PATH=/opt/venv/bin:$PATH' > /etc/profile.d/sing-venv.sh
ENV PATH=/opt/venv/bin:$PATH

# Dependencies first, from pyproject.toml and constraints.txt only: the project's
# dependencies plus its `cluster` extra (ray[default]: the dashboard and job server KubeRay
# submits RayJobs through; s3fs / gcsfs: fsspec URLs; boto3: the AWS autoscaler on the
# launcher's head node) and its `hf` extra (transformers: the `hf:` MODEL source, the paper's
# DINOv2 classifier; the venv is root-owned, so nothing can be added at run time), listed
# from pyproject.toml with the standard library's tomllib. CI installs the same extras under
# the same constraints (README "Set-up", .ci/run), so a pin conflict fails CI, not the build.
WORKDIR /src
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['cluster'] + p['optional-dependencies']['hf']))" > /tmp/requirements.txt \
    && pip install -c constraints.txt -r /tmp/requirements.txt "ray[default,data]==${RAY_VERSION}" \
    && rm /tmp/requirements.txt

# Then the source (see .dockerignore): only this small layer is rebuilt on a code change.
COPY README.md ./
COPY sing_ops ./sing_ops
COPY pipelines ./pipelines
COPY queries ./queries
RUN pip install --no-deps -c constraints.txt . \
    && pip check \
    && sing --help > /dev/null \
    && python -c "import torchvision.io, ray.dashboard, s3fs, gcsfs, boto3, transformers"

# HOME in the image config: the Ray cluster launcher reads it (`docker inspect`) to place
# its bootstrap files, and falls back to /root when it is missing.
ENV HOME=/home/sing \
    HF_HOME=/cache/hf \
    TORCH_HOME=/cache/hf/torch \
    SING_CACHE=/cache/sing \
    HF_HUB_DISABLE_TELEMETRY=1 \
    RAY_USAGE_STATS_ENABLED=0
VOLUME ["/cache/hf", "/cache/sing"]

USER 1000:1000
WORKDIR /home/sing
ENTRYPOINT []
CMD ["bash"]
