"""2. Feeding the engine: does the judge keep a (simulated) GPU replica's slots full, whatever
the verdict lengths, while the CPU stages decode real images, audio and video?

The judge runs a `SimulatedEngine` (fixed slots, per-request latency from `LatencyModel`:
lognormal verdict lengths, no CPU use) behind `MeteredEngine`, for verdict-length spreads sigma
1.0 and 1.5 and pools of 1 and 4 replicas, with the default config. Figures per replica, summed
over the pool weighted by each replica's time:
- vs_perfectly_fed: the window a replica handed every one of its requests at once would need
  (replayed: the same requests, each taking the time it took in the run, in the order it was
  submitted, the first free slot taking the next) / its measured window (first request in ..
  last verdict out): the share of a GPU's throughput the pipeline delivers. Both windows end with
  the same drain (the last verdicts' tails, which no feeding shortens).
- slot_occupancy: mean fraction of the engine's slots holding a request while the replica still
  had requests to give (first request in .. last request in); after that only tails remain. The
  whole window's occupancy, and the perfectly fed replica's over its own window, are beside it.
- busy fraction: time with at least one request in service / window.

The simulated pool's speed (`--sim-rows-per-s`, rows/s for the whole pool, 2 requests a row) is
time-compressed so a run takes seconds. The rows are real media of the demo's sizes (1/4 each
image, audio, video, image+audio), decoded by the real stages; they are small so that decoding
stays well ahead of the pool on a shared 2-core machine and the figures measure the judge's
feeding, not the CPUs (each run reports the decode stage's rows/s, and `decode_bound` when it did
not stay ahead). What typical media cost is the decode benchmark's: on a GPU node decode CPUs per
replica = replica rows/s x CPU seconds a row's media take to decode (its plain loop) / the Ray
stage's per-core efficiency / target utilisation (`sizing`).
"""
from __future__ import annotations

import heapq
import math
import shutil
import time
from pathlib import Path
from statistics import NormalDist
from typing import Any

from bench.common import (
    KINDS,
    bench_config,
    bench_settings,
    config_sets,
    media_rows,
    median,
    parse_variants,
    ray_session,
    write_shards,
)
from bench.engines import MeteredFactory, SimFactory, read_stats
from jobs.runtime import embedded_ray_cpus
from stages.engines.simulated import LatencyModel
from stages.judge import JudgeStage

MEDIAN_TOKENS, MAX_TOKENS = 300, 4096  # verdict lengths: lognormal around 300 tokens, tens to thousands
SIGMAS = (1.0, 1.5)  # spread of the verdict lengths (1.5: a reasoning judge's heavier tail)
POOLS = (1, 4)  # replicas
FEEDING_MEDIA = "small"  # the demo's sizes: decode stays ahead of the simulated pool (see above)
MIXES = {  # media mix -> share of rows of each kind (see bench.common.KINDS)
    "image-only": {"image": 1.0},
    "audio-only": {"audio": 1.0},
    "video-only": {"video": 1.0},
    "mixed (1/4 each: image, audio, video, image+audio)": {kind: 0.25 for kind in KINDS},
}


def mean_tokens(median_tokens: int = MEDIAN_TOKENS, sigma: float = 1.0, max_tokens: int = MAX_TOKENS) -> float:
    """Mean of min(max_tokens, median * lognormal(0, sigma)), by the midpoint rule over quantiles."""
    normal, steps = NormalDist(), 4000
    return sum(min(max_tokens, median_tokens * math.exp(sigma * normal.inv_cdf((i + 0.5) / steps)))
               for i in range(steps)) / steps


def latency_for(rows_per_s: float, concurrency: int, sigma: float = 1.0, requests_per_row: int = 2) -> LatencyModel:
    """A LatencyModel whose replica, kept full, serves `rows_per_s` rows a second."""
    seconds_per_request = concurrency / (rows_per_s * requests_per_row)
    return LatencyModel(seconds_per_token=seconds_per_request / mean_tokens(sigma=sigma), median_tokens=MEDIAN_TOKENS,
                        sigma=sigma, max_tokens=MAX_TOKENS)


def ideal_replica(seconds: list[float], concurrency: int) -> dict[str, float]:
    """A replica handed all its requests at once, each taking the `seconds` it took in the measured
    run, in the order they were submitted there (the first free slot takes the next): its window
    (makespan) and its slot occupancy over that window, what a perfectly fed engine does with the
    very same work. (Drawing fresh verdict lengths instead would compare the run's tail with
    another sample's: over a 480-row run that alone swung the ratio by +-15%.)"""
    slots = [0.0] * concurrency
    for duration in seconds:
        heapq.heapreplace(slots, slots[0] + duration)
    window = max(slots)
    return {"window_s": window, "slot_occupancy": sum(seconds) / (concurrency * window) if window else 0.0}


def served_seconds(part: dict[str, Any], latency: LatencyModel) -> list[float]:
    """What each request a replica completed took in the simulated engine, in submission order."""
    return [latency.seconds_for(tokens) for tokens in part["request_output_tokens"] if tokens is not None]


def decode_rows_per_s(report: dict[str, Any]) -> float:
    """The decode stage's rows/s over the span it was producing (report.json's throughput series)."""
    series = report["timings"]["throughput"]["rows_per_second"]["decode"]
    bucket = report["timings"]["throughput"]["bucket_seconds"]
    active = [i for i, rate in enumerate(series) if rate > 0]
    if not active:
        return float("nan")
    return sum(series) * bucket / ((active[-1] - active[0] + 1) * bucket)


def run_once(rows_dir: Path, work: Path, overrides: list[str], latency: LatencyModel, concurrency: int,
             replicas: int, pool_rows_per_s: float) -> dict[str, Any]:
    from pipelines.curate import run_curation

    stats_dir = work / "engine-stats"
    shutil.rmtree(stats_dir, ignore_errors=True)
    stats_dir.mkdir(parents=True)
    # The engine's slot count, as a vLLM replica's max_num_seqs, for settings derived from it.
    sets = [f"judge.engine.max_num_seqs={concurrency}", f"judge.replicas={replicas}", *config_sets(overrides)]
    cfg = bench_config(rows_dir, work / "output", sets, demo=False, device="cuda")
    factory = MeteredFactory(SimFactory(latency, concurrency), str(stats_dir))
    with bench_settings(overrides):
        started = time.time()
        result = run_curation(cfg, engine_factory=factory)
        wall = time.time() - started
    stats = read_stats(stats_dir)
    parts = [p for p in stats["per_replica"] if p["completed"]]  # a tiny run may leave a replica idle
    ideals = [ideal_replica(served_seconds(p, latency), concurrency) for p in parts]
    windows = [p["last_done"] - p["first_submit"] for p in parts]
    feeding = [p["last_submit"] - p["first_submit"] for p in parts]
    slot_time = concurrency * sum(windows)
    decode_rate = decode_rows_per_s(result.report)
    return {
        # Throughput against replicas handed every request at once: the GPU time feeding costs.
        "vs_perfectly_fed": sum(i["window_s"] for i in ideals) / sum(windows),
        "slot_occupancy": sum(p["slot_seconds_to_last_submit"] for p in parts) / (concurrency * sum(feeding)),
        "slot_occupancy_whole_window": stats["slot_seconds"] / slot_time,
        "ideal_slot_occupancy_whole_window": sum(i["slot_occupancy"] * i["window_s"] for i in ideals)
        / sum(i["window_s"] for i in ideals),
        # The pool as one: every replica from the first request anywhere to the last verdict
        # anywhere, against replicas handed their shares at once, all at the same moment
        # (start-up staggering included).
        "pool_vs_perfectly_fed": max(i["window_s"] for i in ideals) / stats["window_s"],
        "busy_fraction": stats["busy_seconds"] / sum(windows),
        "mean_requests_in_engine": stats["inflight_seconds"] / sum(windows),
        "max_requests_in_engine": stats["max_in_flight"],
        "window_s": stats["window_s"],
        "replica_windows_s": windows,
        "replica_requests": [p["completed"] for p in parts],
        "rows": result.report["input_rows"],
        "rows_per_s_in_window": result.report["input_rows"] / stats["window_s"],
        "requests": stats["completed"],
        "errors": result.report["counts"]["errors"],
        "decode_rows_per_s": decode_rate,
        "decode_bound": decode_rate < 1.1 * pool_rows_per_s,
        "wall_s": wall,
        "settings": {"batch_size": cfg.judge.batch_size, "replicas": cfg.judge.replicas,
                     "batches_in_flight": JudgeStage(cfg.judging_format(), cfg.judge).batches_in_flight,
                     "decode_batch_size": cfg.decode_batch_size},
    }


def sizing(costs: dict[str, float], ray_per_core_ratio: float, gpu_rows_per_s: float,
           utilisation: float = 0.7) -> dict[str, Any]:
    """Decode CPUs per GPU replica for each media mix, from per-row decode CPU seconds by kind."""
    table = []
    for mix, shares in MIXES.items():
        seconds = sum(share * sum(costs[m] for m in kind.split("+")) for kind, share in shares.items())
        per_core = ray_per_core_ratio / seconds  # rows/s one decode core sustains inside Ray
        table.append({
            "mix": mix,
            "decode_ms_per_row": round(seconds * 1000, 2),
            "rows_per_s_per_decode_core": round(per_core, 1),
            "decode_cpus_per_replica": round(gpu_rows_per_s / per_core / utilisation, 2),
        })
    return {"gpu_rows_per_s_per_replica": gpu_rows_per_s, "target_cpu_utilisation": utilisation,
            "ray_per_core_ratio": ray_per_core_ratio, "table": table}


def run(args: Any, work: Path) -> dict[str, Any]:
    rows_dir = write_shards(work / "input", media_rows(args.feeding_rows, KINDS, FEEDING_MEDIA))
    concurrency = args.sim_concurrency
    cases = {f"sigma {sigma}, {pool} replica{'s' if pool > 1 else ''}": (sigma, pool) for sigma in SIGMAS for pool in POOLS}
    first = next(iter(cases))
    extra = {"batches_in_flight=1": ["judge.batches_in_flight=1"]} if args.feeding_variants else {}
    extra.update(parse_variants(args.variants))
    # (name, case, overrides): every case with the default config; variants on the first case.
    plan = [(name, case, list(args.overrides)) for name, case in cases.items()]
    plan += [(f"{first} [{name}]", cases[first], [*args.overrides, *sets]) for name, sets in extra.items()]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in plan}
    for pool in POOLS:  # one Ray per pool size; interleaved repeats within it
        # Each replica's actor reserves judge.cpus_per_replica: the extra replicas get logical CPUs
        # of their own so that decode keeps what it has with one (the simulated engine uses none).
        per_replica = bench_config(rows_dir, work, config_sets(args.overrides), demo=False).judge.cpus_per_replica
        cpus = embedded_ray_cpus() + (pool - 1) * math.ceil(per_replica)
        with ray_session(num_cpus=cpus, num_gpus=pool):
            for repeat in range(args.feeding_repeats):
                for name, (sigma, replicas), overrides in plan:
                    if replicas != pool:
                        continue
                    latency = latency_for(args.sim_rows_per_s / replicas, concurrency, sigma)
                    label = "".join(c if c.isalnum() else "-" for c in name)
                    runs[name].append(run_once(rows_dir, work / f"{label}-{repeat}", overrides, latency, concurrency,
                                               replicas, args.sim_rows_per_s))
    results: dict[str, Any] = {}
    keys = ("vs_perfectly_fed", "slot_occupancy", "slot_occupancy_whole_window", "ideal_slot_occupancy_whole_window",
            "pool_vs_perfectly_fed", "busy_fraction", "rows_per_s_in_window", "decode_rows_per_s")
    for name, (sigma, replicas), _ in plan:
        results[name] = {key: median([r[key] for r in runs[name]]) for key in keys}
        results[name] |= {"sigma": sigma, "replicas": replicas,
                          "decode_bound": any(r["decode_bound"] for r in runs[name]), "runs": runs[name]}
        v = results[name]
        print(f"  feeding [{name}]: vs perfectly fed {v['vs_perfectly_fed']:.3f}, slot occupancy "
              f"{v['slot_occupancy']:.3f} (whole window {v['slot_occupancy_whole_window']:.3f}, perfectly fed "
              f"{v['ideal_slot_occupancy_whole_window']:.3f}), decode {v['decode_rows_per_s']:.1f} rows/s"
              f"{' DECODE-BOUND' if v['decode_bound'] else ''}", flush=True)
    default = [results[name] for name in cases]
    worst = min(default, key=lambda v: v["vs_perfectly_fed"])
    section: dict[str, Any] = {
        # Headlines: the worst of the four cases (sigma 1.0 / 1.5 x 1 / 4 replicas), default config.
        "vs_perfectly_fed": min(v["vs_perfectly_fed"] for v in default),
        "slot_occupancy": min(v["slot_occupancy"] for v in default),
        "engine_busy_fraction": min(v["busy_fraction"] for v in default),
        "worst_case": next(name for name in cases if results[name] is worst),
        "decode_bound": any(v["decode_bound"] for v in default),
        "simulated_replica": {"pool_rows_per_s": args.sim_rows_per_s, "concurrency": concurrency,
                              "median_tokens": MEDIAN_TOKENS, "sigmas": list(SIGMAS), "max_tokens": MAX_TOKENS},
        "rows": args.feeding_rows,
        "media": f"{FEEDING_MEDIA} (bench.common.PROFILES), 1/4 each of image, audio, video, image+audio rows",
        "cases": results,
    }
    if f"{first} [batches_in_flight=1]" in results:  # one batch at a time: a synchronous vLLM batch
        sync = results[f"{first} [batches_in_flight=1]"]
        section["vs_one_batch_at_a_time"] = results[first]["rows_per_s_in_window"] / sync["rows_per_s_in_window"]
    return section
