"""Map a shard's own columns onto the canonical row every later stage reads.

Renames user columns (`input.columns`, presets), splits a two-answer list column, gives every row
a stable `id` (its own, or a hash of its content), turns media values into one struct type
`{bytes, path}` whatever form the shard used, and settles rows that cannot be judged: rows with
missing text go to errors/, pairs with identical answers to dropped/ (no preference can come
from them, so no GPU time is spent on them).
"""
from __future__ import annotations

import hashlib
from typing import Any

import pyarrow as pa

from pipelines.config import CANONICAL_COLUMNS, InputConfig, Mode
from stages.schema import MEDIA_TYPE
from stages.base import DROP_REASON, ERROR, ERROR_STAGE, Stage, describe_exception, with_columns

MEDIA_COLUMNS = ("image", "audio", "video")
TEXT_COLUMNS = ("question", "response_a", "response_b", "response")
# Columns whose Arrow type later stages rely on; every normalized block carries all of them.
CANONICAL_TYPES: dict[str, pa.DataType] = {
    "id": pa.string(),
    "question": pa.string(),
    "response_a": pa.string(),
    "response_b": pa.string(),
    "response": pa.string(),
    **{column: MEDIA_TYPE for column in MEDIA_COLUMNS},
    ERROR_STAGE: pa.string(),
    ERROR: pa.string(),
    DROP_REASON: pa.string(),
}


class RowRejected(ValueError):
    """A row whose fields cannot be judged; its message starts with a reason code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"[{reason}] {detail}")
        self.reason = reason


def required_columns(mode: Mode, mapping: dict[str, str]) -> list[str]:
    """The user's column names a shard must have for `mode` (after the mapping)."""
    answers = ["responses"] if "responses" in mapping else (["response_a", "response_b"] if mode == "pairwise" else ["response"])
    return [mapping.get(name, name) for name in ["question", *answers]]


def content_id(row: dict[str, Any]) -> str:
    """A stable id from the row's judged content, for shards without one."""
    digest = hashlib.sha256()
    for column in TEXT_COLUMNS:
        value = row.get(column)
        text = value if isinstance(value, str) else repr(value) if value is not None else ""
        digest.update(text.encode("utf-8", "surrogatepass") + b"\x1f")
    for column in MEDIA_COLUMNS:
        media = row.get(column) if isinstance(row.get(column), dict) else {}
        payload = media.get("bytes") or (media.get("path") or "").encode()
        digest.update(hashlib.sha256(payload).digest())
    return digest.hexdigest()[:32]


def as_media_struct(value: Any) -> dict[str, Any] | None:
    """HF datasets struct, raw bytes or a path/URI string -> {bytes, path}."""
    if value is None:
        return None
    if isinstance(value, dict):
        return {"bytes": value.get("bytes"), "path": value.get("path")}
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"bytes": bytes(value), "path": None}
    if isinstance(value, str):
        return {"bytes": None, "path": value}
    raise TypeError(f"unsupported media value of type {type(value).__name__}")


def printable_text(value: Any) -> str | None:
    """A text field as it can be written back out: bytes decoded (bad UTF-8 escaped), others repr'd."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", "backslashreplace")
    return repr(value)


def as_text(value: Any, field: str) -> str:
    if value is None:
        raise RowRejected(f"empty_{field}", f"{field} is null")
    if isinstance(value, (bytes, bytearray)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RowRejected(f"invalid_text_{field}", f"{field} is not UTF-8 ({describe_exception(exc)})") from exc
    if not isinstance(value, str):
        raise RowRejected(f"invalid_text_{field}", f"{field} must be text, got {type(value).__name__}")
    if not value.strip():
        raise RowRejected(f"empty_{field}", f"{field} is empty")
    if "\x00" in value:
        raise RowRejected(f"invalid_text_{field}", f"{field} contains a NUL character")
    return value


class NormalizeStage(Stage):
    name = "normalize"
    num_cpus = 0.5

    def __init__(
        self, mode: Mode, input_cfg: InputConfig, batch_size: int = 64, skip_ids: frozenset[str] = frozenset()
    ) -> None:
        self.mode = mode
        # Rows already accounted for (committed by an interrupted attempt, or settled on the driver).
        self.skip_ids = skip_ids
        self.mapping = input_cfg.column_mapping()
        self.batch_size = batch_size
        self.adds = dict(CANONICAL_TYPES)

    def process(self, table: pa.Table) -> pa.Table:
        source_names = set(self.mapping.values())
        rows = [self._canonical(raw) for raw in self._sources(table).to_pylist()]
        if self.skip_ids:
            kept = [i for i, row in enumerate(rows) if row["id"] not in self.skip_ids]
            table, rows = table.take(pa.array(kept, pa.int64())), [rows[i] for i in kept]
        out = {column: [row.get(column) for row in rows] for column in CANONICAL_TYPES}
        # User columns that were renamed are replaced by their canonical names; others pass through.
        keep = [c for c in table.column_names if c not in source_names and c not in CANONICAL_TYPES]
        return with_columns(table.select(keep), out, CANONICAL_TYPES)

    def _sources(self, table: pa.Table) -> pa.Table:
        """The columns this stage reads, strings viewed as bytes: Parquet writers that skip UTF-8
        validation exist, and one bad value must fail its row, not the whole batch."""
        names = {self.mapping.get(c, c) for c in (*CANONICAL_COLUMNS, "responses")}
        texts = {self.mapping.get(c, c) for c in ("id", *TEXT_COLUMNS)}
        sources = table.select([c for c in table.column_names if c in names])
        for index, field in enumerate(sources.schema):
            if field.name in texts and (pa.types.is_string(field.type) or pa.types.is_large_string(field.type)):
                binary = pa.binary() if pa.types.is_string(field.type) else pa.large_binary()
                sources = sources.set_column(index, field.name, sources.column(index).cast(binary))
        return sources

    def _canonical(self, raw: dict[str, Any]) -> dict[str, Any]:
        row: dict[str, Any] = {ERROR_STAGE: None, ERROR: None, DROP_REASON: None}
        get = lambda name: raw.get(self.mapping.get(name, name))  # noqa: E731
        try:
            for column in MEDIA_COLUMNS:
                row[column] = as_media_struct(get(column))
            row["question"] = get("question")
            if "responses" in self.mapping:
                answers = get("responses")
                if answers is None or len(answers) != 2:
                    raise RowRejected("invalid_responses", f"expected a list of 2 responses, got {answers!r:.80}")
                row["response_a"], row["response_b"] = answers
            else:
                for column in ("response_a", "response_b", "response"):
                    row[column] = get(column)
            self._check_text(row)
        except Exception as exc:  # a bad row is data: it goes to errors/ and the batch goes on
            row[ERROR_STAGE], row[ERROR] = self.name, describe_exception(exc)
        for column in TEXT_COLUMNS:  # keep a failed row's text writable, whatever its form
            row[column] = printable_text(row.get(column))
        given = printable_text(get("id"))
        row["id"] = content_id(row) if given is None or not given.strip() else given
        return row

    def _check_text(self, row: dict[str, Any]) -> None:
        row["question"] = as_text(row["question"], "question")
        if self.mode == "single":
            row["response"] = as_text(row["response"], "response")
            return
        row["response_a"] = as_text(row["response_a"], "response_a")
        row["response_b"] = as_text(row["response_b"], "response_b")
        if row["response_a"].strip() == row["response_b"].strip():
            row[DROP_REASON] = "identical_responses"
