"""The stage contract: a small class per pipeline step, free of Ray plumbing.

A stage takes an Arrow table and returns it with the columns it `adds`. Rows that an earlier stage
settled (errors/ or dropped/) pass through untouched, so a row never disappears between read and
write. Resources and batch size are plain attributes; `pipelines/adapter.py` turns them into Ray calls.
"""
from __future__ import annotations

from typing import Any, ClassVar

import pyarrow as pa

from stages.rows import (
    DROP_REASON,
    ERROR,
    ERROR_COLUMNS,
    ERROR_REASON,
    ERROR_STAGE,
    RowDropped,
    describe_exception,
    reason_of,
)


class Stage:
    """One step of the plan. Subclasses set `name`, `needs`, `adds` and implement `process`."""

    name: ClassVar[str] = "stage"
    needs: tuple[str, ...] = ()
    adds: dict[str, pa.DataType] = {}
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    batch_size: int = 16
    # None: stateless, run as Ray tasks. An int: a fixed pool of that many actors (setup once each).
    pool_size: int | None = None
    # With a pool: batches one actor works on at once (threads), so a slow batch never idles it.
    batches_in_flight: int = 1
    # A row in its worker (a pool's actor, or a task's process) during this many of its deaths, the last
    # time alone, is routed to errors/ instead of being retried forever (pipelines/quarantine.py).
    quarantine_after: int | None = None

    def setup(self) -> None:
        """Heavy, once-per-worker initialisation (models, engines)."""

    def process(self, table: pa.Table) -> pa.Table:
        raise NotImplementedError

    def close(self) -> None:
        """Release what `setup` acquired."""

    def ray_remote_args(self) -> dict[str, Any]:
        return {}

    def resources(self) -> dict[str, float]:
        """What one task or actor of this stage asks Ray for: CPU, GPU and custom resources."""
        demand = {"CPU": float(self.num_cpus)}
        if self.num_gpus:
            demand["GPU"] = float(self.num_gpus)
        demand.update({k: float(v) for k, v in self.ray_remote_args().get("resources", {}).items()})
        return demand


def with_columns(table: pa.Table, values: dict[str, list[Any]], types: dict[str, pa.DataType]) -> pa.Table:
    """Set (replace or append) columns from Python lists, typed by `types`."""
    for column, data in values.items():
        array = pa.array(data, type=types[column])
        index = table.schema.get_field_index(column)
        field = pa.field(column, array.type)
        table = table.set_column(index, field, array) if index >= 0 else table.append_column(field, array)
    return table


def column_or_nulls(table: pa.Table, column: str) -> list[Any]:
    if column in table.column_names:
        return table.column(column).to_pylist()
    return [None] * table.num_rows


class Settlement:
    """A batch's settled rows and its outcome columns: which rows a stage skips, and where it records
    the rows it fails (stage, reason code, original exception) or drops (a rule's reason)."""

    def __init__(self, table: pa.Table) -> None:
        self.stage = column_or_nulls(table, ERROR_STAGE)
        self.reason = column_or_nulls(table, ERROR_REASON)
        self.error = column_or_nulls(table, ERROR)
        self.drop_reason = column_or_nulls(table, DROP_REASON)
        self.settled = [e is not None or d is not None for e, d in zip(self.stage, self.drop_reason)]
        self._dropped_here = False

    def pending(self) -> list[int]:
        """Indices of the rows not yet settled: the ones a stage works on."""
        return [i for i, settled in enumerate(self.settled) if not settled]

    def fail(self, index: int, stage: str, exc: BaseException) -> None:
        self.stage[index], self.reason[index], self.error[index] = stage, reason_of(exc), describe_exception(exc)
        self.settled[index] = True

    def drop(self, index: int, reason: str) -> None:
        self.drop_reason[index] = reason
        self.settled[index] = self._dropped_here = True

    def apply(self, table: pa.Table) -> pa.Table:
        """`table` with the outcome columns as recorded here."""
        values = {ERROR_STAGE: self.stage, ERROR_REASON: self.reason, ERROR: self.error}
        types = dict(ERROR_COLUMNS)
        if self._dropped_here:  # keeping drop reasons the stage itself wrote into the table (labels)
            current = column_or_nulls(table, DROP_REASON)
            values[DROP_REASON] = [mine if mine is not None else theirs for mine, theirs in zip(self.drop_reason, current)]
            types[DROP_REASON] = pa.string()
        return with_columns(table, values, types)


class RowStage(Stage):
    """A stage whose work is per row: `process_row` returns the values of `adds` for one row.

    An exception from `process_row` routes that row to errors/ with this stage's name, the
    exception's reason code and its type and message (a `RowDropped` routes it to dropped/ with its
    reason); the rest of the batch goes on. Settled rows are not processed and keep whatever they
    already hold in `adds` (e.g. an earlier drop_reason).
    """

    def process_row(self, row: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def process(self, table: pa.Table) -> pa.Table:
        settlement = Settlement(table)
        present = [c for c in self.needs if c in table.column_names]
        rows = table.select(present).to_pylist() if present else [{} for _ in range(table.num_rows)]
        out: dict[str, list[Any]] = {column: column_or_nulls(table, column) for column in self.adds}
        for i in settlement.pending():
            try:
                produced = self.process_row(rows[i])
            except RowDropped as rule:
                settlement.drop(i, rule.reason)
                produced = {}
            except Exception as exc:  # a bad row is data: record it and go on
                settlement.fail(i, self.name, exc)
                produced = {}
            for column in self.adds:
                out[column][i] = produced.get(column)
        return settlement.apply(with_columns(table, out, self.adds))
