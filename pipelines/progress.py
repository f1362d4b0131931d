"""Progress lines for job logs: Ray Data's progress bars are off inside `ray job submit` jobs and
unreadable in log files, so the driver logs rows done, rate, outcomes and per-stage throughput."""
from __future__ import annotations

import json
import logging
import time
from collections import Counter
from typing import Any

import ray

from stages.rows import OUTCOMES

log = logging.getLogger("flexcurate.progress")


class ProgressLog:
    def __init__(self, total_rows: int, metrics: Any, every_seconds: float = 30.0) -> None:
        self.total = total_rows
        self.metrics = metrics
        self.every = every_seconds
        self.started = self.last = time.monotonic()
        self.rows = 0
        self.outcomes: Counter[str] = Counter()

    def batch_written(self, stats_json: list[str]) -> None:
        for text in stats_json:
            stats = json.loads(text)
            self.rows += stats["rows"]
            self.outcomes.update(stats["outcomes"])
        now = time.monotonic()
        if now - self.last >= self.every or self.rows >= self.total:
            self.last = now
            self.emit(now)

    def emit(self, now: float) -> None:
        elapsed = max(now - self.started, 1e-9)
        rate = self.rows / elapsed
        remaining = (self.total - self.rows) / rate if rate > 0 else float("inf")
        outcomes = " ".join(f"{k}={self.outcomes[k]}" for k in OUTCOMES)
        log.info("progress: %d/%d rows (%.0f%%), %.1f rows/s, %s, eta %.0fs",
                 self.rows, self.total, 100 * self.rows / max(self.total, 1), rate, outcomes, remaining)
        stages = ray.get(self.metrics.snapshot.remote())
        log.info("stages: %s", ", ".join(
            f"{name} {v['rows']:.0f} rows {v['rows'] / v['seconds']:.1f}/s busy" if v.get("seconds") else f"{name} {v['rows']:.0f} rows"
            for name, v in stages.items()
        ))
