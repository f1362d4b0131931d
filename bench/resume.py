"""5. Resume at scale: resuming a run with 2M committed ids, beside a fresh run of the same rows left.

Input: text-only rows, in shards of `resume_shard_rows` ids; then the run directory an interrupted
run would leave: its `_run.json` and batch manifests committing every shard whole but the last, and
half of that one (`resume_committed` ids in all; generated manifests, no data files: what a resume
reads of a manifest is its ids and tallies). The resume judges the rest (a simulated engine that
answers at once) and must leave out every committed id. Baseline, side by side: a fresh run over one
shard holding just those remaining rows. Each on a fresh embedded Ray, interleaved (fresh, resume,
...; `--repeats`, medians), while a thread samples the peak RSS of the driver and of every Ray
process. Reported: wall seconds, the seconds until the first new batch is committed (start-up),
peak RSS, and resume / fresh ratios.
"""
from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bench.common import MemorySampler, bench_config, gpus_for, median, ray_session
from bench.engines import SimFactory
from stages.engines.simulated import LatencyModel

MANIFEST_IDS = 1000  # ids per generated manifest: output.rows_per_file's default


def shard_table(prefix: str, start: int, rows: int) -> pa.Table:
    """`rows` text-only candidates with ids PREFIX-<n>, n from `start`."""
    numbers = pa.array(np.arange(start, start + rows), pa.int64()).cast(pa.string())
    ids = pc.binary_join_element_wise(pa.scalar(f"{prefix}-"), numbers, "")
    return pa.table({"id": ids, "question": pc.binary_join_element_wise("What is ", numbers, "?", ""),
                     "response_a": pc.binary_join_element_wise(numbers, " is a number", ""),
                     "response_b": pa.array(["I do not know"] * rows)})


def write_input(directory: Path, shards: int, shard_rows: int, last_rows: int) -> list[pa.Array]:
    """`shards` full shards and one of `last_rows`; returns each shard's ids."""
    directory.mkdir(parents=True)
    ids = []
    for index in range(shards + 1):
        table = shard_table(f"s{index:04d}", 0, shard_rows if index < shards else last_rows)
        pq.write_table(table, directory / f"part-{index:05d}.parquet")
        ids.append(table.column("id").combine_chunks())
    return ids


def interrupt(cfg: Any, committed: pa.Array) -> int:
    """The run directory a run killed after committing `committed` leaves; returns its manifests."""
    from pipelines.run_dir import open_run_directory
    from pipelines.shards import discover
    from stages.storage.commit import commit_batch

    shards = discover(cfg.input.paths, cfg.judging_format(), cfg.input)
    run_dir = open_run_directory(cfg, shards.paths)
    batches = 0
    for start in range(0, len(committed), MANIFEST_IDS):
        chunk = committed.slice(start, MANIFEST_IDS).to_pylist()
        stats = {"rows": len(chunk), "outcomes": {"kept": len(chunk)}, "drop_reasons": {}, "error_stages": {},
                 "error_reasons": {}}
        commit_batch(run_dir.filesystem, run_dir.root, f"generated-{batches:06d}", [], chunk, stats)
        batches += 1
    return batches


class FirstCommit:
    """Seconds from `start()` until a manifest beyond the `already` generated ones exists."""

    def __init__(self, manifests: Path, already: int) -> None:
        self.manifests, self.already, self.seconds = manifests, already, None
        self._started, self._stop = 0.0, threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(0.25):
            if sum(1 for _ in self.manifests.glob("*.json")) > self.already:
                self.seconds = round(time.time() - self._started, 2)
                return

    def start(self) -> None:
        self._started = time.time()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        if self.seconds is None and sum(1 for _ in self.manifests.glob("*.json")) > self.already:
            self.seconds = round(time.time() - self._started, 2)  # committed after the last poll


def measured_run(input_dir: Path, output: Path, overrides: list[str], generated: int = 0) -> dict[str, Any]:
    from pipelines.curate import run_curation

    cfg = bench_config(input_dir, output, [*overrides, "output.overwrite=false"], demo=False, device="cuda")
    factory = SimFactory(LatencyModel(), concurrency=64)  # answers at once
    first = FirstCommit(output / "_manifests", generated)
    with MemorySampler() as memory:
        with ray_session(num_gpus=gpus_for(cfg)) as ray_init_s:
            started = time.time()
            first.start()
            try:
                result = run_curation(cfg, engine_factory=factory)
            finally:
                first.stop()
            wall = time.time() - started
    if result.report["status"] != "succeeded":
        raise RuntimeError(f"resume benchmark run into {output}: {result.report['status']}")
    return {"wall_s": round(wall, 2), "ray_init_s": round(ray_init_s, 2), "first_commit_s": first.seconds,
            "counts": result.report["counts"], "resumed": result.report.get("resumed"), **memory.peaks_mib()}


def run(args: Any, work: Path) -> dict[str, Any]:
    shard_rows, remaining = args.resume_shard_rows, args.resume_remaining
    full_shards = args.resume_committed // shard_rows
    shard_ids = write_input(work / "input", full_shards, shard_rows, 2 * remaining)
    committed = pa.concat_arrays([*shard_ids[:-1], shard_ids[-1].slice(0, remaining)])
    left = len(shard_ids[-1]) - remaining
    fresh_input = work / "fresh-input"
    fresh_input.mkdir()
    pq.write_table(shard_table(f"s{full_shards:04d}", remaining, remaining), fresh_input / "part-00000.parquet")
    overrides = list(args.overrides)
    runs: dict[str, list[dict[str, Any]]] = {"fresh": [], "resume": []}
    for repeat in range(args.repeats):  # interleaved: fresh, resume, fresh, resume, ...
        runs["fresh"].append(measured_run(fresh_input, work / f"fresh-{repeat}", overrides))
        output = work / f"resumed-{repeat}"
        cfg = bench_config(work / "input", output, [*overrides, "output.overwrite=false"], demo=False, device="cuda")
        generated = interrupt(cfg, committed)
        resumed = measured_run(work / "input", output, overrides, generated)
        if sum(resumed["counts"].values()) != len(committed) + left:
            raise RuntimeError(f"resume accounted for {resumed['counts']}, expected {len(committed) + left} rows")
        runs["resume"].append(resumed)
        for name in ("fresh", "resume"):
            point = runs[name][-1]
            print(f"  {name} ({len(committed) if name == 'resume' else 0} committed ids, {left} rows left): "
                  f"{point['wall_s']:.1f} s, first new commit at {point['first_commit_s']} s, peak RSS "
                  f"{point['peak_total_rss_mib']:.0f} MiB (driver {point['peak_driver_rss_mib']:.0f})", flush=True)
        shutil.rmtree(work / f"fresh-{repeat}", ignore_errors=True)
        shutil.rmtree(output, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    summary = {name: {key: median([p[key] for p in points]) for key in
                      ("wall_s", "first_commit_s", "peak_total_rss_mib", "peak_driver_rss_mib")}
               for name, points in runs.items()}
    resumed, fresh = summary["resume"], summary["fresh"]
    return {
        "resume_2m_ids_seconds": resumed["wall_s"],
        "resume_2m_ids_peak_mib": resumed["peak_total_rss_mib"],
        "seconds_vs_fresh": resumed["wall_s"] / fresh["wall_s"],
        "peak_mib_vs_fresh": resumed["peak_total_rss_mib"] / fresh["peak_total_rss_mib"],
        "committed_ids": len(committed),
        "committed_manifests": -(-len(committed) // MANIFEST_IDS),
        "shards": full_shards + 1,
        "remaining_rows": left,
        "resume": resumed,
        "fresh": fresh,
        "runs": runs,
    }
