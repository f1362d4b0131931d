"""2. Feeding the engine: does the pipeline keep a (simulated) GPU replica busy while the CPU
stages decode real images, audio and video?

The judge runs a `SimulatedEngine` (fixed slots, long-tailed per-request latency from
`LatencyModel`, no CPU use) behind `MeteredEngine`. Figures, over the engine's active window
(first request in .. last verdict out):
- busy fraction: time with at least one request in service (SimulatedEngine.busy_seconds) / window;
- slot occupancy: mean fraction of the engine's slots holding a request (what a GPU's throughput
  follows; a synchronous batch idles slots while its longest verdict finishes).

The simulated replica's speed is set in rows/s (2 requests a row), time-compressed so a run takes
seconds; what matters is that ratio to the decode stages' speed, which `sizing` makes explicit for
real GPU speeds: decode CPUs per replica = replica rows/s x CPU seconds a row's media take to
decode (measured by the decode benchmark's plain loop) / the Ray stage's per-core efficiency /
target utilisation.
"""
from __future__ import annotations

import heapq
import math
import random
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
    gpus_for,
    media_rows,
    median,
    parse_variants,
    ray_session,
    write_shards,
)
from bench.engines import MeteredFactory, SimFactory, read_stats
from stages.engines.simulated import LatencyModel

MEDIAN_TOKENS, SIGMA, MAX_TOKENS = 300, 1.0, 4096  # verdict lengths: lognormal, tens to thousands
MIXES = {  # media mix -> share of rows of each kind (see bench.common.KINDS)
    "image-only": {"image": 1.0},
    "audio-only": {"audio": 1.0},
    "video-only": {"video": 1.0},
    "mixed (1/4 each: image, audio, video, image+audio)": {kind: 0.25 for kind in KINDS},
}


def mean_tokens(median_tokens: int = MEDIAN_TOKENS, sigma: float = SIGMA, max_tokens: int = MAX_TOKENS) -> float:
    """Mean of min(max_tokens, median * lognormal(0, sigma)), by the midpoint rule over quantiles."""
    normal, steps = NormalDist(), 4000
    return sum(min(max_tokens, median_tokens * math.exp(sigma * normal.inv_cdf((i + 0.5) / steps)))
               for i in range(steps)) / steps


def latency_for(rows_per_s: float, concurrency: int, requests_per_row: int = 2) -> LatencyModel:
    """A LatencyModel whose replica, kept full, serves `rows_per_s` rows a second."""
    seconds_per_request = concurrency / (rows_per_s * requests_per_row)
    return LatencyModel(seconds_per_token=seconds_per_request / mean_tokens(), median_tokens=MEDIAN_TOKENS,
                        sigma=SIGMA, max_tokens=MAX_TOKENS)


def ideal_window(requests: int, latency: LatencyModel, concurrency: int, trials: int = 5) -> float:
    """Expected makespan of `requests` such requests on a replica handed all of them at once
    (first free slot takes the next request): what a perfectly fed engine would need."""
    spans = []
    for trial in range(trials):
        rng = random.Random(trial)
        slots = [0.0] * concurrency
        for _ in range(requests):
            heapq.heapreplace(slots, slots[0] + latency.sample(rng)[0])
        spans.append(max(slots))
    return median(spans)


def run_once(rows_dir: Path, work: Path, overrides: list[str], latency: LatencyModel, concurrency: int) -> dict[str, Any]:
    from pipelines.curate import run_curation

    stats_dir = work / "engine-stats"
    shutil.rmtree(stats_dir, ignore_errors=True)
    stats_dir.mkdir(parents=True)
    # The engine's slot count, as a vLLM replica's max_num_seqs, for settings derived from it.
    sets = [f"judge.engine.max_num_seqs={concurrency}", *config_sets(overrides)]
    cfg = bench_config(rows_dir, work / "output", sets, demo=False, device="cuda")
    factory = MeteredFactory(SimFactory(latency, concurrency), str(stats_dir), slots=concurrency)
    with bench_settings(overrides):
        started = time.time()
        result = run_curation(cfg, engine_factory=factory)
        wall = time.time() - started
    stats = read_stats(stats_dir)
    replica_windows = sum(p["last_done"] - p["first_submit"] for p in stats["per_replica"])
    ideal = ideal_window(stats["completed"] // stats["replicas"], latency, concurrency)
    return {
        # Throughput against a replica handed every request at once: the GPU time feeding costs.
        "vs_perfectly_fed": ideal / stats["window_s"],
        "ideal_window_s": ideal,
        "busy_fraction": stats["busy_seconds"] / replica_windows,
        "slot_occupancy": stats["slot_seconds"] / (concurrency * replica_windows),
        "mean_requests_held": stats["inflight_seconds"] / replica_windows,
        "max_requests_held": stats["max_in_flight"],
        "window_s": stats["window_s"],
        "busy_s": stats["busy_seconds"],
        "rows": result.report["input_rows"],
        "rows_per_s_in_window": result.report["input_rows"] / stats["window_s"],
        "requests": stats["completed"],
        "errors": result.report["counts"]["errors"],
        "wall_s": wall,
        "settings": {k: getattr(cfg.judge, k) for k in ("batch_size", "batches_in_flight", "replicas")}
        | {"decode_batch_size": cfg.decode_batch_size},
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
    rows_dir = write_shards(work / "input", media_rows(args.feeding_rows, KINDS, "typical"))
    latency = latency_for(args.sim_rows_per_s, args.sim_concurrency)
    extra = {"batches_in_flight=1": ["judge.batches_in_flight=1"]} if args.feeding_variants else {}
    extra.update(parse_variants(args.variants))
    variants = {"default": list(args.overrides)} | {name: [*args.overrides, *sets] for name, sets in extra.items()}
    results: dict[str, Any] = {}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    gpus = max(gpus_for(bench_config(rows_dir, work, config_sets(o), demo=False)) for o in variants.values())
    with ray_session(num_gpus=gpus):
        for repeat in range(args.feeding_repeats):  # interleaved
            for name, overrides in variants.items():
                runs[name].append(run_once(rows_dir, work / f"{name.replace('=', '-')}-{repeat}", overrides, latency,
                                           args.sim_concurrency))
        for name in variants:
            results[name] = {
                "busy_fraction": median([r["busy_fraction"] for r in runs[name]]),
                "slot_occupancy": median([r["slot_occupancy"] for r in runs[name]]),
                "vs_perfectly_fed": median([r["vs_perfectly_fed"] for r in runs[name]]),
                "rows_per_s_in_window": median([r["rows_per_s_in_window"] for r in runs[name]]),
                "runs": runs[name],
            }
            print(f"  feeding [{name}]: busy {results[name]['busy_fraction']:.3f}, slot occupancy "
                  f"{results[name]['slot_occupancy']:.3f}, vs perfectly fed {results[name]['vs_perfectly_fed']:.3f}",
                  flush=True)
    return {
        "engine_busy_fraction": results["default"]["busy_fraction"],
        "slot_occupancy": results["default"]["slot_occupancy"],
        "vs_perfectly_fed": results["default"]["vs_perfectly_fed"],
        "simulated_replica": {"rows_per_s": args.sim_rows_per_s, "concurrency": args.sim_concurrency,
                              "seconds_per_token": latency.seconds_per_token, "median_tokens": MEDIAN_TOKENS,
                              "sigma": SIGMA, "max_tokens": MAX_TOKENS},
        "rows": args.feeding_rows,
        "media": "typical (1024x768 JPEG, 10 s 44.1 kHz stereo FLAC, 8 s 480x360 24 fps MP4), 1/4 each of "
                 "image, audio, video, image+audio rows",
        "variants": results,
    }
