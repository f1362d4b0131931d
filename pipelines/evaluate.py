"""Score a run's verdicts against human labels: eval.json for programs, eval.md for people.

The rows are the run's own outputs joined with the label shards on id: where each row landed, its
error reason, and its raw verdicts from judgments/, aggregated by the judging format exactly as the
label stage does. Label shards are read with the run's own column mapping and normalize stage, so a
label row gets exactly the id its candidate got in the run (its own id; a row without one is known by
its shard's path and position, so such labels must be the run's own input shards); the format turns each raw label into its terms and computes the
metrics (stages/formats/). This module joins, counts what could not be joined, and writes. No engine
and no Ray: a finished run's directory is enough.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.config import InputConfig, RunConfig
from pipelines.finished_run import FinishedRun, judgments_by_id
from pipelines.labels import LabelsConfig
from pipelines.shard_ids import row_hashes
from pipelines.shards import directory_columns, expand_under
from stages.formats.base import JudgingFormat
from stages.formats.evaluation import LabelledRow
from stages.formats.verdicts import Verdict
from stages.normalize import ROW_HASH, NormalizeStage
from stages.rows import ERROR_REASON, OUTCOMES
from stages.storage.files import filesystem_for, write_atomically
from stages.write import JUDGMENTS

EVAL_JSON, EVAL_MD = "eval.json", "eval.md"


@dataclass(frozen=True)
class Label:
    value: Any  # in the judging format's terms
    group: Optional[str]


@dataclass
class LabelSet:
    by_id: dict[str, Label]
    rows: int  # label rows read
    invalid: dict[str, str]  # id -> why its label could not be read (kept out of the metrics)
    duplicate_ids: int  # ids labelled more than once (the first label counts)


class LabelError(ValueError):
    """Label shards that cannot be read as labels (a missing column, no shards)."""


def read_labels(
    paths: list[str], labels: LabelsConfig, columns: InputConfig, fmt: JudgingFormat
) -> LabelSet:
    """Every label row's id (as the run computed it), label in the format's terms, and group. Label
    shards in key=value directories get those columns as the run's input does (`input.directory_columns`),
    so a partition directory can be the group."""
    column, group_column = labels.resolved(columns.preset)
    normalize = NormalizeStage(fmt, columns, row_hash=True)
    by_id: dict[str, Label] = {}
    invalid: dict[str, str] = {}
    rows = duplicates = 0
    if not paths:
        raise LabelError("labels.paths: no label shards (pass --labels, or run on labelled input shards)")
    listed = [expand_under(uri) for uri in paths]
    for uri, (_, _, files) in zip(paths, listed):
        if not files:
            raise LabelError(f"labels.paths: {uri} matched no Parquet files")
    directories = None
    if columns.directory_columns:
        schemas = {path: pq.read_schema(path, filesystem=filesystem) for filesystem, _, files in listed for path in files}
        directories = directory_columns(listed[0][0], [base for _, base, _ in listed], schemas)
    for filesystem, _, files in listed:
        for path in files:
            table = pq.read_table(path, filesystem=filesystem)
            if directories is not None:
                table = directories.added_to(table, path)
            for field, name in (("labels.column", column), ("labels.group_column", group_column)):
                if name is not None and name not in table.column_names:
                    raise LabelError(f"{field}: shard {path} has no column {name!r} (have {table.column_names})")
            if ROW_HASH not in table.column_names:  # rows without an id: known by shard path + position
                table = table.append_column(ROW_HASH, pa.array(row_hashes(path, table.num_rows), pa.uint64()))
            ids = normalize.process(table).column("id").to_pylist()
            values = table.column(column).to_pylist()
            groups = table.column(group_column).to_pylist() if group_column else [None] * len(ids)
            rows += len(ids)
            for row_id, raw, group in zip(ids, values, groups):
                if row_id in by_id or row_id in invalid:
                    duplicates += 1
                    continue
                try:
                    by_id[row_id] = Label(fmt.canonical_label(raw), None if group is None else str(group))
                except ValueError as exc:
                    invalid[row_id] = str(exc)
    return LabelSet(by_id, rows, invalid, duplicates)


def labelled_rows(run: FinishedRun, labels: LabelSet) -> list[LabelledRow]:
    """The run's rows that have a valid label, batch by batch (only the columns needed are read)."""
    rows = []
    for batch in run.batches(row_columns=["id", ERROR_REASON]):
        verdicts = judgments_by_id(batch.parts.get(JUDGMENTS))
        for outcome in OUTCOMES:
            table = batch.parts.get(outcome)
            if table is None:
                continue
            for row in table.to_pylist():
                label = labels.by_id.get(row["id"])
                if label is None:
                    continue
                rows.append(LabelledRow(
                    id=row["id"],
                    outcome=outcome,
                    error_reason=row.get(ERROR_REASON),
                    verdicts=tuple(Verdict.from_dict(v) for v in verdicts.get(row["id"], [])),
                    label=label.value,
                    group=label.group,
                ))
    return rows


def evaluate_run(run: FinishedRun, cfg: RunConfig, output: str) -> dict[str, Any]:
    """Join, score and write OUTPUT/eval.json and OUTPUT/eval.md; returns eval.json's content.

    `cfg` is the run's config with the `labels` section to use (its label shards default to the
    run's input shards) and the `filter` rules the threshold table varies from.
    """
    fmt = cfg.judging_format()
    label_paths = cfg.labels.paths or cfg.input.paths
    labels = read_labels(label_paths, cfg.labels, cfg.input, fmt)
    rows = labelled_rows(run, labels)
    column, group_column = cfg.labels.resolved(cfg.input.preset)
    found = {row.id for row in rows}
    result = {
        "mode": fmt.mode,
        "run": run.uri,
        "judge_model": cfg.judge.engine.model,
        "labels": {"paths": label_paths, "column": column, "group_column": group_column},
        "label_rows": labels.rows,
        "labelled_in_run": len(rows),
        "missing_from_run": len(set(labels.by_id) - found),
        "invalid_labels": len(labels.invalid),
        "duplicate_label_ids": labels.duplicate_ids,
        **fmt.evaluate(rows, cfg.filter),
    }
    filesystem, root = filesystem_for(output)
    write_atomically(filesystem, f"{root.rstrip('/')}/{EVAL_JSON}", json.dumps(result, indent=2).encode())
    write_atomically(filesystem, f"{root.rstrip('/')}/{EVAL_MD}", render_markdown(result).encode())
    return result


def _cell(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.4f}".rstrip("0").rstrip(".")
    if isinstance(value, list) and all(isinstance(v, float) for v in value):
        return "[" + ", ".join(_cell(v) for v in value) + "]"
    return str(value)


def render_markdown(result: dict[str, Any]) -> str:
    """eval.md: the scalar metrics, then every per-group and threshold table, as Markdown tables."""
    lines = [f"# Judge evaluation: {result['judge_model']} ({result['mode']})", "",
             f"Run `{result['run']}`, labels `{result['labels']['column']}` from "
             + ", ".join(f"`{p}`" for p in result["labels"]["paths"]) + ".", "",
             "Every number is defined in the README (`flexcurate evaluate`); n/a: undefined for these rows.", "",
             "| metric | value |", "|---|---|"]
    tables: list[tuple[str, list[str], list[list[str]]]] = []
    for key, value in result.items():
        if key in ("mode", "run", "judge_model", "labels"):
            continue
        if isinstance(value, dict):
            name = "group" if key == "by_group" else "name"
            tables.append((key, [name, "value"], [[str(k), _cell(v)] for k, v in value.items()]))
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            header = list(value[0])
            tables.append((key, header, [[_cell(row[h]) for h in header] for row in value]))
        else:
            lines.append(f"| {key} | {_cell(value)} |")
    for key, header, body in tables:
        lines += ["", f"## {key}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines) + "\n"
