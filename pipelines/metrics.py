"""The run's per-stage totals and rows-per-second timeline: a small actor every stage's batches report
to; the progress log and the run report read it."""
from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import ray

from pipelines.quarantine import on_this_node


@ray.remote(num_cpus=0)
class StageMetrics:
    """Per-stage totals: batches, rows, seconds of work, rows this stage sent to errors/."""

    def __init__(self) -> None:
        self.totals: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        # stage -> unix second a batch finished in -> rows: how throughput moved during the run
        self.finished: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))

    def record(self, stage: str, rows: int, seconds: float, new_errors: int) -> None:
        entry = self.totals[stage]
        entry["batches"] += 1
        entry["rows"] += rows
        entry["seconds"] += seconds
        entry["errors"] += new_errors
        self.finished[stage][int(time.time())] += rows

    def snapshot(self) -> dict[str, dict[str, float]]:
        return {stage: dict(values) for stage, values in self.totals.items()}

    def timeline(self) -> dict[str, dict[int, int]]:
        return {stage: dict(seconds) for stage, seconds in self.finished.items()}


def start_metrics() -> Any:
    return StageMetrics.options(scheduling_strategy=on_this_node()).remote()
