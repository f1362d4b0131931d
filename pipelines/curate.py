"""The curation pipeline: typed config -> ordered stages -> a streaming Ray Dataset -> outputs + report.

`build_stages` has no side effects. `run_curation` owns the run directory (refusing to overwrite a
finished run), executes the plan, and writes report.json and then _SUCCESS. The caller owns
`ray.init` (jobs/ entrypoints do).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import ray
from pyarrow import fs as pafs

from pipelines.adapter import METRICS_ACTOR, apply_stage, start_metrics
from pipelines.config import RunConfig
from pipelines.report import build_report, merge_batch_stats, write_report
from pipelines.shards import ShardSet, discover
from stages.base import Stage
from stages.decode import DecodeStage
from stages.engine_api import Engine
from stages.judge import JudgeStage
from stages.label import LabelStage
from stages.normalize import NormalizeStage
from stages.write import WriteStage, complete_outputs

SUCCESS_MARKER = "_SUCCESS"


class OutputExists(RuntimeError):
    """The output directory already holds a finished run."""


@dataclass
class RunResult:
    output: str
    report: dict[str, Any]

    @property
    def succeeded(self) -> bool:
        return self.report["status"] == "succeeded"


def build_stages(cfg: RunConfig, engine_factory: Callable[[], Engine] | None = None) -> list[Stage]:
    return [
        NormalizeStage(cfg.mode, cfg.input),
        DecodeStage(cfg.media, cfg.input, batch_size=cfg.decode_batch_size),
        JudgeStage(cfg.mode, cfg.judge, engine_factory=engine_factory),
        LabelStage(cfg.mode, cfg.filter),
        WriteStage(cfg.output.path, cfg.mode),
    ]


def check_stage_chain(stages: list[Stage], initial: set[str]) -> None:
    """Every column a stage needs is read from the shard or added by an earlier stage."""
    available = set(initial)
    for stage in stages:
        missing = [c for c in stage.needs if c not in available]
        if missing:
            raise ValueError(f"stage '{stage.name}' needs {missing}, which no earlier stage provides")
        available |= set(stage.adds)


def prepare_output(path: str, overwrite: bool) -> tuple[pafs.FileSystem, str]:
    filesystem, root = pafs.FileSystem.from_uri(path)
    info = filesystem.get_file_info(root)
    if info.type != pafs.FileType.NotFound:
        finished = filesystem.get_file_info(f"{root}/{SUCCESS_MARKER}").type != pafs.FileType.NotFound
        if finished and not overwrite:
            raise OutputExists(f"{path} already holds a finished run; pass --overwrite to replace it")
        filesystem.delete_dir(root)
    filesystem.create_dir(root, recursive=True)
    return filesystem, root


def run_curation(cfg: RunConfig, engine_factory: Callable[[], Engine] | None = None) -> RunResult:
    started = time.time()
    shards: ShardSet = discover(cfg.input.paths, cfg.mode, cfg.input)
    stages = build_stages(cfg, engine_factory)
    check_stage_chain(stages[1:], set(stages[0].adds))
    filesystem, root = prepare_output(cfg.output.path, cfg.output.overwrite)

    metrics = start_metrics()
    try:
        dataset = ray.data.read_parquet(shards.paths, filesystem=shards.filesystem)
        for stage in stages:
            dataset = apply_stage(dataset, stage)
        totals: dict[str, Any] = {}
        for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
            merge_batch_stats(totals, batch.column("stats").to_pylist())
        stage_metrics = ray.get(metrics.snapshot.remote())
    finally:
        ray.kill(metrics)

    complete_outputs(filesystem, root, cfg.mode)
    report = build_report(
        cfg=cfg,
        shards=shards,
        totals=totals,
        stage_metrics=stage_metrics,
        started=started,
        finished=time.time(),
    )
    write_report(filesystem, f"{root}/report.json", report)
    if report["status"] == "succeeded":
        with filesystem.open_output_stream(f"{root}/{SUCCESS_MARKER}") as sink:
            sink.write(b"")
    return RunResult(output=cfg.output.path, report=report)


__all__ = ["METRICS_ACTOR", "OutputExists", "RunResult", "build_stages", "run_curation"]
