"""The curation pipeline: typed config -> ordered stages -> a streaming Ray Dataset -> outputs + report.

`build_stages` has no side effects. `run_curation` checks the shards, opens the run directory (a new
run, or the resumption of an interrupted one), settles duplicate ids, streams the plan (the write
stage commits batch by batch), then writes report.json and _SUCCESS. Incremental runs first narrow
the shards to the night's new ones. The caller owns `ray.init` (jobs/ entrypoints do).
"""
from __future__ import annotations

import functools
import logging
import time
from typing import Any, Callable, TextIO

import ray

from pipelines.adapter import apply_stage, read_rows
from pipelines.config import RunConfig
from pipelines.duplicates import find_duplicate_ids, settle_duplicates
from pipelines.incremental import load_state, partition, plan_night, record_night
from pipelines.metrics import start_metrics
from pipelines.progress import ProgressLog
from pipelines.quarantine import start_ledger
from pipelines.report import InputSummary, RunResult, build_report, merge_batch_stats, write_report
from pipelines.report_html import write_report_html
from pipelines.run_dir import OutputExists, open_run_directory
from pipelines.shards import ShardSet, discover
from stages.base import Stage
from stages.decode import DecodeStage
from stages.engines.api import Engine
from stages.judge import JudgeStage
from stages.label import LabelStage
from stages.normalize import CANONICAL_TYPES, NormalizeStage
from stages.media.fetch import load_media_bytes
from stages.write import MediaReader, WriteStage, complete_outputs

log = logging.getLogger(__name__)


def build_stages(
    cfg: RunConfig,
    engine_factory: Callable[[], Engine] | None = None,
    skip_ids: frozenset[str] = frozenset(),
) -> list[Stage]:
    fmt = cfg.judging_format()
    return [
        NormalizeStage(fmt, cfg.input, batch_size=cfg.decode_batch_size, skip_ids=skip_ids),
        DecodeStage(cfg.media, cfg.input, batch_size=cfg.decode_batch_size),
        JudgeStage(fmt, cfg.judge, engine_factory=engine_factory),
        LabelStage(fmt, cfg.filter),
        WriteStage(cfg.output.path, fmt, batch_size=cfg.output.rows_per_file,
                   embed_media=media_reader(cfg) if cfg.output.embed_media else None),
    ]


def media_reader(cfg: RunConfig) -> MediaReader:
    """Media bytes as the decode stage reads them, under the same media roots, schemes and size
    bound: what preferences/ embeds (`output.embed_media`) and report.html shows."""
    return functools.partial(
        load_media_bytes,
        media_roots=cfg.input.media_roots,
        allowed_schemes=cfg.input.allowed_schemes,
        max_bytes=cfg.media.max_media_bytes,
    )


def check_stage_chain(stages: list[Stage], initial: set[str]) -> None:
    """Every column a stage needs is read from the shard or added by an earlier stage."""
    available = set(initial)
    for stage in stages:
        missing = [c for c in stage.needs if c not in available]
        if missing:
            raise ValueError(f"stage '{stage.name}' needs {missing}, which no earlier stage provides")
        available |= set(stage.adds)


def run_curation(
    cfg: RunConfig, engine_factory: Callable[[], Engine] | None = None, progress_bar: TextIO | None = None
) -> RunResult:
    """Run the job; with `incremental.enabled`, only the night's new shards, into their partition.

    `progress_bar`: a terminal to draw one progress bar on; None logs a progress line every 30 s.
    """
    shards: ShardSet = discover(cfg.input.paths, cfg.judging_format(), cfg.input)
    if not cfg.incremental.enabled:
        return _run(cfg, shards, engine_factory, progress_bar)
    state = load_state(cfg.incremental.state)
    plan = plan_night(shards, cfg.incremental, state)
    night = cfg.model_copy(deep=True)
    night.output.path = partition(cfg.output.path, plan.run_date)
    if not plan.shards.paths:
        log.info("incremental: no new or changed shards among %d; nothing to do", len(plan.unchanged))
        return RunResult(output=night.output.path, report={"status": "nothing_new", "unchanged_shards": len(plan.unchanged)})
    log.info("incremental: %d new or changed shards, %d unchanged -> %s",
             len(plan.shards.paths), len(plan.unchanged), night.output.path)
    result = _run(night, plan.shards, engine_factory, progress_bar)
    if result.succeeded:
        record_night(cfg.incremental.state, state, plan, night.output.path)
    return result


def _run(
    cfg: RunConfig, shards: ShardSet, engine_factory: Callable[[], Engine] | None, progress_bar: TextIO | None
) -> RunResult:
    started = time.time()
    check_stage_chain(build_stages(cfg, engine_factory)[1:], set(CANONICAL_TYPES))
    run_dir = open_run_directory(cfg, shards.paths)
    if run_dir.resumed_batches:
        log.info("resuming: %d committed batches (%d rows) kept, %d orphan files removed",
                 run_dir.resumed_batches, len(run_dir.committed_ids), len(run_dir.removed_orphans))
    duplicates = find_duplicate_ids(shards, cfg.input.column_mapping().get("id", "id"))
    if duplicates and not set(duplicates) <= run_dir.committed_ids:
        settle_duplicates(cfg, shards, duplicates)
    stages = build_stages(cfg, engine_factory, skip_ids=run_dir.committed_ids | frozenset(duplicates))

    metrics, ledger = start_metrics(), start_ledger()
    try:
        dataset = read_rows(shards.paths, shards.filesystem, cfg.decode_batch_size, shards.schema)
        for stage in stages:
            dataset = apply_stage(dataset, stage, metrics, ledger)
        progress = ProgressLog(shards.rows - len(run_dir.committed_ids), metrics, bar=progress_bar)
        for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
            # The write stage commits as it goes; the report reads its tallies back from the manifests.
            progress.batch_written(batch.column("stats").to_pylist())
        stage_metrics, timeline = ray.get([metrics.snapshot.remote(), metrics.timeline.remote()])
    finally:
        ray.kill(metrics)
        ray.kill(ledger)

    totals: dict[str, Any] = {}
    merge_batch_stats(totals, [manifest["stats"] for manifest in run_dir.manifests()])
    complete_outputs(run_dir.filesystem, run_dir.root, cfg.judging_format())
    report = build_report(
        cfg=cfg,
        inputs=InputSummary.of(shards),
        totals=totals,
        stage_metrics=stage_metrics,
        started=started,
        finished=time.time(),
        timeline=timeline,
    )
    report["resumed"] = {"committed_batches": run_dir.resumed_batches, "committed_rows": len(run_dir.committed_ids)}
    report["duplicate_ids"] = len(duplicates)
    write_report(run_dir.filesystem, f"{run_dir.root}/report.json", report)
    try:
        write_report_html(run_dir.filesystem, run_dir.root, report, cfg, media_reader(cfg))
    except Exception:  # report.json is the record; its page must not fail a finished run
        log.exception("report.html could not be written; report.json is complete")
    if report["status"] == "succeeded":
        run_dir.mark_success()
    return RunResult(output=cfg.output.path, report=report)


__all__ = ["OutputExists", "RunResult", "build_stages", "run_curation"]
