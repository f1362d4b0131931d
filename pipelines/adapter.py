"""Turn a Stage into a Ray Data `map_batches` call; stages themselves know nothing of Ray.

Stateless stages run as tasks. Stages with a `pool_size` run on a fixed-size actor pool (min =
max: engine start-up is too expensive to autoscale), with `batches_in_flight` batches running
concurrently per actor so a replica always has the next batch in hand. Stages with a
`quarantine_after` hold the rows they work on in the run's crash ledger (pipelines/quarantine.py),
so a row that kills its worker every time is quarantined, not retried forever.
Each batch's time and row counts go to the run's metrics actor (metrics.py), which the run report reads.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import math
import os
import threading
import time
import uuid
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import pyarrow as pa
import ray
from ray.data import ActorPoolStrategy, Dataset

from pipelines.quarantine import (
    SETUP_DEATHS_LIMIT,
    ReplicaCrash,
    SetupDied,
    SharedExclusiveLock,
    WorkerCrash,
    beat,
)
from pipelines.shards import DirectoryColumns
from stages.base import Settlement, Stage
from stages.rows import ERROR_STAGE


def run_stage_batch(stage: Stage, batch: pa.Table, metrics: Any | None) -> pa.Table:
    started = time.perf_counter()
    output = stage.process(batch)
    if metrics is not None:
        new_errors = 0
        if ERROR_STAGE in output.column_names:
            new_errors = sum(1 for value in output.column(ERROR_STAGE).to_pylist() if value == stage.name)
        metrics.record.remote(stage.name, batch.num_rows, time.perf_counter() - started, new_errors)
    return output


def _run_task(batch: pa.Table, stage: Stage, metrics: Any | None, ledger: Any | None = None) -> pa.Table:
    try:
        if ledger is None:
            stage.setup()  # task stages keep setup cheap (imports are cached per worker process)
            return run_stage_batch(stage, batch, metrics)
        return _held_attempt(batch, stage, metrics, ledger)
    finally:
        release_freed_memory()


# The stages this worker process has set up: only its first task of each can die setting up.
_SET_UP_HERE: set[str] = set()


def _held_attempt(batch: pa.Table, stage: Stage, metrics: Any | None, ledger: Any) -> pa.Table:
    """One attempt at a task of a stage whose rows can kill its worker process: the rows it works on
    are held in the ledger (pipelines/quarantine.py), so the attempt Ray Data retries it with knows
    which rows were in the process when it died, or that it died setting up."""
    attempt, node = uuid.uuid4().hex, ray.get_runtime_context().get_node_id()
    ids = batch.column("id").to_pylist()

    def released(rows: pa.Table, row_ids: list[str]) -> pa.Table:
        output = run_stage_batch(stage, rows, metrics)
        ledger.release.remote(attempt, row_ids)
        return output

    def held(rows: pa.Table, row_ids: list[str], _alone: bool) -> pa.Table:  # a process of its own: alone anyway
        ray.get(ledger.hold.remote(attempt, node, row_ids))  # recorded before any work can crash
        return released(rows, row_ids)

    setting_up = stage.name not in _SET_UP_HERE
    crashes, failure = ray.get(ledger.take.remote(attempt, node, ids, setting_up, stage.name))
    if failure is not None:
        raise failure  # the driver reports the ledger's copy (pipelines/pool_watch.py)
    stage.setup()
    if setting_up:
        ray.get(ledger.task_set_up.remote(attempt, keep_held=not crashes))
        _SET_UP_HERE.add(stage.name)
    if not crashes:  # take() holds them
        return released(batch, ids)
    return _suspects_apart(batch, ids, crashes, stage.quarantine_after, held,
                          lambda row, count: _quarantined(row, stage, WorkerCrash(stage.name, count)))


def _suspects_apart(
    batch: pa.Table,
    ids: list[str],
    crashes: dict[str, int],
    quarantine_after: int,
    run: Callable[[pa.Table, list[str], bool], pa.Table],
    quarantine: Callable[[pa.Table, int], pa.Table],
) -> pa.Table:
    """`batch` processed by `run(rows, their ids, alone)`: the rows no crash names together, then each
    suspect (its id in `crashes`) alone, so that a crash names it, or `quarantine`d once it has been
    in `quarantine_after` crashes."""
    if not crashes:
        return run(batch, ids, False)
    clean = [i for i, row_id in enumerate(ids) if row_id not in crashes]
    parts = []
    if clean:
        parts.append(run(batch.take(pa.array(clean, pa.int64())), [ids[i] for i in clean], False))
    for index, row_id in enumerate(ids):
        if row_id in crashes:
            row = batch.slice(index, 1)
            parts.append(quarantine(row, crashes[row_id]) if crashes[row_id] >= quarantine_after
                         else run(row, [row_id], True))
    return pa.concat_tables(parts, promote_options="permissive")


def _quarantined(row: pa.Table, stage: Stage, crash: Exception) -> pa.Table:
    """`row` routed to errors/ by `stage` for `crash`, unprocessed."""
    settlement = Settlement(row)
    settlement.fail(0, stage.name, crash)
    return settlement.apply(row)


_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def release_freed_memory() -> None:
    """Hand the memory a task freed back to the OS before its worker idles: glibc's heap (numpy,
    Python, and Arrow's buffers under WORKER_ENV) and Arrow's pool, which both keep freed pages
    otherwise."""
    trim = getattr(_LIBC, "malloc_trim", None)
    if trim is not None:
        trim(0)
    pa.default_memory_pool().release_unused()


# Arrow's default pool in the pyarrow wheels (mimalloc) keeps in its arena what a task freed, in
# the worker that freed it: between tasks an idle Ray worker held 110-230 MiB there, which neither
# malloc_trim nor Arrow's release_unused() returned, and Ray keeps several workers idle. On the C
# allocator a large buffer goes back to the OS when freed and the rest is trimmed after each task
# (release_freed_memory): a 6,400-row run's footprint fell by a quarter at the same speed
# (bench/README.md, "Arrow's allocator"). Arrow reads the variable when it loads, so it is set
# for the job's workers as they start.
#
# glibc gives the threads that allocate arenas of their own, up to 8 per core, and a page of an
# arena with one live chunk left stays resident through malloc_trim: a task worker kept a minute
# between tasks (jobs/runtime.py RAY_SYSTEM_CONFIG) grew to 300-354 MiB private, 157 MiB of it in
# 86 arena mappings. Two arenas: a 64,000-row run's footprint 2,502 against 3,233 MiB, its second
# half 1.01 of its first (1.06), in the same wall time (bench/README.md, "Allocator arenas").
WORKER_ENV = {"ARROW_DEFAULT_MEMORY_POOL": "system", "MALLOC_ARENA_MAX": "2"}


def worker_env() -> dict[str, str]:
    """The environment variables the job's Ray workers start with (a `runtime_env`'s env_vars):
    WORKER_ENV, less those the user set (theirs win, and Ray refuses a job's and a driver's
    runtime_env that disagree)."""
    return {name: value for name, value in WORKER_ENV.items() if name not in os.environ}


class _ActorStage:
    def __init__(self, stage: Stage, metrics: Any | None, ledger: Any | None) -> None:
        self.stage = stage
        self.metrics = metrics
        self.ledger = ledger if stage.quarantine_after else None
        self.lock = SharedExclusiveLock()
        context = ray.get_runtime_context()
        self.actor = context.get_actor_id()
        self.stopped = threading.Event()
        if self.ledger is not None:
            if context.was_current_actor_reconstructed:
                setup_deaths = ray.get(self.ledger.restarted.remote(self.actor))
                if setup_deaths >= SETUP_DEATHS_LIMIT:
                    error = SetupDied(stage.name, setup_deaths)
                    ray.get(self.ledger.fail.remote(error))
                    raise error  # an actor whose __init__ raises is not restarted, and Ray Data ends the run
            ray.get(self.ledger.register.remote(self.actor, context.current_actor))
            threading.Thread(target=beat, args=(self.ledger, self.actor, context.get_node_id(), self.stopped),
                             name="heartbeat", daemon=True).start()
        stage.setup()
        if self.ledger is not None:
            ray.get(self.ledger.set_up.remote(self.actor))  # before any batch: a later death is no setup death

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.ledger is None:
            return run_stage_batch(self.stage, batch, self.metrics)
        ids = batch.column("id").to_pylist()
        crashes = ray.get(self.ledger.crash_counts.remote(ids))
        return _suspects_apart(batch, ids, crashes, self.stage.quarantine_after, self._guarded,
                              lambda row, count: _quarantined(row, self.stage, ReplicaCrash(self.stage.name, count)))

    def _guarded(self, batch: pa.Table, ids: list[str], exclusive: bool) -> pa.Table:
        """A suspect (`exclusive`) has the actor to itself: its other batches wait."""
        with self.lock.exclusive() if exclusive else self.lock.shared():
            ray.get(self.ledger.begin.remote(self.actor, ids))  # recorded before any work can crash
            output = run_stage_batch(self.stage, batch, self.metrics)
            self.ledger.end.remote(self.actor, ids)
        return output

    def __del__(self) -> None:
        self.stopped.set()
        self.stage.close()


def read_rows(
    paths: list[str],
    filesystem: Any,
    rows_per_block: int,
    schema: pa.Schema | None = None,
    row_hash: bool = False,
    directories: DirectoryColumns | None = None,
) -> Dataset:
    """The shards' rows as blocks of at most `rows_per_block` rows, every shard cast to `schema`
    (pipelines/shards.py `read_schema`: one schema for shards from different writers); with
    `row_hash`, each row's `row_hash`: a hash of its shard's path and its position there, for rows
    without an id; with `directories` (`ShardSet.directories`), the columns their key=value
    directories give them, and without it none (Ray Data's default reads every such directory).

    Ray Data packs row groups into read tasks (READ_UNIT_BYTES each by the footers' sizes) with one
    output block each; with media columns that is hundreds of rows, and a map stage runs one task
    per block, so a shard's media would decode serially on one core while the others idle. A
    streaming repartition (block slicing, no shuffle) cuts the blocks to the first stages' batch
    size: CPU stages run one task per batch, in parallel, and the judge receives batch-sized bundles.
    """
    settings = {FOOTER_READERS_VARIABLE: str(footer_readers_for(len(paths))), READ_UNIT_VARIABLE: str(READ_UNIT_BYTES)}
    with _ray_data_settings(settings):
        dataset = ray.data.read_parquet(paths, filesystem=filesystem, schema=schema, include_row_hash=row_hash,
                                        partitioning=directories.partitioning if directories else None)
    if directories is not None:  # fused into the read tasks
        dataset = dataset.map_batches(directories.restore_nulls, batch_format="pyarrow", batch_size=None)
    return dataset.repartition(target_num_rows_per_block=rows_per_block)


# Ray Data (2.60) reads every shard's Parquet footer before the first row, on a pool of actors it
# sizes at 32 whatever the input: 32 Python processes (about 110 MiB each) for one shard. Each
# drives 128 concurrent footer reads, so one per 1,000 shards keeps object-storage listings as
# fast while a small run no longer starts 32 processes (a 500-shard read took 10-11 s against
# 32-36 s on 2 cores).
SHARDS_PER_FOOTER_READER = 1000
RAY_FOOTER_READERS = 32


def footer_readers_for(shards: int) -> int:
    """Footer-reading actors for a read of `shards` files: one per 1,000, at most Ray's 32."""
    return max(1, min(RAY_FOOTER_READERS, math.ceil(shards / SHARDS_PER_FOOTER_READER)))


# Ray Data bin-packs the shards' row groups into read units of 128 MiB, sized from the footers, and
# a read task puts its whole unit in the object store before the streaming executor can hold the
# read back: its budget gates tasks, not rows. With media columns the footers' sizes undercount
# what a unit holds in memory (a 128 MiB unit of the demo's rows held 672 MB: 16,064 rows), so two
# tasks read a 32,000-row input at once and the store held all of it ahead of the decode; under a
# 512 MiB Ray Data object-store limit, less than one unit, the run stalled. 4 MiB units (a row group
# larger than that is a unit of its own) took a third off the store's peak and a quarter off the
# footprint of a 32,000-row run at the same speed, and the 512 MiB limit no longer stalls it
# (bench/README.md, "Read units").
READ_UNIT_BYTES = 4 * 2**20
READ_UNIT_VARIABLE = "RAY_DATA_PARQUET_BIN_PACKING_BYTES"
FOOTER_READERS_VARIABLE = "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"


@contextmanager
def _ray_data_settings(settings: dict[str, str]) -> Iterator[None]:
    """Ray Data reads these from the environment when `read_parquet` builds the plan (in this
    process); set each for that call only, unless the user set it."""
    ours = {name: value for name, value in settings.items() if name not in os.environ}
    os.environ.update(ours)
    try:
        yield
    finally:
        for name in ours:
            del os.environ[name]


# Ray's own default for a CPU task's worker (reused without limit), stated: a pool's actors cannot
# have it, and Ray Data fuses a task stage into the actor pool after it when their remote args are
# equal. On the CPU engine the 1-CPU judge ran the decode (1 CPU) in its replica's process, where a
# file that crashed the decoder took the engine down with it.
TASK_WORKER_CALLS = 0


def apply_stage(dataset: Dataset, stage: Stage, metrics: Any | None = None, ledger: Any | None = None) -> Dataset:
    common: dict[str, Any] = dict(
        batch_size=stage.batch_size,
        batch_format="pyarrow",
        num_cpus=stage.num_cpus,
        **stage.ray_remote_args(),
    )
    if stage.num_gpus:
        common["num_gpus"] = stage.num_gpus
    if stage.pool_size is None:
        held = ledger if stage.quarantine_after else None
        return dataset.map_batches(_run_task, fn_kwargs={"stage": stage, "metrics": metrics, "ledger": held},
                                   max_calls=TASK_WORKER_CALLS, **common)
    in_flight = stage.batches_in_flight
    compute = ActorPoolStrategy(
        size=stage.pool_size,
        max_tasks_in_flight_per_actor=in_flight,
        max_concurrent_calls_per_actor=in_flight,
        enable_true_multi_threading=in_flight > 1,
    )
    return dataset.map_batches(_ActorStage, fn_constructor_args=(stage, metrics, ledger), compute=compute, **common)
