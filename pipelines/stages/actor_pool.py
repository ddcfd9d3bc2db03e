"""How many model actors, and how many batches each runs at once (no Ray import until used)."""
from __future__ import annotations

# Several threads per actor overlap one batch's decode with another's forward in one CUDA
# context; a second process keeps Python work off the one GIL (the sweep behind these
# defaults: README "Speed", docs/bench/).
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
