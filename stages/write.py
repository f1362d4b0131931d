"""Route each judged row to its output and write the batch's files; return the batch's tallies.

Every row lands in exactly one of kept/, dropped/ or errors/ (the accounting invariant);
pairwise kept rows also become DPO rows in preferences/, and every raw verdict goes to judgments/.
Files appear atomically and a batch counts only once its manifest is written (stages/commit.py).
"""
from __future__ import annotations

import json
import uuid
from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyarrow import fs as pafs

from pipelines.config import Mode
from stages.commit import commit_batch, filesystem_for, write_atomically
from stages.base import DROP_REASON, ERROR, ERROR_STAGE, Stage, column_or_nulls
from stages.normalize import MEDIA_COLUMNS
from stages.schema import JUDGMENT_FIELDS, PREFERENCE_SCHEMA
from stages.prompts import trl_user_message

OUTCOMES = ("kept", "dropped", "errors")
JUDGMENTS = "judgments"
STATS_TYPE = pa.string()


def outcome_of(error_stage: str | None, drop_reason: str | None) -> str:
    if error_stage is not None:
        return "errors"
    return "dropped" if drop_reason is not None else "kept"


def error_reason(error: str | None) -> str:
    """`MediaError: [image_undecodable] ...` -> image_undecodable; otherwise the exception type."""
    if not error:
        return "unknown"
    kind, _, message = error.partition(": ")
    if message.startswith("[") and "]" in message:
        return message[1 : message.index("]")]
    return kind


def _assistant(text: str) -> list[dict[str, Any]]:
    return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]


def preference_rows(kept: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for row in kept:
        media = [m for m in MEDIA_COLUMNS if row.get(m) is not None]
        rows.append(
            {
                "id": row["id"],
                "prompt": [trl_user_message(row["question"], media)],
                "chosen": _assistant(row["chosen"]),
                "rejected": _assistant(row["rejected"]),
                "images": [row["image"]] if row.get("image") else [],
                "audios": [row["audio"]] if row.get("audio") else [],
                "videos": [row["video"]] if row.get("video") else [],
                "score_chosen": row["score_chosen"],
                "score_rejected": row["score_rejected"],
                "margin": row["margin"],
                "judge_model": row["judge_model"],
            }
        )
    return rows


class WriteStage(Stage):
    name = "write"
    num_cpus = 0.5

    def __init__(self, output_path: str, mode: Mode, batch_size: int = 256) -> None:
        self.output_path = output_path.rstrip("/")
        self.mode = mode
        self.batch_size = batch_size
        self.adds = {"stats": STATS_TYPE}

    def setup(self) -> None:
        self._fs, self._root = filesystem_for(self.output_path)

    def process(self, table: pa.Table) -> pa.Table:
        if not hasattr(self, "_fs"):
            self.setup()
        errors, drops = column_or_nulls(table, ERROR_STAGE), column_or_nulls(table, DROP_REASON)
        outcome = [outcome_of(e, d) for e, d in zip(errors, drops)]
        visible = [c for c in table.column_names if not c.startswith("_") and c != JUDGMENTS]
        batch = uuid.uuid4().hex
        parts: dict[str, pa.Table] = {}
        for name in OUTCOMES:
            indices = [i for i, o in enumerate(outcome) if o == name]
            columns = [c for c in visible if not self._hidden_in(name, c)]
            parts[name] = table.select(columns).take(pa.array(indices, pa.int64()))
        if self.mode == "pairwise":
            needed = ["id", "question", "chosen", "rejected", "score_chosen", "score_rejected", "margin", "judge_model", *MEDIA_COLUMNS]
            kept = parts["kept"]
            rows = preference_rows(kept.select([c for c in needed if c in kept.column_names]).to_pylist())
            parts["preferences"] = pa.Table.from_pylist(rows, schema=PREFERENCE_SCHEMA)
        if JUDGMENTS in table.column_names:
            parts["judgments"] = judgment_table(table)
        files = []
        for name, part in parts.items():
            if part.num_rows:
                files.append(f"{name}/part-{batch}.parquet")
                write_atomically(self._fs, f"{self._root}/{files[-1]}", part)
        stats = batch_stats(table, outcome)
        commit_batch(self._fs, self._root, batch, files, table.column("id").to_pylist(), stats)
        return pa.table({"stats": [json.dumps(stats)]})

    @staticmethod
    def _hidden_in(outcome: str, column: str) -> bool:
        if outcome == "kept":
            return column in (ERROR_STAGE, ERROR, DROP_REASON)
        if outcome == "dropped":
            return column in (ERROR_STAGE, ERROR)
        return column == DROP_REASON


def judgment_table(table: pa.Table) -> pa.Table:
    """One row per raw verdict, keyed by the candidate's id."""
    judgments = table.column(JUDGMENTS).combine_chunks()
    ids = table.column("id").combine_chunks()
    lengths = judgments.value_lengths().fill_null(0)
    repeated = ids.take(pa.array([i for i, n in enumerate(lengths.to_pylist()) for _ in range(n)], pa.int64()))
    flat = judgments.flatten()
    return pa.Table.from_arrays([repeated, *flat.flatten()], names=["id", *[f.name for f in flat.type]])


def _histogram(values: list[float | None], width: float) -> dict[str, int]:
    counts = Counter(f"{(v // width) * width:g}" for v in values if v is not None)
    return dict(counts)


def batch_stats(table: pa.Table, outcome: list[str]) -> dict[str, Any]:
    errors = column_or_nulls(table, ERROR_STAGE)
    error_text = column_or_nulls(table, ERROR)
    drops = column_or_nulls(table, DROP_REASON)
    kept = [o == "kept" for o in outcome]
    stats: dict[str, Any] = {
        "rows": table.num_rows,
        "outcomes": dict(Counter(outcome)),
        "drop_reasons": dict(Counter(d for d in drops if d is not None)),
        "error_stages": dict(Counter(e for e in errors if e is not None)),
        "error_reasons": dict(Counter(error_reason(t) for e, t in zip(errors, error_text) if e is not None)),
    }
    for column, width in (("score_chosen", 1.0), ("score_rejected", 1.0), ("margin", 1.0), ("score", 0.5)):
        values = column_or_nulls(table, column)
        stats[f"hist_{column}"] = _histogram([v for v, k in zip(values, kept) if k], width)
    if JUDGMENTS in table.column_names:
        flat = table.column(JUDGMENTS).combine_chunks().flatten()
        names = flat.type.names if hasattr(flat.type, "names") else [f.name for f in flat.type]
        for key in ("prompt_tokens", "output_tokens"):
            if key in names:
                stats[key] = int(pc.sum(flat.field(key)).as_py() or 0)
        stats["requests"] = len(flat)
    return stats


def _first_schema(filesystem: pafs.FileSystem, root: str) -> pa.Schema | None:
    for name in OUTCOMES:
        selector = pafs.FileSelector(f"{root}/{name}", allow_not_found=True)
        for info in filesystem.get_file_info(selector):
            if info.is_file and info.base_name.endswith(".parquet"):
                return pq.read_schema(info.path, filesystem=filesystem)
    return None


def complete_outputs(filesystem: pafs.FileSystem, root: str, mode: Mode) -> None:
    """Give every output that received no rows one empty file with its schema.

    A reader (pyarrow, `datasets`) then finds each output of a finished run, even one with no rows.
    """
    row_schema = _first_schema(filesystem, root) or pa.schema([("id", pa.string())])
    base = [f for f in row_schema if f.name not in (ERROR_STAGE, ERROR, DROP_REASON)]
    schemas = {
        "kept": pa.schema(base),
        "dropped": pa.schema([*base, pa.field(DROP_REASON, pa.string())]),
        "errors": pa.schema([*base, pa.field(ERROR_STAGE, pa.string()), pa.field(ERROR, pa.string())]),
        "judgments": pa.schema([pa.field("id", pa.string()), *JUDGMENT_FIELDS]),
    }
    if mode == "pairwise":
        schemas["preferences"] = PREFERENCE_SCHEMA
    for name, schema in schemas.items():
        directory = f"{root}/{name}"
        existing = filesystem.get_file_info(pafs.FileSelector(directory, allow_not_found=True))
        if any(info.is_file and not info.base_name.startswith(".") for info in existing):
            continue
        write_atomically(filesystem, f"{directory}/part-empty.parquet", schema.empty_table())
