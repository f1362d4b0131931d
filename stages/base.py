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


def error_mask(table: pa.Table) -> list[bool]:
    """True for rows an earlier stage already routed to errors/."""
    if ERROR_STAGE not in table.column_names:
        return [False] * table.num_rows
    return [value is not None for value in table.column(ERROR_STAGE).to_pylist()]


class RowStage(Stage):
    """A stage whose work is per row: `process_row` returns the values of `adds` for one row.

    An exception from `process_row` routes that row to errors/ with this stage's name and the
    exception's type and message; the rest of the batch goes on.
    """

    def process_row(self, row: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def process(self, table: pa.Table) -> pa.Table:
        failed = error_mask(table)
        error_stage = table.column(ERROR_STAGE).to_pylist() if ERROR_STAGE in table.column_names else failed[:]
        error_text = table.column(ERROR).to_pylist() if ERROR in table.column_names else [None] * table.num_rows
        if ERROR_STAGE not in table.column_names:
            error_stage = [None] * table.num_rows
        needed = [c for c in self.needs if c in table.column_names]
        rows = table.select(needed).to_pylist()
        out: dict[str, list[Any]] = {column: [] for column in self.adds}
        for i, row in enumerate(rows):
            produced: dict[str, Any] = {}
            if not failed[i]:
                try:
                    produced = self.process_row(row)
                except Exception as exc:  # a bad row is data: record it and go on
                    error_stage[i], error_text[i] = self.name, describe_exception(exc)
            for column in self.adds:
                out[column].append(produced.get(column))
        out[ERROR_STAGE], out[ERROR] = error_stage, error_text
        return with_columns(table, out, {**self.adds, **ERROR_COLUMNS})
