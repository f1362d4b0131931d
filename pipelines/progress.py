"""The run's progress as a person reads it: rows done, rate, outcomes and time left.

On a terminal, one progress bar redrawn in place; elsewhere (log files, `ray job submit` jobs) a log
line every `every_seconds` and at the end, with per-stage throughput. Ray Data's own per-operator
progress is off unless the command runs with `--verbose` (jobs/runtime.py).
"""
from __future__ import annotations

import json
import logging
import time
from collections import Counter
from typing import Any, TextIO

import ray

from stages.rows import OUTCOMES

log = logging.getLogger("flexcurate.progress")
BAR_WIDTH = 24
BAR_REDRAW_SECONDS = 0.2


def _duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class ProgressLog:
    def __init__(self, total_rows: int, metrics: Any, every_seconds: float = 30.0, bar: TextIO | None = None) -> None:
        self.total = total_rows
        self.metrics = metrics
        self.every = every_seconds
        self.bar = bar  # a terminal: draw one bar there instead of logging lines
        self.started = self.last = time.monotonic()
        self.rows = 0
        self.outcomes: Counter[str] = Counter()
        if bar is not None:
            self.draw(self.started)

    def batch_written(self, stats_json: list[str]) -> None:
        for text in stats_json:
            stats = json.loads(text)
            self.rows += stats["rows"]
            self.outcomes.update(stats["outcomes"])
        now = time.monotonic()
        done = self.rows >= self.total
        due = now - self.last >= (BAR_REDRAW_SECONDS if self.bar is not None else self.every)
        if due or done:
            self.last = now
            self.draw(now) if self.bar is not None else self.emit(now)
        if done and self.bar is not None:
            self.bar.write("\n")
            self.bar.flush()

    def status(self, now: float) -> str:
        elapsed = max(now - self.started, 1e-9)
        rate = self.rows / elapsed
        remaining = (self.total - self.rows) / rate if rate > 0 else float("inf")
        outcomes = " ".join(f"{k}={self.outcomes[k]}" for k in OUTCOMES)
        return f"{rate:.1f} rows/s, {outcomes}, eta {_duration(remaining)}"

    def draw(self, now: float) -> None:
        assert self.bar is not None
        fraction = min(self.rows / self.total, 1.0) if self.total else 1.0
        filled = int(round(fraction * BAR_WIDTH))
        line = f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {self.rows}/{self.total} rows {fraction:4.0%}  {self.status(now)}"
        self.bar.write("\r" + line + "\x1b[K")  # redraw in place, clear what a longer line left
        self.bar.flush()

    def emit(self, now: float) -> None:
        log.info("progress: %d/%d rows (%.0f%%), %s",
                 self.rows, self.total, 100 * self.rows / max(self.total, 1), self.status(now))
        stages = ray.get(self.metrics.snapshot.remote())
        log.info("stages: %s", ", ".join(
            f"{name} {v['rows']:.0f} rows {v['rows'] / v['seconds']:.1f}/s busy" if v.get("seconds") else f"{name} {v['rows']:.0f} rows"
            for name, v in stages.items()
        ))
