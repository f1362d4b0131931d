"""Route each judged row to its output and write the batch's files; return the batch's tallies.

Every row lands in exactly one of kept/, dropped/ or errors/ (the accounting invariant); kept rows
also become the judging format's preference rows in preferences/ (pairwise: DPO pairs), and every
raw verdict goes to judgments/. Files appear atomically and a batch counts only once its manifest
is written (stages/storage/commit.py).
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from typing import Any, Callable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyarrow import fs as pafs
from pydantic import Field

from stages.base import Stage, column_or_nulls
from stages.config import ConfigSection
from stages.formats.base import JUDGMENT_FIELDS, JudgingFormat
from stages.formats.verdicts import Verdict
from stages.rows import (
    DROP_REASON,
    DROPPED,
    ERROR_COLUMNS,
    ERROR_REASON,
    ERROR_STAGE,
    ERRORS,
    KEPT,
    OUTCOMES,
    outcome_of,
)
from stages.decode import decoded_columns
from stages.storage.commit import commit_batch, committed_manifest
from stages.storage.features import with_media_features
from stages.storage.files import filesystem_for, write_atomically

log = logging.getLogger(__name__)
JUDGMENTS = "judgments"
VERDICT_TALLIES = "verdict_tallies"  # JudgingFormat.tally summed over the batch's rows
PREFERENCES = "preferences"
STATS_TYPE = pa.string()
THRESHOLD_VALUES = "threshold_values"  # batch stats: value of the format's threshold column -> rows
# The pipeline's own columns, never written as row columns: raw verdicts (judgments/ has them) and
# decoded media (the judge drops them; a row settled before it may still carry them).

# Reads one media value's encoded bytes (`stages.media.fetch.load_media_bytes` with the run's roots).
MediaReader = Callable[[Any], "bytes | None"]


class OutputConfig(ConfigSection):
    path: str = Field(default="", description="Output directory or URI; usually given with --output.")
    overwrite: bool = Field(default=False, description="Replace a finished run in the same directory.")
    rows_per_file: int = Field(
        default=1000,
        gt=0,
        description="Rows per written file and per commit: an interrupted run redoes at most this many rows per writer.",
    )
    embed_media: bool = Field(
        default=True,
        description="Embed media that came in by path as bytes in preferences/ (the path stays in `path`), so a "
        "preference set is self-contained when it leaves the cluster.",
    )


class WriteStage(Stage):
    name = "write"
    # No CPU, as the label stage: Ray Data fuses consecutive map stages only when they ask for the same
    # resources, and fused the label runs inside the write's task. Ray Data reserves the operators'
    # CPUs upstream first, and the plan's last operator, this one, went without whenever the read,
    # repartition, normalize, decode and judge held every CPU (a 4-CPU node): it wrote nothing for the
    # first 100 s of a 32,000-row run while the judge's output piled up in the object store
    # (bench/README.md, "The last operator's CPU"). Asking for none, it runs whenever a batch is
    # ready, on the cores the OS shares.
    num_cpus = 0.0

    def __init__(
        self, output_path: str, fmt: JudgingFormat, batch_size: int = 256, embed_media: MediaReader | None = None
    ) -> None:
        self.output_path = output_path.rstrip("/")
        self.fmt = fmt
        self.batch_size = batch_size
        self.embed_media = embed_media
        self.adds = {"stats": STATS_TYPE}
        self.internal = frozenset({JUDGMENTS, *decoded_columns(fmt.media)})

    def setup(self) -> None:
        self._fs, self._root = filesystem_for(self.output_path)

    def process(self, table: pa.Table) -> pa.Table:
        if not hasattr(self, "_fs"):
            self.setup()
        ids = table.column("id").to_pylist()
        # Named by its rows: a batch Ray runs again (lineage reconstruction after a node was lost,
        # which can judge its rows again) finds its first commit and leaves it as it is: rewriting it
        # could route a row differently and leave the first write's file of another outcome behind.
        batch = hashlib.sha256("\x1f".join(ids).encode("utf-8", "surrogatepass")).hexdigest()[:32]
        committed = committed_manifest(self._fs, self._root, batch)
        if committed is not None:
            return pa.table({"stats": [json.dumps(committed["stats"])]})
        errors, drops = column_or_nulls(table, ERROR_STAGE), column_or_nulls(table, DROP_REASON)
        outcome = [outcome_of(e, d) for e, d in zip(errors, drops)]
        visible = [c for c in table.column_names if c not in self.internal]
        parts: dict[str, pa.Table] = {}
        for name in OUTCOMES:
            indices = [i for i, o in enumerate(outcome) if o == name]
            columns = [c for c in visible if not _hidden_in(name, c)]
            part = table.select(columns).take(pa.array(indices, pa.int64()))
            parts[name] = part.replace_schema_metadata(with_media_features(part.schema, self.fmt.media).metadata)
        preferences = self.fmt.preference_rows(self._embedded(parts[KEPT]))
        if preferences is not None:
            parts[PREFERENCES] = preferences
        if JUDGMENTS in table.column_names:
            parts[JUDGMENTS] = judgment_table(table)
        files = []
        for name, part in parts.items():
            if part.num_rows:
                files.append(f"{name}/part-{batch}.parquet")
                write_atomically(self._fs, f"{self._root}/{files[-1]}", part)
        stats = batch_stats(table, outcome, self.fmt)
        commit_batch(self._fs, self._root, batch, files, ids, stats)
        return pa.table({"stats": [json.dumps(stats)]})


    def _embedded(self, kept: pa.Table) -> pa.Table:
        """`kept` with media that came in by path read into `bytes` (the path kept), when embedding is on."""
        if self.embed_media is None:
            return kept
        for column in self.fmt.media:
            if column not in kept.column_names:
                continue
            values = kept.column(column).to_pylist()
            if not any(v and v.get("bytes") is None and v.get("path") for v in values):
                continue
            embedded = [
                {"bytes": self._read(v), "path": v["path"]} if v and v.get("bytes") is None and v.get("path") else v
                for v in values
            ]
            index = kept.schema.get_field_index(column)
            kept = kept.set_column(index, kept.schema.field(index), pa.array(embedded, kept.schema.field(index).type))
        return kept

    def _read(self, value: dict[str, Any]) -> bytes | None:
        """The bytes of a judged row's media; None (path only) if they cannot be read again now."""
        assert self.embed_media is not None
        try:
            return self.embed_media(value)
        except Exception:  # the row was judged from these bytes: it stays kept, its pair keeps the path
            log.warning("could not embed %s in preferences/; the pair keeps the path", value.get("path"), exc_info=True)
            return None


def _hidden_in(outcome: str, column: str) -> bool:
    """Outcome columns show only where they mean something: errors/ has no drop_reason, and so on."""
    if outcome == KEPT:
        return column in ERROR_COLUMNS or column == DROP_REASON
    if outcome == DROPPED:
        return column in ERROR_COLUMNS
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


def batch_stats(table: pa.Table, outcome: list[str], fmt: JudgingFormat) -> dict[str, Any]:
    """The batch's tallies (summed into report.json): outcomes, reasons, kept rows' score histograms
    (the format's `histograms`: column -> bin width), the values its threshold rule saw (kept rows
    and rows that rule dropped, for the report's keep-rate curve), judge requests and tokens, the
    format's verdict tallies."""
    errors = column_or_nulls(table, ERROR_STAGE)
    reasons = column_or_nulls(table, ERROR_REASON)
    drops = column_or_nulls(table, DROP_REASON)
    kept = [o == KEPT for o in outcome]
    stats: dict[str, Any] = {
        "rows": table.num_rows,
        "outcomes": dict(Counter(outcome)),
        "drop_reasons": dict(Counter(d for d in drops if d is not None)),
        "error_stages": dict(Counter(e for e in errors if e is not None)),
        "error_reasons": dict(Counter(r for e, r in zip(errors, reasons) if e is not None)),
    }
    for column, width in fmt.histograms.items():
        values = column_or_nulls(table, column)
        stats[f"hist_{column}"] = _histogram([v for v, k in zip(values, kept) if k], width)
    rule = fmt.threshold_rule
    if rule is not None:
        values = column_or_nulls(table, rule.column)
        swept = [v for v, k, d in zip(values, kept, drops) if v is not None and (k or d == rule.reason)]
        stats[THRESHOLD_VALUES] = dict(Counter(f"{v:.6g}" for v in swept))
    if JUDGMENTS in table.column_names:
        flat = table.column(JUDGMENTS).combine_chunks().flatten()
        names = flat.type.names if hasattr(flat.type, "names") else [f.name for f in flat.type]
        for key in ("prompt_tokens", "output_tokens"):
            if key in names:
                stats[key] = int(pc.sum(flat.field(key)).as_py() or 0)
        stats["requests"] = len(flat)
        tallies: Counter[str] = Counter()
        for judgments in table.column(JUDGMENTS).to_pylist():
            if judgments:
                tallies.update(fmt.tally([Verdict.from_dict(j) for j in judgments]))
        stats[VERDICT_TALLIES] = dict(tallies)
    return stats


def _first_schema(filesystem: pafs.FileSystem, root: str) -> pa.Schema | None:
    for name in OUTCOMES:
        selector = pafs.FileSelector(f"{root}/{name}", allow_not_found=True)
        for info in filesystem.get_file_info(selector):
            if info.is_file and info.base_name.endswith(".parquet"):
                return pq.read_schema(info.path, filesystem=filesystem)
    return None


def complete_outputs(filesystem: pafs.FileSystem, root: str, fmt: JudgingFormat) -> None:
    """Give every output that received no rows one empty file with its schema.

    A reader (pyarrow, `datasets`) then finds each output of a finished run, even one with no rows.
    """
    row_schema = _first_schema(filesystem, root) or pa.schema([("id", pa.string())])
    base = [f for f in row_schema if f.name not in ERROR_COLUMNS and f.name != DROP_REASON]
    schemas = {
        KEPT: with_media_features(pa.schema(base), fmt.media),
        DROPPED: with_media_features(pa.schema([*base, pa.field(DROP_REASON, pa.string())]), fmt.media),
        ERRORS: with_media_features(
            pa.schema([*base, *(pa.field(name, kind) for name, kind in ERROR_COLUMNS.items())]), fmt.media
        ),
        JUDGMENTS: pa.schema([pa.field("id", pa.string()), *JUDGMENT_FIELDS]),
    }
    preferences = fmt.preference_schema()
    if preferences is not None:
        schemas[PREFERENCES] = preferences
    for name, schema in schemas.items():
        directory = f"{root}/{name}"
        existing = filesystem.get_file_info(pafs.FileSelector(directory, allow_not_found=True))
        if any(info.is_file and not info.base_name.startswith(".") for info in existing):
            continue
        write_atomically(filesystem, f"{directory}/part-empty.parquet", schema.empty_table())
