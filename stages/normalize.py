"""Map a shard's own columns onto the canonical row every later stage reads.

Renames user columns (`input.columns`, presets), reads the answers the judging format needs, gives
every row a stable `id` (its own, or one derived from its shard's path and its position in that
shard: identical rows stay distinct, and a rerun gives the same ids), turns media values into one struct
type `{bytes, path}` whatever form the shard used, and settles rows that cannot be judged: rows
with missing or invalid text go to errors/, rows the format rules out before judging (a pair of
identical answers) to dropped/, so no GPU time is spent on them.
"""
from __future__ import annotations

import unicodedata
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field, field_validator

from stages.base import Settlement, Stage, with_columns
from stages.config import ConfigSection
from stages.formats.base import JudgingFormat
from stages.formats.registry import FORMATS
from stages.rows import DROP_REASON, ERROR_COLUMNS, RowRejected, describe_exception

# Every canonical column any format reads (what `input.columns` may map onto), `responses` besides:
# a list column holding a pair's two answers (pairwise) or all of a row's answers (ranking).
CANONICAL_NAMES: frozenset[str] = frozenset({"id", "responses", *(c for fmt in FORMATS.values() for c in fmt.columns())})


def canonical_types(fmt: JudgingFormat) -> dict[str, pa.DataType]:
    """The columns a normalized block of this format carries (the ones later stages rely on), in
    output order: the id, the format's columns, the outcome columns."""
    return {"id": pa.string(), **fmt.columns(), **ERROR_COLUMNS, DROP_REASON: pa.string()}


DROP_CONTROL_CHARACTERS = "control_characters"
# Ray Data's `read_parquet(include_row_hash=True)` column: a uint64 hash of the shard's path and the
# row's position in it. Rows without an id of their own are known by it.
ROW_HASH = "row_hash"

PRESETS: dict[str, dict[str, str]] = {
    # MMInstruction/VL-RewardBench: `response` holds the two answers, `human_ranking` the label.
    "vl_rewardbench": {"id": "id", "question": "query", "image": "image", "responses": "response"},
    # openbmb/RLAIF-V-Dataset: already a preference set; re-judging it audits its labels.
    "rlaif_v": {"question": "question", "image": "image", "response_a": "chosen", "response_b": "rejected"},
    # MLLM-as-a-Judge pair data (Dongping-Chen/MLLM-Judge): images by path (set input.media_roots).
    "mllm_judge": {"question": "instruction", "response_a": "answer1", "response_b": "answer2", "image": "image_path"},
    # TIGER-Lab/GenAI-Bench (mode: choice), configs image_generation and video_generation: `prompt`,
    # `left_image` / `right_image` or `left_video` / `right_video`; `vote_type` the label.
    "genai_bench": {"question": "prompt"},
    # Its image_edition config: the source image, three editing prompts and the two edited images.
    "genai_bench_edition": {"left_image": "left_output_image", "right_image": "right_output_image"},
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
        allowed = CANONICAL_NAMES
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise ValueError(f"unknown canonical column(s) {unknown}; expected some of {sorted(allowed)}")
        return value


class NormalizeConfig(ColumnsConfig):
    """How rows are read into canonical ones: the column mapping, and the text rule (the run config's
    `input` section holds these)."""

    drop_control_characters: bool = Field(
        default=False,
        description="Drop rows whose question or answers hold control characters (Unicode Cc other than tab, "
        "newline and carriage return; NUL included) as control_characters. false: such text is judged as given.",
    )


_KEPT_CONTROLS = frozenset("\t\n\r")


def control_characters(text: str) -> list[str]:
    """The control characters in `text` that drop_control_characters drops rows for."""
    return sorted({c for c in text if unicodedata.category(c) == "Cc" and c not in _KEPT_CONTROLS})


def given_ids(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    """An id column as the ids rows are written under: text (integers in decimal, other types by
    their Python repr, text that is not UTF-8 with its bad bytes escaped), null where null or blank."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    kind = column.type
    try:
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            column.validate(full=True)  # Parquet writers that skip UTF-8 validation exist
            ids = column.cast(pa.string())
        elif pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_integer(kind):
            ids = column.cast(pa.string())  # binary: raises on invalid UTF-8
        else:
            raise pa.ArrowInvalid(f"no vectorised rule for {kind}")
    except pa.ArrowInvalid:
        if pa.types.is_string(kind) or pa.types.is_large_string(kind):
            column = column.cast(pa.large_binary())
        ids = pa.array([printable_text(value) for value in column.to_pylist()], pa.string())
    blank = pc.equal(pc.utf8_trim_whitespace(ids), "")
    return pc.if_else(blank, pa.scalar(None, pa.string()), ids)


def derived_ids(row_hashes: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The ids of rows without one of their own: their ROW_HASH (shard path + position) in decimal."""
    if isinstance(row_hashes, pa.ChunkedArray):
        row_hashes = row_hashes.combine_chunks()
    return row_hashes.cast(pa.string())


def row_ids(given: pa.Array | None, row_hashes: pa.Array | pa.ChunkedArray | None) -> pa.Array:
    """Each row's id: its own (`given_ids`), else the one derived from its ROW_HASH."""
    if given is not None and given.null_count == 0:
        return given
    if row_hashes is None:
        raise ValueError(f"rows without an id need the '{ROW_HASH}' column (read with include_row_hash)")
    derived = derived_ids(row_hashes)
    return derived if given is None else pc.coalesce(given, derived)


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
    return value


class NormalizeStage(Stage):
    name = "normalize"
    num_cpus = 0.5

    def __init__(
        self,
        fmt: JudgingFormat,
        settings: NormalizeConfig,
        batch_size: int = 64,
        skip_ids: frozenset[str] = frozenset(),
        row_hash: bool = False,
    ) -> None:
        self.fmt = fmt
        # The blocks carry Ray Data's ROW_HASH column, for rows without an id (consumed here).
        self.row_hash = row_hash
        # Rows already accounted for (committed by an interrupted attempt, or settled on the driver).
        self.skip_ids = skip_ids
        self.mapping = settings.column_mapping()
        self.drop_control_characters = settings.drop_control_characters
        self.batch_size = batch_size
        self.adds = canonical_types(fmt)
        # Columns holding text the judge reads (some rows' only): their values are checked, and kept
        # writable whatever their form when a row fails.
        self.texts = [c for c, kind in fmt.columns().items() if kind == pa.string()]

    def process(self, table: pa.Table) -> pa.Table:
        source_names = {*self.mapping.values(), *([ROW_HASH] if self.row_hash else [])}
        id_column = self.mapping.get("id", "id")
        ids = row_ids(
            given_ids(table.column(id_column)) if id_column in table.column_names else None,
            table.column(ROW_HASH) if self.row_hash and ROW_HASH in table.column_names else None,
        ).to_pylist()
        rows = [self._canonical(raw, row_id) for raw, row_id in zip(self._sources(table).to_pylist(), ids)]
        if self.skip_ids:
            kept = [i for i, (row, _) in enumerate(rows) if row["id"] not in self.skip_ids]
            table, rows = table.take(pa.array(kept, pa.int64())), [rows[i] for i in kept]
        # Error columns a shard may carry are replaced too: only this run's stages settle rows.
        out = {column: [row.get(column) for row, _ in rows] for column in self.adds}
        # User columns that were renamed are replaced by their canonical names; others pass through.
        keep = [c for c in table.column_names if c not in source_names and c not in self.adds]
        normalized = with_columns(table.select(keep), out, self.adds)
        settlement = Settlement(normalized)
        for index, (_, error) in enumerate(rows):
            if error is not None:
                settlement.fail(index, self.name, error)
        return settlement.apply(normalized)

    def _sources(self, table: pa.Table) -> pa.Table:
        """The columns this stage reads, strings viewed as bytes: Parquet writers that skip UTF-8
        validation exist, and one bad value must fail its row, not the whole batch."""
        names = {self.mapping.get(c, c) for c in (*self.adds, "responses")}
        texts = {self.mapping.get(c, c) for c in self.texts}
        sources = table.select([c for c in table.column_names if c in names])
        for index, field in enumerate(sources.schema):
            if field.name in texts and (pa.types.is_string(field.type) or pa.types.is_large_string(field.type)):
                binary = pa.binary() if pa.types.is_string(field.type) else pa.large_binary()
                sources = sources.set_column(index, field.name, sources.column(index).cast(binary))
        return sources

    def _canonical(self, raw: dict[str, Any], row_id: str) -> tuple[dict[str, Any], Exception | None]:
        """The canonical row, and the error that settles it (None: it goes on to be judged)."""
        row: dict[str, Any] = {"id": row_id}
        error: Exception | None = None
        get = lambda name: raw.get(self.mapping.get(name, name))  # noqa: E731
        try:
            for column in self.fmt.media:
                row[column] = as_media_struct(get(column))
            for column in self.fmt.texts:
                row[column] = get(column)
            row.update(self.fmt.answers(get, self.mapping))
            self.fmt.check_row(row)
            self._check_text(row)
        except Exception as exc:  # a bad row is data: it goes to errors/ and the batch goes on
            error = exc
        for column in self.texts:  # keep a failed row's text writable, whatever its form
            row[column] = printable_text(row.get(column))
        for column in self.fmt.answer_types:  # and its answer lists
            values = row.get(column)
            row[column] = [printable_text(v) for v in values] if isinstance(values, (list, tuple)) else None
        return row, error

    def _check_text(self, row: dict[str, Any]) -> None:
        judged = self.fmt.judged_texts(row)
        for column in judged:
            row[column] = as_text(row[column], column)
        self.fmt.check_answers(row, as_text)
        texts = [row[column] for column in judged] + [
            text for column in self.fmt.answer_types for text in row.get(column) or []
        ]
        if self.drop_control_characters and any(control_characters(text) for text in texts):
            row[DROP_REASON] = DROP_CONTROL_CHARACTERS
            return
        row[DROP_REASON] = self.fmt.drop_before_judging(row)
