"""Relabel a finished run under new `filter` settings from its stored verdicts: no engine, no GPU.

Batch by batch (the source run's commits), the judged rows of kept/ and dropped/ are rebuilt as they
reached the label stage (their columns, their verdicts from judgments/, rows dropped before judging
left as they were) and go through the pipeline's own label and write stages; errors/ rows and their
verdicts are written again unchanged. The new directory is a run directory like any other (commits,
resume, report.json with `relabeled_from`, report.html, _SUCCESS), equal to what a full run with the new settings
would have written, and written at local-disk speed.
"""
from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from typing import Any

import pyarrow as pa

from pipelines.config import ConfigError, RunConfig
from pipelines.curate import media_reader
from pipelines.finished_run import FinishedRun, judgments_by_id
from pipelines.report import InputSummary, RunResult, build_report, merge_batch_stats, write_report
from pipelines.report_html import write_report_html
from pipelines.run_dir import open_run_directory
from stages.formats.base import JUDGMENT_TYPE, JudgingFormat
from stages.label import LabelStage
from stages.rows import DROP_REASON, DROPPED, ERRORS, KEPT
from stages.write import JUDGMENTS, WriteStage, complete_outputs

# The config sections a relabel may change; everything else decided the verdicts it reuses.
RELABELABLE = ("filter", "output")
log = logging.getLogger(__name__)


def differing_fields(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted names of the fields whose values differ between two config dumps."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [field for key in sorted(set(old) | set(new))
                for field in differing_fields(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [] if old == new else [prefix.rstrip(".")]


def check_relabel_config(source: RunConfig, new: RunConfig) -> None:
    """ConfigError naming every changed setting that only a new engine run could apply."""
    changed = [f for f in differing_fields(source.model_dump(mode="json"), new.model_dump(mode="json"))
               if f.split(".", 1)[0] not in RELABELABLE]
    if changed:
        raise ConfigError(
            f"relabel can change only {' and '.join(RELABELABLE)} settings; these differ from the run's and "
            f"would need the engine: {', '.join(changed)}"
        )


def label_input(parts: dict[str, pa.Table], verdicts: dict[str, list[dict[str, Any]]], fmt: JudgingFormat) -> pa.Table | None:
    """A batch's kept and dropped rows as they reached the label stage: the label columns removed,
    drop_reason where the pipeline keeps it (before the judge's result columns), cleared on judged rows
    so the rules decide them anew, and each row's verdicts back in its `judgments` column."""
    tables = []
    for name in (KEPT, DROPPED):
        table = parts.get(name)
        if table is None or not table.num_rows:
            continue
        table = table.drop_columns([c for c in fmt.label_columns if c in table.column_names])
        if DROP_REASON not in table.column_names:
            position = min(table.column_names.index(c) for c in fmt.result_columns)
            table = table.add_column(position, DROP_REASON, pa.nulls(table.num_rows, pa.string()))
        tables.append(table)
    if not tables:
        return None
    table = pa.concat_tables(tables, promote_options="permissive")
    judgments = [verdicts.get(row_id) or None for row_id in table.column("id").to_pylist()]
    drops = [None if judged else reason for judged, reason in zip(judgments, table.column(DROP_REASON).to_pylist())]
    table = table.set_column(table.column_names.index(DROP_REASON), DROP_REASON, pa.array(drops, pa.string()))
    return table.append_column(JUDGMENTS, pa.array(judgments, pa.list_(JUDGMENT_TYPE)))


def with_verdicts(table: pa.Table, verdicts: dict[str, list[dict[str, Any]]]) -> pa.Table:
    """errors/ rows with their verdicts (written back to judgments/ by the write stage)."""
    judgments = [verdicts.get(row_id) or None for row_id in table.column("id").to_pylist()]
    return table.append_column(JUDGMENTS, pa.array(judgments, pa.list_(JUDGMENT_TYPE)))


def relabel_run(source: FinishedRun, cfg: RunConfig) -> RunResult:
    """Write the relabelled run to cfg.output.path; cfg differs from the source's only in RELABELABLE."""
    started = time.time()
    check_relabel_config(source.config, cfg)
    fmt = cfg.judging_format()
    run_dir = open_run_directory(cfg, [source.uri])
    label = LabelStage(fmt, cfg.filter)
    write = WriteStage(cfg.output.path, fmt, embed_media=media_reader(cfg) if cfg.output.embed_media else None)
    timings: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    # Written by an interrupted attempt of this relabel: not written again.
    committed = frozenset(run_dir.committed_ids.to_pylist())
    for batch in source.batches():
        if set(batch.ids) <= committed:
            continue
        verdicts = judgments_by_id(batch.parts.get(JUDGMENTS))
        errors = _uncommitted(batch.parts.get(ERRORS), committed)
        if errors is not None:
            _timed(timings, "write", errors.num_rows, write.process, with_verdicts(errors, verdicts))
        table = _uncommitted(label_input(batch.parts, verdicts, fmt), committed)
        if table is not None:
            labelled = _timed(timings, "label", table.num_rows, label.process, table)
            _timed(timings, "write", table.num_rows, write.process, labelled)
    totals: dict[str, Any] = {}
    merge_batch_stats(totals, run_dir.batch_stats())
    complete_outputs(run_dir.filesystem, run_dir.root, fmt)
    inputs = InputSummary(source.report["input_rows"], source.report["input_shards"], source.report["skipped_shards"])
    report = build_report(cfg=cfg, inputs=inputs, totals=totals, stage_metrics=timings, started=started,
                          finished=time.time())
    # What only the judging run knew (its replica restarts, node losses) stays as it reported it.
    report["judge"].update({k: v for k, v in source.report.get("judge", {}).items() if k not in report["judge"]})
    report["relabeled_from"] = source.uri
    report["resumed"] = {"committed_batches": run_dir.resumed_batches, "committed_rows": len(run_dir.committed_ids)}
    report["duplicate_ids"] = source.report.get("duplicate_ids", 0)
    write_report(run_dir.filesystem, f"{run_dir.root}/report.json", report)
    try:
        write_report_html(run_dir.filesystem, run_dir.root, report, cfg, media_reader(cfg))
    except Exception:  # report.json is the record; its page must not fail the relabel
        log.exception("report.html could not be written; report.json is complete")
    if report["status"] == "succeeded":
        run_dir.mark_success()
    log.info("relabelled %s -> %s: %s", source.uri, cfg.output.path, json.dumps(report["counts"]))
    return RunResult(output=cfg.output.path, report=report)


def _uncommitted(table: pa.Table | None, committed: frozenset[str]) -> pa.Table | None:
    """The rows of `table` not yet committed (None when none are left)."""
    if table is None or not table.num_rows:
        return None
    if committed:
        table = table.filter(pa.array([i not in committed for i in table.column("id").to_pylist()]))
    return table if table.num_rows else None


def _timed(timings: dict[str, dict[str, float]], stage: str, rows: int, work: Any, table: pa.Table) -> Any:
    began = time.perf_counter()
    out = work(table)
    entry = timings[stage]
    entry["batches"] += 1
    entry["rows"] += rows
    entry["seconds"] += time.perf_counter() - began
    return out
