"""Every shard's row ids, read on the driver from the id columns alone, before the run starts.

A row's id is its own (the id column) or, where it has none, the one the normalize stage derives
from the shard's path and the row's position in it: Ray Data's row hash (`read_parquet(...,
include_row_hash=True)`), restated here so the driver knows those ids without reading the rows
(tests/integration/test_pipeline_ray.py pins the two together). Duplicate detection and resume work
from these ids, held as Arrow arrays: millions of ids cost tens of MiB, not a Python set each. A
resume reads only the shards with rows left to do (`plan_resume`).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.shards import ShardError, ShardSet
from stages.normalize import ROW_HASH, derived_ids, given_ids


def row_hashes(shard_path: str, rows: int) -> np.ndarray:
    """Ray Data's row hash of rows 0..rows-1 of a shard (as its reader names the shard's path): the
    path's MD5 seeds a uint64, plus the row's position, through the splitmix64 finalizer."""
    seed = np.uint64(int.from_bytes(hashlib.md5(shard_path.encode("utf-8")).digest()[:8], "little"))
    with np.errstate(over="ignore"):
        keys = seed + np.arange(rows, dtype=np.uint64)
        keys ^= keys >> np.uint64(30)
        keys *= np.uint64(0xBF58476D1CE4E5B9)
        keys ^= keys >> np.uint64(27)
        keys *= np.uint64(0x94D049BB133111EB)
        keys ^= keys >> np.uint64(31)
    return keys


@dataclass
class ShardIds:
    row_counts: dict[str, int]  # path -> rows
    given: dict[str, pa.Array | None]  # path -> its id column as ids (null where blank); None: no id column

    @property
    def needs_row_hash(self) -> bool:
        """Whether some row has no id of its own, so the run must read Ray Data's row hash."""
        return any(ids is None or ids.null_count for ids in self.given.values())

    def ids(self, path: str) -> pa.Array:
        """Every row's id in the shard, in row order: its own, else the derived one."""
        given = self.given[path]
        if given is not None and not given.null_count:
            return given
        derived = derived_ids(pa.array(row_hashes(path, self.row_counts[path]), pa.uint64()))
        return derived if given is None else pc.coalesce(given, derived)

    def duplicates(self) -> dict[str, int]:
        """id -> occurrences, for ids given more than once across all shards (derived ids never repeat).

        Sorted, equal neighbours: a fraction of the memory of counting every id in a hash table."""
        given = [ids.drop_null() for ids in self.given.values() if ids is not None]
        every = pa.concat_arrays(given) if given else pa.array([], pa.string())
        if len(every) < 2:
            return {}
        ordered = every.take(pc.sort_indices(every))
        again = pc.equal(ordered.slice(1), ordered.slice(0, len(ordered) - 1))
        if not pc.any(again).as_py():
            return {}
        extra = pc.value_counts(ordered.slice(1).filter(again))  # each occurrence after the first
        return {value: count + 1 for value, count in zip(extra.field("values").to_pylist(), extra.field("counts").to_pylist())}


def read_shard_ids(shards: ShardSet, id_column: str) -> ShardIds:
    given: dict[str, pa.Array | None] = {}
    user_row_hash = []
    for path in shards.paths:
        schema = pq.read_schema(path, filesystem=shards.filesystem)
        if ROW_HASH in schema.names and ROW_HASH != id_column:
            user_row_hash.append(path)
        if id_column not in schema.names:
            given[path] = None
            continue
        column = pq.read_table(path, columns=[id_column], filesystem=shards.filesystem).column(id_column)
        given[path] = given_ids(column)
    ids = ShardIds(dict(shards.row_counts), given)
    if ids.needs_row_hash and user_row_hash:
        raise ShardError(
            f"shard {user_row_hash[0]} has a column '{ROW_HASH}', and some rows have no '{id_column}': their ids come "
            f"from Ray Data's '{ROW_HASH}' column, which would overwrite yours; rename it, or give every row an id"
        )
    return ids


@dataclass
class ResumePlan:
    """What a resumed run still reads: the shards with rows not yet accounted for, and, of those
    shards' ids only, the ones already accounted for (committed, or settled on the driver)."""

    unfinished: list[str]
    skip_ids: frozenset[str]


def plan_resume(ids: ShardIds, accounted: pa.Array) -> ResumePlan:
    """Leave out every shard whose rows are all accounted for, and pass on only the accounted ids of
    the others: a resume with millions of committed ids ships a handful to its tasks, not all."""
    paths = [path for path, rows in ids.row_counts.items() if rows]
    if not len(accounted):
        return ResumePlan(paths, frozenset())
    every = pa.concat_arrays([ids.ids(path) for path in paths])  # one lookup table for all shards, not one each
    done = pc.is_in(every, value_set=accounted)
    unfinished, skip, offset = [], [], 0
    for path in paths:
        rows = ids.row_counts[path]
        shard_done = done.slice(offset, rows)
        if not pc.all(shard_done).as_py():
            unfinished.append(path)
            skip.extend(every.slice(offset, rows).filter(shard_done).to_pylist())
        offset += rows
    return ResumePlan(unfinished, frozenset(skip))
