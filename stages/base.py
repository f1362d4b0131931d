"""The stage contract: a small class per pipeline step, free of Ray plumbing.

A stage takes an Arrow table and returns it with the columns it `adds`. Rows that an earlier stage
marked with `error_stage` pass through untouched, so a row never disappears between read and write.
Resources and batch size are plain attributes; `pipelines/adapter.py` turns them into Ray calls.
"""
from __future__ import annotations

from typing import Any, ClassVar

import pyarrow as pa

ERROR_STAGE = "error_stage"
ERROR = "error"
DROP_REASON = "drop_reason"
ERROR_COLUMNS: dict[str, pa.DataType] = {ERROR_STAGE: pa.string(), ERROR: pa.string()}


def describe_exception(exc: BaseException) -> str:
    """The error column's text: the original exception's type and message."""
    return f"{type(exc).__name__}: {exc}"


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
    # With a pool: a row in flight during this many actor deaths is routed to errors/, not retried.
    quarantine_after: int | None = None

    def setup(self) -> None:
        """Heavy, once-per-worker initialisation (models, engines)."""

    def process(self, table: pa.Table) -> pa.Table:
        raise NotImplementedError

    def close(self) -> None:
        """Release what `setup` acquired."""

    def ray_remote_args(self) -> dict[str, Any]:
        return {}


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


def settled_mask(table: pa.Table) -> list[bool]:
    """True for rows already routed to errors/ or dropped/ by an earlier stage; later stages skip them."""
    errors = column_or_nulls(table, ERROR_STAGE)
    drops = column_or_nulls(table, DROP_REASON)
    return [e is not None or d is not None for e, d in zip(errors, drops)]


class RowStage(Stage):
    """A stage whose work is per row: `process_row` returns the values of `adds` for one row.

    An exception from `process_row` routes that row to errors/ with this stage's name and the
    exception's type and message; the rest of the batch goes on. Settled rows are not processed.
    """

    def process_row(self, row: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def process(self, table: pa.Table) -> pa.Table:
        settled = settled_mask(table)
        error_stage = column_or_nulls(table, ERROR_STAGE)
        error_text = column_or_nulls(table, ERROR)
        present = [c for c in self.needs if c in table.column_names]
        rows = table.select(present).to_pylist() if present else [{} for _ in range(table.num_rows)]
        # Settled rows keep whatever they already hold in these columns (e.g. an earlier drop_reason).
        out: dict[str, list[Any]] = {column: column_or_nulls(table, column) for column in self.adds}
        for i, row in enumerate(rows):
            if settled[i]:
                continue
            try:
                produced = self.process_row(row)
            except Exception as exc:  # a bad row is data: record it and go on
                error_stage[i], error_text[i] = self.name, describe_exception(exc)
                produced = {}
            for column in self.adds:
                out[column][i] = produced.get(column)
        out[ERROR_STAGE], out[ERROR] = error_stage, error_text
        return with_columns(table, out, {**self.adds, **ERROR_COLUMNS})
