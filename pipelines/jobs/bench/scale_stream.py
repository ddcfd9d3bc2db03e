"""The audit's stream with any model actors (bench-scale's stand-ins): plan, read stage,
chained actors, the audit's writer, healing spine."""
from __future__ import annotations

from dataclasses import dataclass

from pipelines.options import OutputOptions, StreamOptions


@dataclass
class ScaleOptions(StreamOptions, OutputOptions):
    pass


def scale_stream(shards: list[str], out: str, models: int, concepts: int, actors: int, batch_size: int, probe,
                 actor_spec) -> dict:
    from pipelines.io.layout import is_done
    from pipelines.jobs import spine
    from pipelines.models.imagenet_classes import imagenet_class_names
    from pipelines.models.preprocess import PreprocessSpec
    from pipelines.stages.collect import ModelTarget, ShardCollector
    from pipelines.stages.read import view_column

    opts = ScaleOptions(shards=shards, out=out, batch_size=batch_size, num_actors=actors, progress=False,
                        stall_timeout=600, threads=1)
    names = [f"concept {j}" for j in range(concepts)]
    slugs = [f"standin-{i}" for i in range(models)]
    plan = spine.plan("bench-scale", opts, {"models": slugs, "concepts": names},
                      lambda run, n: all(is_done(out, s, run, n) for s in slugs), {"concepts": names})
    view = PreprocessSpec(size=8, resize=8, interpolation="bilinear", mean=(0.0,) * 3, std=(1.0,) * 3)
    targets = [ModelTarget(f"m{i}", s, list(imagenet_class_names()), 1024, names) for i, s in enumerate(slugs)]
    collector = ShardCollector(out, plan.run_id, targets, total=len(plan.todo))
    specs = [actor_spec(i) for i in range(models)]

    def build(todo):
        return spine.stream(todo, opts, [view], specs, spine.ActorPlan.resolve(opts, models), [view_column(view)])

    def on_batch(b):
        collector.timings(b)
        probe.add(int((b["status"] != "end").sum()))

    spine.run(plan, opts, "the scale stream", build, collector.write, on_batch)
    return {"shards_written": len(collector.done_shards), "rows_written": collector.rows_written}
