"""Map a shard's own columns onto the canonical row every later stage reads.

Renames user columns (`input.columns`, presets), reads the answers the judging format needs, gives
every row a stable `id` (its own, or a hash of its content), turns media values into one struct
type `{bytes, path}` whatever form the shard used, and settles rows that cannot be judged: rows
with missing or invalid text go to errors/, rows the format rules out before judging (a pair of
identical answers) to dropped/, so no GPU time is spent on them.
"""
from __future__ import annotations

import hashlib
from typing import Any, Literal

import pyarrow as pa
from pydantic import Field, field_validator

from stages.base import Settlement, Stage, with_columns
from stages.config import ConfigSection
from stages.formats.base import JudgingFormat
from stages.formats.registry import FORMATS
from stages.rows import DROP_REASON, ERROR_COLUMNS, MEDIA_TYPE, MODALITIES, RowRejected, describe_exception

# Every format's answer columns, in registry order: each normalized block carries all of them.
ANSWER_COLUMNS: tuple[str, ...] = tuple(dict.fromkeys(c for fmt in FORMATS.values() for c in fmt.answer_columns))
TEXT_COLUMNS: tuple[str, ...] = ("question", *ANSWER_COLUMNS)
# Canonical name -> its Arrow type; the columns later stages rely on, in output order.
CANONICAL_TYPES: dict[str, pa.DataType] = {
    "id": pa.string(),
    **{column: pa.string() for column in TEXT_COLUMNS},
    **{column: MEDIA_TYPE for column in MODALITIES},
    **ERROR_COLUMNS,
    DROP_REASON: pa.string(),
}
# What a content id hashes. Fixed, not derived from the formats: a row's id must not change when a
# format is added (resume and incremental runs key on it).
CONTENT_ID_TEXT = ("question", "response_a", "response_b", "response")

PRESETS: dict[str, dict[str, str]] = {
    # MMInstruction/VL-RewardBench: `response` holds the two answers, `human_ranking` the label.
    "vl_rewardbench": {"id": "id", "question": "query", "image": "image", "responses": "response"},
    # openbmb/RLAIF-V-Dataset: already a preference set; re-judging it audits its labels.
    "rlaif_v": {"question": "question", "image": "image", "response_a": "chosen", "response_b": "rejected"},
    # MLLM-as-a-Judge pair data (Dongping-Chen/MLLM-Judge): images by path (set input.media_roots).
    "mllm_judge": {"question": "instruction", "response_a": "answer1", "response_b": "answer2", "image": "image_path"},
}


class ColumnsConfig(ConfigSection):
    """How the user's columns map onto canonical ones (the run config's `input` section holds these)."""

    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Canonical name -> your column name, e.g. {question: prompt}. `responses` maps a "
        "list column holding both answers.",
    )
    preset: Literal[tuple(PRESETS)] | None = Field(  # type: ignore[valid-type]
        default=None, description="A known dataset's column mapping; `columns` entries override it."
    )

    def column_mapping(self) -> dict[str, str]:
        mapping = dict(PRESETS.get(self.preset or "", {}))
        mapping.update(self.columns)
        return mapping

    @field_validator("columns")
    @classmethod
    def _known_targets(cls, value: dict[str, str]) -> dict[str, str]:
        allowed = {"id", *TEXT_COLUMNS, *MODALITIES, "responses"}
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise ValueError(f"unknown canonical column(s) {unknown}; expected some of {sorted(allowed)}")
        return value


def content_id(row: dict[str, Any]) -> str:
    """A stable id from the row's judged content, for shards without one."""
    digest = hashlib.sha256()
    for column in CONTENT_ID_TEXT:
        value = row.get(column)
        text = value if isinstance(value, str) else repr(value) if value is not None else ""
        digest.update(text.encode("utf-8", "surrogatepass") + b"\x1f")
    for column in MODALITIES:
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
        self,
        fmt: JudgingFormat,
        columns: ColumnsConfig,
        batch_size: int = 64,
        skip_ids: frozenset[str] = frozenset(),
    ) -> None:
        self.fmt = fmt
        # Rows already accounted for (committed by an interrupted attempt, or settled on the driver).
        self.skip_ids = skip_ids
        self.mapping = columns.column_mapping()
        self.batch_size = batch_size
        self.adds = dict(CANONICAL_TYPES)

    def process(self, table: pa.Table) -> pa.Table:
        source_names = set(self.mapping.values())
        rows = [self._canonical(raw) for raw in self._sources(table).to_pylist()]
        if self.skip_ids:
            kept = [i for i, (row, _) in enumerate(rows) if row["id"] not in self.skip_ids]
            table, rows = table.take(pa.array(kept, pa.int64())), [rows[i] for i in kept]
        # Error columns a shard may carry are replaced too: only this run's stages settle rows.
        out = {column: [row.get(column) for row, _ in rows] for column in CANONICAL_TYPES}
        # User columns that were renamed are replaced by their canonical names; others pass through.
        keep = [c for c in table.column_names if c not in source_names and c not in CANONICAL_TYPES]
        normalized = with_columns(table.select(keep), out, CANONICAL_TYPES)
        settlement = Settlement(normalized)
        for index, (_, error) in enumerate(rows):
            if error is not None:
                settlement.fail(index, self.name, error)
        return settlement.apply(normalized)

    def _sources(self, table: pa.Table) -> pa.Table:
        """The columns this stage reads, strings viewed as bytes: Parquet writers that skip UTF-8
        validation exist, and one bad value must fail its row, not the whole batch."""
        names = {self.mapping.get(c, c) for c in ("id", *TEXT_COLUMNS, *MODALITIES, "responses")}
        texts = {self.mapping.get(c, c) for c in ("id", *TEXT_COLUMNS)}
        sources = table.select([c for c in table.column_names if c in names])
        for index, field in enumerate(sources.schema):
            if field.name in texts and (pa.types.is_string(field.type) or pa.types.is_large_string(field.type)):
                binary = pa.binary() if pa.types.is_string(field.type) else pa.large_binary()
                sources = sources.set_column(index, field.name, sources.column(index).cast(binary))
        return sources

    def _canonical(self, raw: dict[str, Any]) -> tuple[dict[str, Any], Exception | None]:
        """The canonical row, and the error that settles it (None: it goes on to be judged)."""
        row: dict[str, Any] = {}
        error: Exception | None = None
        get = lambda name: raw.get(self.mapping.get(name, name))  # noqa: E731
        try:
            for column in MODALITIES:
                row[column] = as_media_struct(get(column))
            row["question"] = get("question")
            row.update(self.fmt.answers(get, self.mapping))
            self._check_text(row)
        except Exception as exc:  # a bad row is data: it goes to errors/ and the batch goes on
            error = exc
        for column in TEXT_COLUMNS:  # keep a failed row's text writable, whatever its form
            row[column] = printable_text(row.get(column))
        given = printable_text(get("id"))
        row["id"] = content_id(row) if given is None or not given.strip() else given
        return row, error

    def _check_text(self, row: dict[str, Any]) -> None:
        for column in ("question", *self.fmt.answer_columns):
            row[column] = as_text(row[column], column)
        row[DROP_REASON] = self.fmt.drop_before_judging({c: row[c] for c in self.fmt.answer_columns})
