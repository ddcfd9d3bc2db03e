"""One place that starts (or joins) Ray, with settings that suit both a laptop and a cluster."""
from __future__ import annotations

import os


def ensure_ray(address: str | None = None, num_cpus: int | None = None, quiet: bool = False):
    """Join RAY_ADDRESS / `address` when given (a cluster), else start a fresh local Ray.

    Already initialised (tests share one session): reuse it. Without an address we pass
    address="local": plain ray.init() would join whatever cluster /tmp/ray/ray_current_cluster
    names (a `ray start` left running, or a stale entry), so a laptop run would silently go
    elsewhere. To join a running `ray start --head`, set RAY_ADDRESS=auto.
    """
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    if ray.is_initialized():
        return ray
    from pipelines.console import ray_logging_level

    address = address or os.environ.get("RAY_ADDRESS")
    kwargs = {"include_dashboard": False, "log_to_driver": not quiet, "logging_level": ray_logging_level()}
    env = worker_env_vars()
    if env:  # e.g. offline: workers on other nodes do not inherit this process's environment
        kwargs["runtime_env"] = {"env_vars": env}
    if address:
        ray.init(address=address, **kwargs)
    else:
        ray.init(address="local", num_cpus=num_cpus, **kwargs)
    return ray


def while_ray_starts(prepare):
    """prepare() in a thread while this thread starts (or joins) Ray; its result. The driver's
    model loading (imports of torch and the model library, seconds) and Ray's start-up
    overlap. Not the other way round: Ray's processes exit with the thread that started them.
    An error of prepare() is raised once Ray is up."""
    from concurrent.futures import ThreadPoolExecutor

    from pipelines import timeline

    with ThreadPoolExecutor(1, thread_name_prefix="sing-prepare") as pool:
        job = pool.submit(prepare)
        ensure_ray()
        timeline.mark("ray_up")
        return job.result()


def worker_env_vars() -> dict[str, str]:
    """Variables the Ray workers get through the job's runtime environment: this process's
    offline decision (pipelines.models.hub), so model actors never retry an unreachable hub. A
    variable the submitted job already sets is left to it (Ray refuses a conflicting one)."""
    import json

    from pipelines.models.hub import ray_env_vars

    env = ray_env_vars()
    try:  # a job submitted with a runtime_env (RayJob, `ray job submit`) passes it here
        job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
        taken = set((job.get("runtime_env") or {}).get("env_vars") or {})
    except (ValueError, AttributeError):
        taken = set()
    return {k: v for k, v in env.items() if k not in taken}


def configure_data_context(progress: bool = True, buffer_gb: float | None = None):
    """buffer_gb caps the object-store bytes Ray Data keeps in flight (read output waiting for
    the model actors). None: Ray's default budget, half the object store, which grows with
    the node's RAM: on a 128 GB GPU node the fast read stage fills several GB ahead of the
    actors, so peak memory grows with the dataset until it reaches that budget."""
    import ray.data

    from pipelines.console import quiet_ray_data

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = False  # shards are written by the actors, in any order
    # no block splitting: a read task's shard leaves as one block, and an actor task's output
    # as one block, so every shard reaches one model actor whole and in order: that actor
    # writes it (pipelines.stages.shard_writer; checked there, never assumed)
    ctx.target_max_block_size = None
    quiet_ray_data(ctx, progress)  # Ray Data's progress only with --verbose (pipelines.console)
    # set every time: the context outlives one job in a long-lived driver
    limit = float("inf") if buffer_gb is None else buffer_gb * 2**30
    ctx.execution_options.resource_limits = ctx.execution_options.resource_limits.copy(object_store_memory=limit)
    return ctx


def cluster_cpus() -> float:
    import ray

    return float(ray.cluster_resources().get("CPU", 1.0))


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))


def actor_gpus(requested_device: str | None) -> float:
    """GPUs the model actors ask Ray for. With no --device, look at the cluster, not at this
    process: on a cluster the driver often runs on a CPU-only head while workers have GPUs.
    --device cuda on a cluster without GPUs is an input error (ValueError), found before
    any actor starts."""
    if requested_device is not None and not str(requested_device).startswith("cuda"):
        return 0.0
    gpus = cluster_gpus()
    if requested_device is not None and not gpus:
        raise ValueError(f"--device {requested_device} but the Ray cluster has no GPUs")
    return gpus
