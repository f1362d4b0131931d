"""The run's per-stage totals: a small actor every stage's batches report to; the progress log and
the run report read it."""
from __future__ import annotations

from collections import defaultdict
from typing import Any

import ray

from pipelines.quarantine import on_this_node


@ray.remote(num_cpus=0)
class StageMetrics:
    """Per-stage totals: batches, rows, seconds of work, rows this stage sent to errors/."""

    def __init__(self) -> None:
        self.totals: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))

    def record(self, stage: str, rows: int, seconds: float, new_errors: int) -> None:
        entry = self.totals[stage]
        entry["batches"] += 1
        entry["rows"] += rows
        entry["seconds"] += seconds
        entry["errors"] += new_errors

    def snapshot(self) -> dict[str, dict[str, float]]:
        return {stage: dict(values) for stage, values in self.totals.items()}


def start_metrics() -> Any:
    return StageMetrics.options(scheduling_strategy=on_this_node()).remote()
