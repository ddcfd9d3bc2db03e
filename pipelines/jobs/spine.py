"""The spine every shard job runs on: plan -> stream -> drain -> finish.

    plan     expand the shards (clashing names refused), the run id from ONE function over
             the job's options (every option that changes results, none that only schedules)
             plus what the job resolved (model ids, checkpoint hashes, translator ids, text
             files), the shards already done, the manifest written as "running"
    stream   the read tasks and the chain of model actors, sized by one ActorPlan; the model
             actors write each shard's files where they computed its rows
             (stages.shard_writer, under the one rule of io.layout.commit_shard)
    drain    one small record per shard reaches the driver, stall-guarded: the shard is done;
             a stream that ends with a shard missing, or whose files could not be written,
             is restarted over the shards not done (a rerun resumes too)
    finish   the manifest, complete

A job (audit, steer, index, fit) is its options, its actors and its writers.
"""
from __future__ import annotations

import dataclasses
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

from pipelines.errors import BadInput, RunFailed
from pipelines.io.layout import check_run_id, derive_run_id
from pipelines.io.manifest import code_version, load_manifest, utc_now, write_manifest
from pipelines.options import identity
from pipelines.stages.actor_pool import ACTOR_REMOTE_ARGS, DEFAULT_GPU_ACTOR_THREADS, actor_pool

log = logging.getLogger("sing.spine")


# ----------------------------------------------------------------------------- plan


@dataclass
class Plan:
    kind: str
    run_id: str
    out: str
    shards: list[str]  # every shard of the run, as paths/URLs
    names: list[str]  # their names (file stems), which key the output files
    done: set[str]  # names of the shards finished by an earlier attempt
    manifest: dict
    manifest_file: str | None = None  # default OUT/runs/<run_id>.json
    t0: float = field(default_factory=time.perf_counter)
    done_now: Callable[[str], set] | None = None  # the finished shards, listed afresh

    def refresh(self) -> None:
        """Add the shards whose files landed although their records never reached the driver
        (an attempt that ended between the two), so a restart does not write them again."""
        if self.done_now:
            self.done |= set(self.done_now(self.run_id)) & set(self.names)

    def save(self) -> None:
        if self.manifest_file:
            from pipelines.io.layout import write_json_atomic

            write_json_atomic(self.manifest, self.manifest_file)
        else:
            write_manifest(self.out, self.run_id, self.manifest)

    @property
    def todo(self) -> list[str]:
        return [s for s, n in zip(self.shards, self.names) if n not in self.done]


def run_id_for(kind: str, opts, resolved: dict) -> str:
    """THE run id: a hash of the options that change results (options.identity) with what the
    job resolved from them in their place (e.g. shard names for shard globs, model ids and
    checkpoint hashes for MODEL strings). A given --run-id wins."""
    if getattr(opts, "run_id", None):
        return check_run_id(opts.run_id)
    return derive_run_id(kind, {**identity(opts), **resolved})


def expand(shard_globs) -> tuple[list[str], list[str]]:
    from pipelines.io.shards import expand_shards, shard_name

    shards = expand_shards(shard_globs)
    names = [shard_name(s) for s in shards]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise BadInput(f"two shards share a file name ({', '.join(dup[:3])}); shard names key the output files")
    return shards, names


def plan(kind: str, opts, resolved: dict, done_now: Callable[[str], set], manifest: dict,
         shards: tuple[list[str], list[str]] | None = None, *, run_id: str | None = None,
         manifest_file: str | None = None) -> Plan:
    """done_now(run_id): the names of the shards an earlier attempt finished (from listings:
    io.layout.done_shards). A job with one output per directory (the image index) passes its
    own run_id and manifest_file."""
    shards, names = shards or expand(opts.shards)
    run_id = run_id or run_id_for(kind, opts, {**resolved, "shards": names})
    done = set(done_now(run_id)) & set(names)
    config = {f.name: getattr(opts, f.name) for f in dataclasses.fields(opts)}
    man = {"kind": kind, "status": "running", "started_at": utc_now(), "code_version": code_version(),
           **manifest, "config": {**config, "argv": sys.argv},
           "shards": {"total": len(shards), "skipped_done": len(done), "todo": len(shards) - len(done)},
           "shard_paths": dict(zip(names, shards))}  # where each image's bytes are (sing report's galleries)
    if manifest_file:
        from pipelines.io.layout import read_json

        previous = read_json(manifest_file)
    else:
        previous = load_manifest(opts.out, run_id)
    if previous:
        man["resumed_from"] = {k: previous.get(k) for k in ("started_at", "status", "stage_seconds")}
    p = Plan(kind, run_id, opts.out, shards, names, done, man, manifest_file, done_now=done_now)
    p.save()
    log.info("%s run %s: %d shards, %d already done, %d to do", kind, run_id, len(shards), len(done),
             len(shards) - len(done))
    return p


# ----------------------------------------------------------------------------- stream


CPU_ACTOR_CPUS = 0.5  # a CPU model actor's Ray CPUs when there is room


@dataclass(frozen=True)
class ActorPlan:
    """How the model actors of one stream are sized (one rule for every job).

    GPUs: actors_per_gpu processes per GPU per model (time-sliced), each running
    actor_threads batches at once on its own CUDA streams; the GPU is shared by the models
    of the chain. CPUs: one actor per model at half a CPU (two 1-CPU actors on a 2-core
    machine starve the read tasks forever), using every core for the forward. n_actors is
    per model: the stream runs n_models pools of that size. Inside a run (retry) the plan is
    placed on the nodes alive now (pipelines.stages.capacity): waited for, or shrunk."""

    n_actors: int
    threads: int
    gpus_per_actor: float
    cpus_per_actor: float
    torch_threads: int | None
    n_models: int = 1

    @classmethod
    def resolve(cls, opts, n_models: int = 1) -> "ActorPlan":
        from pipelines.stages.capacity import placed
        from pipelines.stages.ray_session import ensure_ray

        ensure_ray()  # sizing reads the cluster's resources
        return placed(lambda: cls.sized(opts, n_models))

    @classmethod
    def sized(cls, opts, n_models: int = 1) -> "ActorPlan":
        """The plan for the cluster's resources now, before placement."""
        from pipelines.stages.ray_session import actor_gpus, cluster_cpus

        gpus = actor_gpus(opts.device)
        per_gpu = opts.actors_per_gpu if gpus else 1
        n = opts.num_actors or max(1, int(gpus) * per_gpu if gpus else 1)
        threads = opts.actor_threads or (DEFAULT_GPU_ACTOR_THREADS if gpus else 1)
        share = min(1.0, gpus / n) / n_models if gpus else 0.0
        cpus = cluster_cpus()
        torch_threads = opts.threads or (None if gpus else max(1, int(cpus)))
        # CPU actors: half a CPU each, less when many models' pools must share the cores the
        # read task leaves (Ray's CPUs are scheduling tokens: the forward uses torch_threads)
        per_cpu = min(CPU_ACTOR_CPUS, max(0.01, (cpus - 1.0) / (n * n_models))) if cpus > 1 else CPU_ACTOR_CPUS
        return cls(n, threads, share, 1.0 if gpus else round(per_cpu, 4), torch_threads, n_models)

    def as_manifest(self) -> dict:
        return {"actors_per_model": self.n_actors, "threads_per_actor": self.threads,
                "gpus_per_actor": self.gpus_per_actor}


@dataclass
class ActorSpec:
    cls: type  # a stages.actors class
    kwargs: dict  # its constructor arguments (device, threads and precision are added)


def stream(todo: list[str], opts, views, actors: list[ActorSpec], ap: ActorPlan, drop: list[str],
           read_kwargs: dict | None = None):
    """The Ray Data stream over the shards `todo` (usually plan.todo): read tasks, then each
    actor in turn (the last one drops the image columns and, when the actors write, hands on
    the records alone). Returns the Dataset."""
    ds = read_stage(todo, opts, views, read_kwargs)
    for i, spec in enumerate(actors):
        # window: each model's forward batches fixed by position in the shard (stages.windows)
        kwargs = {"device": opts.device, "threads": ap.torch_threads, "window": opts.batch_size, **spec.kwargs}
        if i == len(actors) - 1:
            kwargs["drop_views"] = drop
            parts = [kw for _, kw in spec.kwargs.get("parts", [])] or [spec.kwargs]
            if parts[-1].get("writer") is not None:
                kwargs["final"] = True
        ds = ds.map_batches(spec.cls, batch_size=opts.batch_size, compute=actor_pool(ap.n_actors, ap.threads),
                            num_cpus=ap.cpus_per_actor, num_gpus=ap.gpus_per_actor, fn_constructor_kwargs=kwargs,
                            **ACTOR_REMOTE_ARGS)
    return ds


def read_stage(todo: list[str], opts, views, read_kwargs: dict | None = None):
    """The read tasks: each reads opts.shards_per_task shards (in `todo` order) into one block,
    whole shards only (no block splitting: stages.ray_session), so the model actors' tasks take
    as many whole shards each: fewer tasks, less driver CPU per image."""
    from pipelines.stages.ray_session import configure_data_context, ensure_ray
    from pipelines.stages.read import read_decode

    ray = ensure_ray()
    configure_data_context(opts.progress, opts.buffer_gb)
    ds = ray.data.from_items([{"path": s} for s in todo], override_num_blocks=len(todo))
    return ds.map_batches(read_decode, batch_size=opts.shards_per_task, num_cpus=1,
                          fn_kwargs={"views": views, **read_options(opts), **(read_kwargs or {})})


def chained(specs: list[ActorSpec]) -> list[ActorSpec]:
    """Several models' actors as one stage of ChainActors (one actor task per shard instead of
    one per model); one model's as it is."""
    from pipelines.stages.actors import ChainActor

    if len(specs) < 2:
        return specs
    return [ActorSpec(ChainActor, {"parts": [(s.cls, s.kwargs) for s in specs]})]


def read_options(opts) -> dict:
    """The read tasks' limits, passed on as declared (options.ReadOptions): a new read option
    needs no change here."""
    from pipelines.options import ReadOptions

    return {f.name: getattr(opts, f.name) for f in dataclasses.fields(ReadOptions)}


def drain(ds, opts, what: str, writers: list[str], on_shard: Callable[[str, int, dict, int], None],
          on_batch: Callable[[dict], None] | None = None, abort=None, todo: list[str] = ()) -> dict[str, str]:
    """The stream's records: one per shard (its end row), once every model actor wrote the
    shard's files (stages.shard_writer; `writers`: their prefixes). on_shard(shard, rows,
    batch, i) for each shard written; on_batch(batch) for every batch of records.
    Stall-guarded (opts.stall_timeout); abort() may end it. Returns {shard: why} of the shards
    whose files could not be written; a shard of `todo` (paths) with no record fails the run."""
    from pipelines.console import job_progress
    from pipelines.io.shards import shard_name
    from pipelines.stages.watchdog import with_stall_timeout

    seen, failed = set(), {}
    label = what.removeprefix("the ").removesuffix(" stream")
    with job_progress(label, todo, opts.progress) as bar:  # a tqdm bar in a terminal only
        for batch in with_stall_timeout(batches(ds), opts.stall_timeout, what, abort):
            if on_batch:
                on_batch(batch)
            for i, shard in enumerate(batch["shard"]):
                shard, rows = str(shard), int(batch["n_rows"][i])
                seen.add(shard)
                why = next((str(batch[f"{p}/write_error"][i]) for p in writers if batch[f"{p}/write_error"][i]), "")
                if why:
                    failed[shard] = why
                    log.warning("%s: %s", what, why)
                    continue
                on_shard(shard, rows, batch, i)
                bar.add(rows)
                bar.shard_done(rows)
    missing = sorted({shard_name(s) for s in todo} - seen)
    if missing:
        raise RunFailed(f"{what} ended with incomplete shards {missing[:10]}; rerun to retry them")
    return failed


def retry(opts, what: str, attempt: Callable, record: list, progress: Callable[[], int] | None = None):
    """attempt(abort) until it succeeds, restarting on what a restart can cure (a lost node,
    actor or object, a stall), up to opts.max_attempts. abort() names a node that died during
    the attempt (checked by the drain every second). Each attempt and what ended it go into
    `record`; progress() counts what an attempt got done (shards written). The actor plans
    resolved inside an attempt are placed on the nodes alive then (stages.capacity): a
    cluster too small for them is waited for up to opts.resource_wait seconds, then the run
    ends (Unplaceable, exit 1); one with room for fewer actors runs a smaller pool."""
    from pipelines.stages.capacity import RunCapacity, active
    from pipelines.stages.healing import NodeMonitor, executors, stop_executors, trigger_of
    from pipelines.stages.ray_session import ensure_ray

    ensure_ray()
    trigger, guard = None, RunCapacity(what, opts.resource_wait)
    for n in range(1, opts.max_attempts + 1):
        rec = {"what": what, "attempt": n, "started_at": utc_now()}
        record.append(rec)
        before, monitor, done0 = executors(), None, progress() if progress else 0
        try:
            monitor = NodeMonitor().start()
            guard.attempt(rec, monitor)
            with active(guard):
                out = attempt(monitor.reason)
            rec.update(status="complete", finished_at=utc_now())
            if monitor.reason():  # died after the last result: nothing was left to redo
                rec["node_lost_after_the_last_result"] = monitor.reason()
            return out
        except Exception as exc:
            trigger = trigger_of(exc)
            rec.update(finished_at=utc_now(), trigger=trigger or f"{type(exc).__name__}: {str(exc)[:300]}",
                       status="failed" if trigger is None or n == opts.max_attempts else "restarted")
            if trigger is None:
                raise
            log.warning("%s, attempt %d of %d: %s; restarting", what, n, opts.max_attempts, trigger)
        finally:
            if progress:
                rec["shards_written"] = progress() - done0
            if monitor:
                monitor.stop()
            stop_executors(before)
    raise RunFailed(f"{what} did not finish in {opts.max_attempts} attempts (last: {trigger})")


def run(plan: Plan, opts, what: str, build: Callable[[list[str]], object], writers: list[str],
        on_batch: Callable[[dict], None] | None = None,
        on_shard: Callable[[str, int, dict, int], None] | None = None) -> None:
    """stream + drain, healing: a lost node, actor or object, or a shard whose files could not
    be written, ends the attempt and the stream restarts over the shards not yet written
    (finished shards are kept, a partial one is redone from its start: nothing is lost or
    written twice), up to opts.max_attempts. The attempts and what ended each go into the
    manifest (`attempts`). writers: the prefixes of the actors that write (their records)."""
    from pipelines.stages.watchdog import ShardWritesFailed

    def shard_done(shard: str, rows: int, batch: dict, i: int) -> None:
        plan.done.add(shard)
        if on_shard:
            on_shard(shard, rows, batch, i)

    attempts = [0]

    def attempt(abort):
        attempts[0] += 1
        if attempts[0] > 1:
            plan.refresh()
        todo = plan.todo
        if todo:
            failed = drain(build(todo), opts, what, writers, shard_done, on_batch, abort, todo)
            if failed:
                raise ShardWritesFailed(f"{len(failed)} shard(s) could not be written, e.g. "
                                        f"{next(iter(failed.values()))}")

    try:
        retry(opts, what, attempt, plan.manifest.setdefault("attempts", []), lambda: len(plan.done))
    except RunFailed as exc:
        raise RunFailed(f"{exc}; {len(plan.done)} of {len(plan.names)} shards are on disk: rerun the same command "
                        "to resume") from exc
    finally:
        plan.save()


def batches(ds) -> Iterator[dict]:
    return ds.iter_batches(batch_size=None, batch_format="numpy")


def finish(plan: Plan, **updates) -> dict:
    plan.manifest.update({"status": "complete", "finished_at": utc_now(),
                          "wall_seconds": round(time.perf_counter() - plan.t0, 3), **updates, "run_id": plan.run_id})
    plan.save()
    return plan.manifest
