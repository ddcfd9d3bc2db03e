"""How many model actors, and how many batches each runs at once (no Ray import until used)."""
from __future__ import annotations

# Measured on one H100 (16 cores, ResNet50 bf16, batch 256, --decode device; docs/bench/h100_*):
# pipeline / bare forward 0.49 with 4 actors x 1 thread, 0.82 with 4 x 2, 0.93 with 2 x 4,
# 0.39 with 1 x 8 (one process: the GIL). Several threads per actor overlap decode and forward
# in one CUDA context; a second process keeps Python work off the one GIL.
DEFAULT_ACTORS_PER_GPU = 2
DEFAULT_GPU_ACTOR_THREADS = 4


def actor_pool(n_actors: int, threads: int = 1):
    """A fixed pool of model actors; with threads > 1 each runs that many batches at once
    (Ray's true multi-threading: the UDF itself runs concurrently, not only the batching)."""
    from ray.data import ActorPoolStrategy

    if threads <= 1:
        return ActorPoolStrategy(min_size=n_actors, max_size=n_actors)
    return ActorPoolStrategy(min_size=n_actors, max_size=n_actors, max_concurrent_calls_per_actor=threads,
                             enable_true_multi_threading=True)
