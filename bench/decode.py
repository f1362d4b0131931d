"""3. Decode stages: the DecodeStage inside Ray vs. a plain single-process loop over the same files.

For each media kind, one dataset of rows holding only that kind (typical sizes, embedded bytes):
- loop: read the shards with pyarrow, then `load_media_bytes` + `decode_*` row after row, in this
  process, single-threaded (its CPU time is reported beside its wall time);
- Ray: the pipeline's own `read_rows` -> `apply_stage(DecodeStage)` on the bench's embedded Ray,
  with warm workers. Throughput is taken over the stage's active window (first batch started ..
  last batch finished, stamped by a bench-only subclass) and divided by the machine's cores, so
  it is per core; the end-to-end time (Ray Data start-up included) is reported beside it.
Units: images/s, seconds of (16 kHz) audio/s, sampled video frames/s.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from bench.common import bench_config, media_rows, median, ray_session, write_shards
from jobs.runtime import embedded_ray_cpus
from pipelines.config import RunConfig
from stages.decode import DecodeStage
from stages.media import preload
from stages.media.audio import decode_audio
from stages.media.fetch import load_media_bytes
from stages.media.image import decode_image
from stages.media.video import decode_video
from stages.rows import MODALITIES

UNITS = {"image": "images/s", "audio": "audio s/s", "video": "frames/s"}


class StampedDecode(DecodeStage):
    """DecodeStage that also stamps each output batch with when it started and finished."""

    def process(self, table: pa.Table) -> pa.Table:
        started, cpu = time.time(), time.process_time()
        out = super().process(table)
        finished, cpu = time.time(), time.process_time() - cpu
        stamps = {"_started": started, "_finished": finished, "_cpu": cpu}
        for name, value in stamps.items():
            out = out.append_column(name, pa.array([value] * out.num_rows, pa.float64()))
        return out


def cpu_seconds_by_role() -> dict[str, float]:
    """CPU seconds so far of this process (the driver) and of its descendants (raylet, GCS, workers)."""
    import psutil

    me = psutil.Process()
    totals = {"driver": sum(me.cpu_times()[:2]), "ray_processes": 0.0}
    for child in me.children(recursive=True):
        try:
            totals["ray_processes"] += sum(child.cpu_times()[:2])
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return totals


def units_of(kind: str, decoded: Any, cfg: RunConfig) -> float:
    if kind == "image":
        return 1.0
    if kind == "audio":
        return len(decoded) / cfg.media.audio_sample_rate
    return float(decoded[0].shape[0])  # video: (frames, fps)


def plain_loop(cfg: RunConfig, directory: Path, kind: str) -> dict[str, Any]:
    decoder = {"image": decode_image, "audio": decode_audio, "video": decode_video}[kind]
    wall, cpu = time.perf_counter(), time.process_time()
    values = pq.read_table(directory, columns=[kind]).column(kind).to_pylist()
    units = 0.0
    for value in values:
        data = load_media_bytes(value, media_roots=cfg.input.media_roots,
                                allowed_schemes=cfg.input.allowed_schemes, max_bytes=cfg.media.max_media_bytes)
        units += units_of(kind, decoder(data, cfg.media), cfg)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"rows": len(values), "units": units, "wall_s": wall, "cpu_s": cpu, "per_core": units / wall}


def in_ray(cfg: RunConfig, directory: Path, units_per_row: float, cores: int) -> dict[str, Any]:
    from pipelines.adapter import apply_stage, read_rows

    stage = StampedDecode(cfg.media, cfg.input, batch_size=cfg.decode_batch_size)
    cpu_before = cpu_seconds_by_role()
    started = time.time()
    dataset = apply_stage(read_rows([str(directory)], None, cfg.decode_batch_size), stage)
    rows, errors, spans = 0, 0, set()
    for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
        rows += batch.num_rows
        spans |= set(zip(*(batch.column(c).to_pylist() for c in ("_started", "_finished", "_cpu"))))
        errors += batch.num_rows - batch.column("error_stage").null_count
    first, last = min(s for s, _, _ in spans), max(e for _, e, _ in spans)
    wall = time.time() - started
    cpu_after = cpu_seconds_by_role()
    window = last - first
    units = rows * units_per_row
    return {"rows": rows, "errors": errors, "units": units, "wall_s": wall, "window_s": window,
            "per_core": units / window / cores, "per_core_end_to_end": units / wall / cores,
            # batches being decoded at once, on average over the window (at most `cores` get a core each)
            "mean_concurrency": sum(e - s for s, e, _ in spans) / window,
            # units per second a batch was in the stage's hands: its own cost, scheduling gaps excluded
            "per_busy_second": units / sum(e - s for s, e, _ in spans),
            # where the machine's CPU went, start-up to last batch: the stage's own process() calls,
            # every Ray process (workers: read, repartition, the stage, object store I/O; raylet; GCS),
            # and the driver (Ray Data's streaming executor, the iterator)
            "stage_cpu_s": sum(c for _, _, c in spans),
            "ray_processes_cpu_s": cpu_after["ray_processes"] - cpu_before["ray_processes"],
            "driver_cpu_s": cpu_after["driver"] - cpu_before["driver"]}


def run(args: Any, work: Path) -> dict[str, Any]:
    cores = len(os.sched_getaffinity(0))
    preload()
    results: dict[str, Any] = {}
    with ray_session():
        for kind in MODALITIES:
            directory = write_shards(work / kind, media_rows(args.decode_rows[kind], [kind]), rows_per_shard=32)
            cfg = bench_config(directory, work / "unused", args.overrides, demo=False)
            in_ray(cfg, directory, 1.0, cores)  # warm-up: worker processes start and import once
            loops, rays = [], []
            for _ in range(args.repeats):  # interleaved
                loops.append(plain_loop(cfg, directory, kind))
                units_per_row = loops[-1]["units"] / loops[-1]["rows"]
                rays.append(in_ray(cfg, directory, units_per_row, cores))
                if rays[-1]["errors"]:
                    raise RuntimeError(f"decode benchmark rows failed ({kind}): {rays[-1]['errors']}")
            loop_pc, ray_pc = median([r["per_core"] for r in loops]), median([r["per_core"] for r in rays])
            results[kind] = {
                "unit": UNITS[kind],
                "loop_per_core": loop_pc,
                "ray_per_core": ray_pc,
                "ratio": ray_pc / loop_pc,
                "ray_total": ray_pc * cores,
                "ray_per_core_end_to_end": median([r["per_core_end_to_end"] for r in rays]),
                "ray_mean_concurrency": median([r["mean_concurrency"] for r in rays]),
                "ray_per_busy_second": median([r["per_busy_second"] for r in rays]),
                "loop_cpu_per_wall": median([r["cpu_s"] / r["wall_s"] for r in loops]),
                # CPU seconds per loop CPU second: the stage's own work, and all of Ray's (driver included)
                "stage_cpu_vs_loop": median([r["stage_cpu_s"] / l["cpu_s"] for r, l in zip(rays, loops)]),
                "ray_cpu_vs_loop": median([(r["ray_processes_cpu_s"] + r["driver_cpu_s"]) / l["cpu_s"]
                                           for r, l in zip(rays, loops)]),
                "cpu_s_per_row": median([r["cpu_s"] / r["rows"] for r in loops]),
                "wall_s_per_row": median([r["wall_s"] / r["rows"] for r in loops]),
                "runs": {"loop": loops, "ray": rays},
            }
            print(f"  decode [{kind}]: loop {loop_pc:.1f} {UNITS[kind]}, Ray {ray_pc:.1f} per core "
                  f"({ray_pc / loop_pc:.2f}x); CPU vs loop: stage {results[kind]['stage_cpu_vs_loop']:.2f}x, "
                  f"all Ray {results[kind]['ray_cpu_vs_loop']:.2f}x", flush=True)
    worst = min(results, key=lambda k: results[k]["ratio"])
    return {"decode_ratio": results[worst]["ratio"], "worst_stage": worst, "cores": cores,
            "ray_logical_cpus": embedded_ray_cpus(), "decode_batch_size": cfg.decode_batch_size, "stages": results}
