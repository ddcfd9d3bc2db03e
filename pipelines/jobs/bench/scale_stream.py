"""The audit's stream with any model actors (bench-scale's stand-ins): plan, read stage,
chained actors, the audit's writer, healing spine."""
from __future__ import annotations

from dataclasses import dataclass

from pipelines.options import OutputOptions, StreamOptions


@dataclass
class ScaleOptions(StreamOptions, OutputOptions):
    pass


def scale_stream(shards: list[str], out: str, models: int, concepts: int, actors: int, batch_size: int,
                 shards_per_task: int, probe, actor_spec) -> dict:
    """actor_spec(i, view, writer) -> the i-th model's ActorSpec, writing through `writer` (the
    audit's own WriterSpec for a model of 1000 classes and `concepts` concepts)."""
    import functools

    from pipelines.io.layout import done_shards, vocab_file, write_table_atomic
    from pipelines.jobs import spine
    from pipelines.models.imagenet_classes import imagenet_class_names
    from pipelines.models.preprocess import PreprocessSpec
    from pipelines.stages.audit_tables import audit_files, vocab_table
    from pipelines.stages.collect import ShardTally, Writer
    from pipelines.stages.read import view_column
    from pipelines.stages.shard_writer import WriterSpec

    opts = ScaleOptions(shards=shards, out=out, batch_size=batch_size, num_actors=actors, progress=False,
                        shards_per_task=shards_per_task,
                        stall_timeout=600, threads=1)
    names = [f"concept {j}" for j in range(concepts)]
    slugs = [f"standin-{i}" for i in range(models)]
    plan = spine.plan("bench-scale", opts, {"models": slugs, "concepts": names},
                      lambda run: set.intersection(*(done_shards(out, "images", s, run) for s in slugs)),
                      {"concepts": names})
    view = PreprocessSpec(size=8, resize=8, interpolation="bilinear", mean=(0.0,) * 3, std=(1.0,) * 3)
    specs = []
    for i, slug in enumerate(slugs):
        if concepts:
            write_table_atomic(vocab_table(names), vocab_file(out, slug, plan.run_id))
        build = functools.partial(audit_files, out=out, run_id=plan.run_id, slug=slug, prefix=f"m{i}",
                                  class_names=tuple(imagenet_class_names()), null_dim=1024, concepts=bool(concepts))
        specs.append(actor_spec(i, view, WriterSpec(build, frozenset(done_shards(out, "images", slug, plan.run_id)))))
    tally = ShardTally([Writer(f"m{i}", s) for i, s in enumerate(slugs)], total=len(plan.todo))

    def build_stream(todo):
        return spine.stream(todo, opts, [view], spine.chained(specs), spine.ActorPlan.resolve(opts, 1),
                            [view_column(view)])

    def on_batch(b):
        tally.batch(b)
        probe.add(int(b["n_rows"].sum()))

    spine.run(plan, opts, "the scale stream", build_stream, [f"m{i}" for i in range(models)], on_batch, tally.shard)
    return {"shards_written": len(tally.done_shards), "rows_written": tally.rows_written}
