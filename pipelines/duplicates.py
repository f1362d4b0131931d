"""Ids that occur more than once in a run's input (found by pipelines/shard_ids.py from the id columns
alone), settled before the run.

Every occurrence of such an id goes to errors/ (`[duplicate_id]`): which copy is the real one is
the data owner's call, and judging one copy while erroring another would depend on block order.
The driver settles them itself, all in one committed batch, before the distributed run starts.
"""
from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.config import RunConfig
from pipelines.shards import ShardSet
from stages.base import Settlement
from stages.normalize import NormalizeStage, given_ids
from stages.rows import RowError
from stages.write import WriteStage

STAGE = "read"


class DuplicateId(RowError):
    def __init__(self, identifier: str, occurrences: int) -> None:
        super().__init__("duplicate_id", f"id {identifier!r} occurs {occurrences} times in the input")


def settle_duplicates(cfg: RunConfig, shards: ShardSet, duplicates: dict[str, int]) -> None:
    """Route every row with a duplicated id to errors/, as one committed batch."""
    id_column = cfg.input.column_mapping().get("id", "id")
    fmt = cfg.judging_format()
    normalize = NormalizeStage(fmt, cfg.input)
    wanted = pa.array(sorted(duplicates), pa.string())
    parts = []
    schema = shards.schema
    for path in shards.paths:
        table = pq.read_table(path, filesystem=shards.filesystem, schema=schema)
        if shards.directories is not None:
            table = shards.directories.added_to(table, path)
        if id_column not in table.column_names:
            continue
        rows = table.filter(pc.fill_null(pc.is_in(given_ids(table.column(id_column)), value_set=wanted), False))
        if rows.num_rows:
            parts.append(normalize.process(rows))
    batch = pa.concat_tables(parts, promote_options="permissive")
    settlement = Settlement(batch)
    for index, identifier in enumerate(batch.column("id").to_pylist()):
        settlement.fail(index, STAGE, DuplicateId(identifier, duplicates[identifier]))
    WriteStage(cfg.output.path, fmt).process(settlement.apply(batch))
