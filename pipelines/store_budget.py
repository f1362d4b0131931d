"""How much of Ray's object store the run's plan may fill: sized from what the judge replicas hold,
not from the node.

Ray Data's own budget is half the cluster's object store, and a plan whose judge is its slowest
operator fills that budget with read-ahead: each operator ahead of the judge holds its share of
encoded rows while the input lasts, however few rows the replicas can use. On 2 cores a 64,000-row
run held 1.1 GiB there against 0.35 GiB for 6,400 rows, and its summed memory was 1.48x. The
replicas' working set is what the store must hold for them to stay fed: replicas x batches in
flight x batch size decoded rows. A decoded row's size depends on the data (the media bounds cap
it at megabytes; typical rows are far smaller), so it is measured before the run on a few rows of
shards spread over the input, read and decoded by the run's own stages in a Ray worker, as the
decode tasks decode: a file that kills its decoder takes that worker down, not the driver, and a
sample of large inline media never lands in the driver's memory. (bench/README.md,
"Ray Data's object-store budget".)
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray

from stages.decode import DecodeStage
from stages.judge import JudgeStage
from stages.normalize import ROW_HASH, NormalizeStage

log = logging.getLogger(__name__)

# The working set twice over: the decode stage's output queue (the judge's next inputs) beside what
# the replicas hold, and rows larger than the sample's mean.
HEADROOM = 2.0
# Below this the plan's operators ahead of the judge hold under a few read units each: with 4 MiB
# read units (pipelines/adapter.py READ_UNIT_BYTES) 512 MiB ran 32,000 and 64,000 rows at full speed.
MIN_BUDGET_BYTES = 512 * 2**20
SAMPLE_SHARDS = 4
SAMPLE_ROWS_PER_SHARD = 8


@dataclass(frozen=True)
class StoreBudget:
    """The object-store bytes the plan may fill, and what they were derived from (report.json)."""

    bytes: int | None  # None: Ray Data's own budget (half the object store)
    source: str  # "derived", "set" (object_store_budget_mib) or "ray" (Ray Data's default)
    judge_held_rows: int | None = None
    decoded_bytes_per_row: float | None = None
    sampled_rows: int | None = None

    def as_report(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        """One log line: the budget and where it came from."""
        if self.bytes is None:
            return "object-store budget: Ray Data's own (half the object store)"
        if self.source == "set":
            return f"object-store budget: {self.bytes / 2**20:.0f} MiB (object_store_budget_mib)"
        return (f"object-store budget: {self.bytes / 2**20:.0f} MiB: {HEADROOM:g} x {self.judge_held_rows} rows the judge "
                f"replicas hold x {self.decoded_bytes_per_row / 2**10:.0f} KiB a decoded row ({self.sampled_rows} sampled), "
                f"at least {MIN_BUDGET_BYTES / 2**20:.0f} MiB")


def judge_held_rows(judge: JudgeStage) -> int:
    """Rows the judge replicas hold at once: replicas x batches in flight x batch size."""
    return judge.pool_size * judge.batches_in_flight * judge.batch_size


def derived_budget(held_rows: int, decoded_bytes_per_row: float) -> int:
    """HEADROOM x the replicas' working set in decoded bytes, at least MIN_BUDGET_BYTES."""
    return max(MIN_BUDGET_BYTES, int(HEADROOM * held_rows * decoded_bytes_per_row))


def sample_rows(paths: list[str], filesystem: Any, schema: pa.Schema | None, row_hash: bool) -> pa.Table:
    """The first SAMPLE_ROWS_PER_SHARD rows of SAMPLE_SHARDS shards spread over `paths` (the first,
    the last and evenly between: inputs are often sorted, by source or by media kind), read as the
    run reads them (cast to the run's schema; with `row_hash`, a placeholder hash column)."""
    parts = []
    picked = sorted({round(i * (len(paths) - 1) / max(1, SAMPLE_SHARDS - 1)) for i in range(SAMPLE_SHARDS)})
    for path in [paths[i] for i in picked] if paths else []:
        with filesystem.open_input_file(path) as handle:
            batch = next(pq.ParquetFile(handle).iter_batches(batch_size=SAMPLE_ROWS_PER_SHARD), None)
        if batch is None:
            continue
        table = pa.Table.from_batches([batch])
        if schema is not None:
            table = pa.table({name: table.column(name).cast(schema.field(name).type) if name in schema.names
                              else table.column(name) for name in table.column_names})
        parts.append(table)
    if not parts:
        return pa.table({})
    sample = pa.concat_tables(parts, promote_options="permissive")
    if row_hash:
        sample = sample.append_column(ROW_HASH, pa.array(np.arange(sample.num_rows, dtype=np.uint64)))
    return sample


def decoded_bytes_per_row(sample: pa.Table, normalize: NormalizeStage, decode: DecodeStage) -> float:
    """Mean Arrow bytes of a sampled row after the run's normalize and decode stages."""
    normalize.setup()
    decode.setup()
    decoded = decode.process(normalize.process(sample))
    return decoded.nbytes / decoded.num_rows if decoded.num_rows else 0.0


@ray.remote(num_cpus=0, max_retries=0)
def _sampled_in_a_worker(
    paths: list[str], filesystem: Any, schema: pa.Schema | None, row_hash: bool,
    normalize: NormalizeStage, decode: DecodeStage,
) -> tuple[float, int]:
    """`decoded_bytes_per_row` of `sample_rows`, and how many rows were sampled. Read and decoded in
    a worker: a file that kills a decoder, or a sample of large inline media, never reaches the driver."""
    sample = sample_rows(paths, filesystem, schema, row_hash)
    return (decoded_bytes_per_row(sample, normalize, decode) if sample.num_rows else 0.0), sample.num_rows


def store_budget(
    setting: int | str,
    stages: list[Any],
    paths: list[str],
    filesystem: Any,
    schema: pa.Schema | None,
    row_hash: bool,
) -> StoreBudget:
    """The run's budget for `object_store_budget_mib` = `setting` ("auto", "ray" or MiB); `stages`
    as `build_stages` makes them without skip_ids (a resumed run's first rows may all be done),
    `paths` the shards with rows left."""
    if setting == "ray":
        return StoreBudget(None, "ray")
    if isinstance(setting, int):
        return StoreBudget(setting * 2**20, "set")
    normalize = next(s for s in stages if isinstance(s, NormalizeStage))
    decode = next(s for s in stages if isinstance(s, DecodeStage))
    judge = next(s for s in stages if isinstance(s, JudgeStage))
    held = judge_held_rows(judge)
    try:
        per_row, sampled = ray.get(_sampled_in_a_worker.remote(paths, filesystem, schema, row_hash, normalize, decode))
    except Exception as exc:  # noqa: BLE001 - a sizing aid: the run goes on under Ray Data's budget
        reason = getattr(exc, "cause", None) or exc  # a task's own error, not Ray's traceback around it
        log.warning("object-store budget: could not sample the shards (%s); Ray Data's default applies", reason)
        return StoreBudget(None, "ray", judge_held_rows=held)
    if not per_row:
        return StoreBudget(None, "ray", judge_held_rows=held, sampled_rows=sampled)
    return StoreBudget(derived_budget(held, per_row), "derived", judge_held_rows=held,
                       decoded_bytes_per_row=round(per_row, 1), sampled_rows=sampled)


def apply_budget(dataset: Any, budget: StoreBudget) -> None:
    """Cap the dataset's execution at the budget (a limit the user set on Ray Data's context stays
    if it is lower); Ray Data still caps it at half the object store."""
    if budget.bytes is None:
        return
    options = dataset.context.execution_options
    limit = min(options.resource_limits.object_store_memory or float("inf"), budget.bytes)
    options.resource_limits = options.resource_limits.copy(object_store_memory=limit)
