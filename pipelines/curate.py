"""The curation pipeline: typed config -> ordered stages -> a streaming Ray Dataset -> outputs + report.

`build_stages` has no side effects. `run_curation` checks the shards, opens the run directory (a new
run, or the resumption of an interrupted one), settles duplicate ids, streams the plan (the write
stage commits batch by batch), then writes report.json and _SUCCESS. Incremental runs first finish
a night left unfinished, then narrow the shards to the night's new ones. The caller owns `ray.init`
(jobs/ entrypoints do).
"""
from __future__ import annotations

import functools
import logging
import time
from typing import Any, Callable, TextIO

import pyarrow as pa
import pyarrow.compute as pc
import ray

from pipelines.adapter import apply_stage, read_rows
from pipelines.config import RunConfig
from pipelines.duplicates import settle_duplicates
from pipelines.errors import RunInterrupted, first_line
from pipelines.incremental import (
    RUNNING,
    NightPlan,
    begin_night,
    load_state,
    night_date,
    partition,
    plan_night,
    record_night,
    unfinished_night,
)
from pipelines.metrics import start_metrics
from pipelines.pool_watch import PoolWatch
from pipelines.progress import ProgressLog
from pipelines.quarantine import start_ledger
from pipelines.report import InputSummary, RunResult, build_report, merge_batch_stats, write_report
from pipelines.report_html import write_report_html
from pipelines.run_dir import RUN_IDENTITY, OutputExists, RunDirectory, is_finished, open_run_directory
from pipelines.shard_ids import plan_resume, read_shard_ids
from pipelines.shards import ShardSet, discover
from pipelines.store_budget import StoreBudget, apply_budget, store_budget
from stages.base import Stage
from stages.decode import DecodeStage
from stages.engines.api import Engine
from stages.judge import JudgeStage
from stages.label import LabelStage
from stages.normalize import NormalizeStage, canonical_types
from stages.media.fetch import load_media_bytes
from stages.write import MediaReader, WriteStage, complete_outputs

log = logging.getLogger(__name__)


def build_stages(
    cfg: RunConfig,
    engine_factory: Callable[[], Engine] | None = None,
    skip_ids: frozenset[str] = frozenset(),
    row_hash: bool = False,
) -> list[Stage]:
    fmt = cfg.judging_format()
    return [
        NormalizeStage(fmt, cfg.input, batch_size=cfg.decode_batch_size, skip_ids=skip_ids, row_hash=row_hash),
        DecodeStage(cfg.media, cfg.input, batch_size=cfg.decode_batch_size, columns=fmt.media),
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
    """Run the job; with `incremental.enabled`, first the night a failed or killed attempt left
    unfinished (in its own partition), then tonight's new shards, into tonight's partition.

    `progress_bar`: a terminal to draw one progress bar on; None logs a progress line every 30 s.
    """
    shards: ShardSet = discover(cfg.input.paths, cfg.judging_format(), cfg.input)
    if not cfg.incremental.enabled:
        return _run(cfg, shards, engine_factory, progress_bar)
    state = load_state(cfg.incremental.state)
    unfinished = unfinished_night(state, shards)
    if unfinished is not None:
        result = _run_night(cfg, unfinished, state, engine_factory, resuming=True, progress_bar=progress_bar)
        tonight = night_date(cfg.incremental)
        if not result.succeeded:
            log.warning("incremental: night %s is still unfinished (%s); no new night starts until it succeeds",
                        unfinished.run_date, result.report["status"])
        if not result.succeeded or unfinished.run_date == tonight:
            return result
    plan = plan_night(shards, cfg.incremental, state)
    if not plan.shards.paths:
        log.info("incremental: no new or changed shards among %d; nothing to do", len(plan.unchanged))
        return RunResult(output=partition(cfg.output.path, plan.run_date),
                         report={"status": "nothing_new", "unchanged_shards": len(plan.unchanged)})
    log.info("incremental: %d new or changed shards, %d unchanged", len(plan.shards.paths), len(plan.unchanged))
    return _run_night(cfg, plan, state, engine_factory, resuming=False, progress_bar=progress_bar)


def _run_night(
    cfg: RunConfig,
    plan: NightPlan,
    state: dict[str, Any],
    engine_factory: Callable[[], Engine] | None,
    resuming: bool,
    progress_bar: TextIO | None = None,
) -> RunResult:
    """One night into its partition: named as running in the state first, recorded once finished."""
    night = cfg.model_copy(deep=True)
    night.output.path = partition(cfg.output.path, plan.run_date)
    if resuming and is_finished(night.output.path):  # killed after _SUCCESS, before the state was saved
        log.info("incremental: night %s had finished; recording it", plan.run_date)
        record_night(cfg.incremental.state, state, plan, night.output.path)
        return RunResult(output=night.output.path, report={"status": "succeeded", "recorded_night": str(plan.run_date)})
    if resuming:
        log.info("incremental: finishing night %s first (%d shards) -> %s", plan.run_date, len(plan.shards.paths),
                 night.output.path)
    else:
        begin_night(cfg.incremental.state, state, plan, night.output.path)
    try:
        result = _run(night, plan.shards, engine_factory, progress_bar)
    except OutputExists as exc:
        if not resuming:
            raise
        raise OutputExists(
            f"night {plan.run_date} is unfinished and was started with another config, so it cannot be finished "
            f"with this one: rerun with the config it started with (in {night.output.path}/{RUN_IDENTITY}), or "
            f"remove that partition and the '{RUNNING}' entry of {cfg.incremental.state} to give its rows up"
        ) from exc
    if result.succeeded:
        record_night(cfg.incremental.state, state, plan, night.output.path)
    return result


def _run(
    cfg: RunConfig, shards: ShardSet, engine_factory: Callable[[], Engine] | None, progress_bar: TextIO | None
) -> RunResult:
    started = time.time()
    check_stage_chain(build_stages(cfg, engine_factory)[1:], set(canonical_types(cfg.judging_format())))
    run_dir = open_run_directory(cfg, shards.paths)
    if run_dir.resumed_batches:
        log.info("resuming: %d committed batches (%d rows) kept, %d orphan files removed",
                 run_dir.resumed_batches, len(run_dir.committed_ids), len(run_dir.removed_orphans))
    ids = read_shard_ids(shards, cfg.input.column_mapping().get("id", "id"))
    counts = ids.duplicates()
    duplicates = pa.array(sorted(counts), pa.string())
    try:
        if counts and not pc.all(pc.is_in(duplicates, value_set=run_dir.committed_ids)).as_py():
            settle_duplicates(cfg, shards, counts)
        resume = plan_resume(ids, pa.concat_arrays([run_dir.committed_ids, duplicates]))
        if run_dir.resumed_batches:
            log.info("resuming: %d of %d shards have rows left; %d of their ids are already done",
                     len(resume.unfinished), len(shards.paths), len(resume.skip_ids))
        budget = store_budget(cfg.object_store_budget_mib, build_stages(cfg, engine_factory, row_hash=ids.needs_row_hash),
                              resume.unfinished, shards.filesystem, shards.schema, ids.needs_row_hash)
        log.info(budget.describe())
        stages = build_stages(cfg, engine_factory, skip_ids=resume.skip_ids, row_hash=ids.needs_row_hash)
        return _stream(cfg, shards, run_dir, stages, resume.unfinished, ids.needs_row_hash, started,
                       len(duplicates), budget, progress_bar)
    except Exception as exc:  # the run started: what it committed stays, a rerun resumes from there
        log.exception("the run stopped before finishing")
        raise RunInterrupted(
            f"the run stopped before finishing ({first_line(exc)}); its committed batches are kept: "
            "rerun the same command to resume"
        ) from exc


def _stream(
    cfg: RunConfig,
    shards: ShardSet,
    run_dir: RunDirectory,
    stages: list[Stage],
    unfinished: list[str],
    row_hash: bool,
    started: float,
    duplicates: int,
    budget: StoreBudget,
    progress_bar: TextIO | None,
) -> RunResult:
    """Stream the plan over the shards with rows left (the write stage commits batch by batch), then
    report on all of them; the run has started."""
    metrics, ledger = start_metrics(), start_ledger()
    try:
        if unfinished:
            dataset = read_rows(unfinished, shards.filesystem, cfg.decode_batch_size, shards.schema, row_hash=row_hash,
                                directories=shards.directories)
            for stage in stages:
                dataset = apply_stage(dataset, stage, metrics, ledger)
            apply_budget(dataset, budget)
            progress = ProgressLog(shards.rows - len(run_dir.committed_ids), metrics, bar=progress_bar)
            with PoolWatch(ledger, cfg.judge.replica_down_timeout_s).watching():
                for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
                    # The write stage commits as it goes; the report reads its tallies back from the manifests.
                    progress.batch_written(batch.column("stats").to_pylist())
        stage_metrics, timeline = ray.get([metrics.snapshot.remote(), metrics.timeline.remote()])
        pool, task_worker_deaths = ray.get([ledger.counts.remote(), ledger.task_worker_deaths.remote()])
    finally:
        ray.kill(metrics)
        ray.kill(ledger)

    totals: dict[str, Any] = {}
    merge_batch_stats(totals, run_dir.batch_stats())
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
    report["judge"].update(pool)
    report["task_worker_deaths"] = task_worker_deaths
    report["resumed"] = {"committed_batches": run_dir.resumed_batches, "committed_rows": len(run_dir.committed_ids)}
    report["duplicate_ids"] = duplicates
    report["object_store_budget"] = budget.as_report()
    write_report(run_dir.filesystem, f"{run_dir.root}/report.json", report)
    try:
        write_report_html(run_dir.filesystem, run_dir.root, report, cfg, media_reader(cfg))
    except Exception:  # report.json is the record; its page must not fail a finished run
        log.exception("report.html could not be written; report.json is complete")
    if report["status"] == "succeeded":
        run_dir.mark_success()
    return RunResult(output=cfg.output.path, report=report)


__all__ = ["OutputExists", "RunResult", "build_stages", "run_curation"]
