"""4. Scale: wall time and peak memory at 1x, 10x, 100x (and, in the full run, 1000x) rows,
simulated engine.

Each size runs in a process of its own, as a job's driver does: run in the bench process, a point's
driver would also hold what the sections and sizes before it left (in a quick run about 700 MiB
from the engine section alone).

Input: the demo's mixed rows (text, image, audio, video, image+audio, a few broken ones), tiled
with fresh ids, in shards of 64 rows. The engine answers at once (no simulated latency), so the
run is as CPU-bound as the plan allows. Each size runs on a fresh embedded Ray while a sampler
thread records the peak RSS of the driver and of every Ray process (raylet, GCS, workers).
Streaming means time grows linearly (a constant start-up plus a per-row cost) and memory stays
flat; a driver-side collection or a full materialisation would show as memory growing with rows.

The headline, `memory_growth`, is read inside the largest run: the peak of its second half over
the peak of its first half. A small run never reaches the pipeline's working set (fewer worker
processes started, blocks smaller than a read unit), so comparing it with a large one measures
start-up, not growth; within one run that streams well past its working set a plateau reads about
1 and growth with rows seen reads above. Peaks across sizes are kept beside it, and the full run's
1000x point gives `memory_growth_1000x` (peak at 1000x / at 100x): a run ten times longer that
holds no more memory is what a 10M-row night needs.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import (
    MemorySampler,
    bench_config,
    gpus_for,
    ray_session,
    run_module,
    tiled_demo_rows,
    write_shards,
)
from bench.engines import SimFactory
from stages.engines.simulated import LatencyModel


def run_size(rows: int, work: Path, overrides: list[str]) -> dict[str, Any]:
    from pipelines.curate import run_curation

    input_dir = write_shards(work / "input", tiled_demo_rows(rows))
    cfg = bench_config(input_dir, work / "output", overrides, demo=False, device="cuda")
    factory = SimFactory(LatencyModel(), concurrency=64)  # answers at once; not metered (no per-request cost)
    with MemorySampler() as memory:
        with ray_session(num_gpus=gpus_for(cfg)) as ray_init_s:
            started = time.time()
            result = run_curation(cfg, engine_factory=factory)
            wall = time.time() - started
    if result.report["status"] != "succeeded":
        raise RuntimeError(f"scale run at {rows} rows: {result.report['status']}")
    shutil.rmtree(work / "output", ignore_errors=True)
    return {"rows": rows, "wall_s": wall, "ray_init_s": ray_init_s, "rows_per_s": rows / wall,
            "counts": result.report["counts"], "memory_samples": memory.samples,
            "second_half_vs_first_half": memory.halves_peak_ratio(),
            "footprint_second_half_vs_first_half": memory.halves_peak_ratio("footprint"),
            "memory_timeline_mib": memory.timeline_mib(), **memory.peaks_mib()}


def run_size_in_fresh_process(rows: int, work: Path, overrides: list[str]) -> dict[str, Any]:
    """`run_size` in a new process (`python -m bench.scale --point`), its figures read back."""
    work.mkdir(parents=True, exist_ok=True)
    run_module("bench.scale", ["--point", str(rows), str(work), json.dumps(overrides)], work / "point.log")
    return json.loads((work / "point.json").read_text())


def _fit(points: list[dict[str, Any]]) -> tuple[float, float]:
    """Least-squares wall_s = fixed + per_row * rows."""
    n = len(points)
    xs, ys = [p["rows"] for p in points], [p["wall_s"] for p in points]
    mx, my = sum(xs) / n, sum(ys) / n
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my - slope * mx, slope


def run(args: Any, work: Path) -> dict[str, Any]:
    points = []
    for factor in args.scale_factors:
        point = run_size_in_fresh_process(args.scale_base * factor, work / f"x{factor}", list(args.overrides))
        point["factor"] = factor
        points.append(point)
        shutil.rmtree(work / f"x{factor}", ignore_errors=True)  # its input shards (1000x: gigabytes)
        print(f"  scale {factor}x ({point['rows']} rows): {point['wall_s']:.1f} s, "
              f"peak RSS {point['peak_total_rss_mib']:.0f} MiB (driver {point['peak_driver_rss_mib']:.0f}), "
              f"2nd half / 1st half {point['second_half_vs_first_half']:.3f}", flush=True)
    by_factor = {p["factor"]: p for p in points}
    one, ten, hundred, largest = by_factor[1], by_factor[10], by_factor[100], points[-1]
    fixed, per_row = _fit(points)
    section: dict[str, Any] = {
        # Within the largest run: does memory plateau while rows stream through, or keep growing?
        "memory_growth": largest["second_half_vs_first_half"],
        "memory_growth_measured_in": f"{largest['factor']}x ({largest['rows']} rows)",
        "memory_growth_within_100x": hundred["second_half_vs_first_half"],
        # The same, on what the machine gives the run (memory outside shared memory + the object store once).
        "footprint_growth": largest["footprint_second_half_vs_first_half"],
        # Across sizes (the 1x run does not reach the working set: see the module docstring).
        "memory_growth_100x_vs_1x": hundred["peak_total_rss_mib"] / one["peak_total_rss_mib"],
        "memory_growth_pss_100x_vs_1x": hundred["peak_total_pss_mib"] / one["peak_total_pss_mib"],
        "memory_growth_10x_to_100x": hundred["peak_total_rss_mib"] / ten["peak_total_rss_mib"],
        "driver_memory_growth": largest["peak_driver_rss_mib"] / one["peak_driver_rss_mib"],
        "time_growth_1x_to_100x": hundred["wall_s"] / one["wall_s"],
        # Marginal seconds per row, between 1x and 10x and between 10x and 100x: equal when linear.
        "marginal_ms_per_row_1x_10x": 1000 * (ten["wall_s"] - one["wall_s"]) / (ten["rows"] - one["rows"]),
        "marginal_ms_per_row_10x_100x": 1000 * (hundred["wall_s"] - ten["wall_s"]) / (hundred["rows"] - ten["rows"]),
        "fit_fixed_s": fixed,
        "fit_ms_per_row": 1000 * per_row,
        "points": points,
    }
    if 1000 in by_factor:
        thousand = by_factor[1000]
        section["memory_growth_1000x"] = thousand["peak_total_rss_mib"] / hundred["peak_total_rss_mib"]
        section["footprint_growth_1000x"] = thousand["peak_footprint_mib"] / hundred["peak_footprint_mib"]
        section["marginal_ms_per_row_100x_1000x"] = (1000 * (thousand["wall_s"] - hundred["wall_s"])
                                                     / (thousand["rows"] - hundred["rows"]))
    return section


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--point":
        point_work = Path(sys.argv[3])
        figures = run_size(int(sys.argv[2]), point_work, json.loads(sys.argv[4]))
        (point_work / "point.json").write_text(json.dumps(figures))
    else:
        sys.exit("usage: python -m bench.scale --point ROWS WORKDIR OVERRIDES_JSON  (started by python -m bench)")
