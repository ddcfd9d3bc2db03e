"""How many model actors, and how many batches each runs at once (no Ray import until used)."""
from __future__ import annotations

import warnings

# Several threads per actor overlap one batch's decode with another's forward in one CUDA
# context; a second process keeps Python work off the one GIL (the sweep behind these
# defaults: README "Speed", docs/bench/).
DEFAULT_ACTORS_PER_GPU = 2
DEFAULT_GPU_ACTOR_THREADS = 4

# Ray Data hands every pool actor its constructor (map transformer, DataContext) as objects in
# the object store and, by default, restarts dead actors without limit; Ray cannot restart an
# actor whose creation arguments were lost from the store (ray-project/ray#53727) and says
# so in an error line at every run. A sing run recovers by being rerun (finished shards are
# skipped; the stall watchdog ends a run that stops), so a dead model actor fails the run
# (exit 1) instead of being restarted on a promise Ray cannot keep.
# Ray 2.60 has no named map_batches parameter for max_restarts (the named ones replacing
# **ray_remote_args, ray-project/ray#65227, do not include it), so it goes in ray_remote_args,
# which warns that they are deprecated: silenced for the one call that passes it (spine.stream).
ACTOR_REMOTE_ARGS = {"max_restarts": 0}


def actor_pool(n_actors: int, threads: int = 1):
    """A fixed pool of model actors; with threads > 1 each runs that many batches at once
    (Ray's true multi-threading: the UDF itself runs concurrently, not only the batching)."""
    from ray.data import ActorPoolStrategy

    # after Ray's own filter for its deprecation warnings (set when ray is imported), so it wins
    warnings.filterwarnings("ignore", message=r"`ray_remote_args` is deprecated", module=r"pipelines\.jobs\.spine")

    if threads <= 1:
        return ActorPoolStrategy(min_size=n_actors, max_size=n_actors)
    return ActorPoolStrategy(min_size=n_actors, max_size=n_actors, max_concurrent_calls_per_actor=threads,
                             enable_true_multi_threading=True)
