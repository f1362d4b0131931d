"""`python -m bench [--quick]`: the pipeline's benchmarks, side by side in one run.

    1. engine     pipeline vs. one raw vllm.LLM.generate call and vs. Ray Data LLM (same model,
                  prompts, media, seeds, sampling); prefix-cache hit rate of both answer orders
    2. feeding    slot occupancy of a simulated long-tail engine, sigma 1.0 / 1.5 x 1 / 4 replicas;
                  decode CPUs per replica
    3. decode     DecodeStage inside Ray vs. a plain single-process loop, per core
    4. scale      wall time and peak memory at 1x, 10x, 100x (full: and 1000x) rows
    5. relabel    a finished run relabelled under new filter settings, rows/s (no engine, no Ray)
    6. resume     a resume with 2M committed ids vs. a fresh run of the rows it has left

Writes OUT/results.json (headline ratios beside the figures they come from) and OUT/results.md
(the table printed at the end). Benchmarks, not tests: nothing here fails on a slow number.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import load_average, parse_variants, wait_for_quiet

SECTIONS = ("decode", "feeding", "engine", "scale", "relabel", "resume")
# Sizes: --quick runs in a few minutes on a 2-core machine; --tiny only proves the harness works.
SIZES: dict[str, dict[str, Any]] = {
    "full": dict(engine_rows=1024, repeats=3, feeding_rows=1200, feeding_repeats=3, feeding_variants=True,
                 decode_rows={"image": 1200, "audio": 800, "video": 600}, scale_base=64,
                 scale_factors=(1, 10, 100, 1000), relabel_rows=100_000,
                 resume_committed=2_000_000, resume_shard_rows=20_000, resume_remaining=1000),
    "quick": dict(engine_rows=256, repeats=2, feeding_rows=480, feeding_repeats=1, feeding_variants=False,
                  decode_rows={"image": 320, "audio": 240, "video": 160}, scale_base=64, scale_factors=(1, 10, 100),
                  relabel_rows=100_000, resume_committed=2_000_000, resume_shard_rows=20_000, resume_remaining=1000),
    "tiny": dict(engine_rows=4, repeats=1, feeding_rows=16, feeding_repeats=1, feeding_variants=False,
                 decode_rows={"image": 8, "audio": 8, "video": 8}, scale_base=2, scale_factors=(1, 10, 100),
                 relabel_rows=2_000, resume_committed=2000, resume_shard_rows=500, resume_remaining=20),
}
# Headline -> (section, field of that section, threshold, higher is better). Dotted names stay in
# their section only; the others are also copied to the top of results.json.
HEADLINES: dict[str, tuple[str, str, float, bool]] = {
    "engine_efficiency": ("engine", "engine_efficiency", 0.90, True),
    "vs_ray_data_llm": ("engine", "vs_ray_data_llm", 1.3, True),
    "prefix_cache_hit_rate": ("engine", "prefix_cache_hit_rate", 0.40, True),
    "feeding.vs_perfectly_fed": ("feeding", "vs_perfectly_fed", 0.95, True),
    "feeding.slot_occupancy": ("feeding", "slot_occupancy", 0.90, True),
    "engine_busy_fraction": ("feeding", "engine_busy_fraction", 0.95, True),
    "decode_ratio": ("decode", "decode_ratio", 0.90, True),
    "memory_growth": ("scale", "memory_growth", 1.10, False),
    "memory_growth_1000x": ("scale", "memory_growth_1000x", 1.10, False),
    "relabel_rows_per_s": ("relabel", "relabel_rows_per_s", 1667, True),  # 100K rows in under a minute
    "resume_seconds_vs_fresh": ("resume", "seconds_vs_fresh", 1.5, False),
    "resume_peak_vs_fresh": ("resume", "peak_mib_vs_fresh", 1.25, False),
}
# Headlines reported as measured, beside the ratios that carry their targets.
FIGURES = {"resume_2m_ids_seconds": ("resume", "resume_2m_ids_seconds"),
           "resume_2m_ids_peak_mib": ("resume", "resume_2m_ids_peak_mib")}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", dest="size", const="quick", help="a few minutes")
    size.add_argument("--tiny", action="store_const", dest="size", const="tiny",
                      help="seconds of work per benchmark: checks the harness, measures nothing")
    parser.set_defaults(size="full")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {','.join(SECTIONS)} (default: all)")
    parser.add_argument("--out", default="out/bench", help="results directory (default out/bench)")
    parser.add_argument("--model", default="flexcurate/tiny-omni",
                        help="judge model for the engine benchmark (default: the tiny local model; "
                             "on a GPU: jongwooko/Flex-Omni-7B)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="engine device (default cpu)")
    parser.add_argument("--max-tokens", type=int, default=64, help="verdict token budget, both sides (default 64)")
    parser.add_argument("--media", dest="media_profile", choices=("small", "typical"), default=None,
                        help="engine benchmark media sizes (default: small on cpu, typical on cuda)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every pipeline run, as `flexcurate run --set` (repeatable)")
    parser.add_argument("--variant", dest="variants", action="append", default=[], metavar="NAME:K=V;K=V",
                        help="also run the engine and feeding pipelines with these extra overrides, interleaved "
                             "with the default (repeatable), e.g. 'bs64:judge.batch_size=64'")
    parser.add_argument("--repeats", type=int, help="interleaved repeats per comparison (median reported)")
    parser.add_argument("--sim-rows-per-s", type=float, default=20.0,
                        help="feeding: the simulated pool's speed when kept full, rows/s over all its replicas "
                             "(default 20: below what 2 busy cores decode of the feeding rows, so that the "
                             "judge's feeding is measured, not the CPUs)")
    parser.add_argument("--sim-concurrency", type=int, default=64, help="simulated replica slots (default 64)")
    parser.add_argument("--feeding-rows", type=int, help="rows per feeding run (default: by size, quick 480)")
    parser.add_argument("--gpu-rows-per-s", type=float, default=3.0,
                        help="assumed judge throughput of one GPU replica, rows/s, for the decode sizing "
                             "table (default 3: Flex-Omni-7B on one H100, ~500 output tokens a verdict, "
                             "2 verdicts a row, ~3000 output tokens/s)")
    parser.add_argument("--max-load", type=float, default=1.5, help="wait for the load average to drop to this")
    parser.add_argument("--wait-load-s", type=float, default=0.0,
                        help="wait at most this long for --max-load before starting (default: do not wait)")
    return parser


def headline_rows(results: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(benchmark, measured, baseline, ratio, target) rows for the summary table."""
    rows = []
    if "engine" in results:
        e = results["engine"]
        rows.append(("engine: rows/s (steady)", f"pipeline {e['pipeline_rows_per_s']:.2f}",
                     f"raw {e['raw_rows_per_s']:.2f}", f"{e['engine_efficiency']:.3f}", "engine_efficiency"))
        peer = e["ray_data_llm"]
        if "vs_ray_data_llm" in e:
            rows.append(("engine: rows/s (steady) vs Ray Data LLM", f"pipeline {e['pipeline_rows_per_s']:.2f}",
                         f"Ray Data LLM {peer['rows_per_s']:.2f} ({peer['rows_per_s'] / e['raw_rows_per_s']:.2f} "
                         f"of raw)", f"{e['vs_ray_data_llm']:.3f}", "vs_ray_data_llm"))
        else:
            rows.append(("engine: vs Ray Data LLM", "not measured", peer.get("error", "")[:120], "", ""))
        rows.append(("engine: requests/s", f"{e['pipeline_requests_per_s']:.2f}", f"{e['raw_requests_per_s']:.2f}",
                     f"{e['engine_efficiency_requests']:.3f}", ""))
        rows.append(("engine: output tokens/s", f"{e['pipeline_output_tokens_per_s']:.0f}",
                     f"{e['raw_output_tokens_per_s']:.0f}", f"{e['engine_efficiency_tokens']:.3f}", ""))
        for name, v in e["variants"].items():
            if name != "default":
                rows.append((f"engine [{name}]: rows/s (steady)", f"pipeline {v['pipeline']['rows_per_s']:.2f}",
                             f"raw {v['raw']['rows_per_s']:.2f} ({v['engine_threads']} threads)",
                             f"{v['engine_efficiency']:.3f}", ""))
        rows.append(("engine: cold start, s (wall incl. start-up)", f"pipeline {e['pipeline_cold_s']:.1f} "
                     f"(+ ray.init {e['ray_init_s']:.1f})", f"raw process {e['raw_cold_s']:.1f}"
                     + (f"; Ray Data LLM {peer['cold_total_s']:.1f}" if "cold_total_s" in peer else ""),
                     f"{e['pipeline_cold_s'] / e['raw_cold_s']:.2f}", ""))
        rows.append(("engine: prompt tokens from vLLM's prefix cache, both orders", f"{e['prefix_cache_hit_rate']:.3f}",
                     f"raw {e['prefix_cache_hit_rate_raw']:.3f}", f"{e['prefix_cache_hit_rate']:.3f}",
                     "prefix_cache_hit_rate"))
        rows.append(("engine: prompt tokens from the prefix cache, both orders x 3 samples",
                     f"{e['prefix_cache_hit_rate_samples_3']:.3f}", "", f"{e['prefix_cache_hit_rate_samples_3']:.3f}", ""))
    if "feeding" in results:
        f = results["feeding"]
        worst = f["worst_case"]
        for name, case in f["cases"].items():
            headline = name == worst
            rows.append((f"feeding [{name}]: rows/s vs a perfectly fed replica", f"{case['rows_per_s_in_window']:.2f}",
                         f"{case['rows_per_s_in_window'] / case['vs_perfectly_fed']:.2f}"
                         + (" (decode-bound)" if case["decode_bound"] else ""),
                         f"{case['vs_perfectly_fed']:.3f}", "feeding.vs_perfectly_fed" if headline else ""))
            rows.append((f"feeding [{name}]: slot occupancy while input lasts", f"{case['slot_occupancy']:.3f}",
                         f"whole window {case['slot_occupancy_whole_window']:.3f} (perfectly fed "
                         f"{case['ideal_slot_occupancy_whole_window']:.3f})", f"{case['slot_occupancy']:.3f}",
                         "feeding.slot_occupancy" if case["slot_occupancy"] == f["slot_occupancy"] else ""))
        if "vs_one_batch_at_a_time" in f:
            rows.append(("feeding: rows/s vs one batch at a time (a synchronous vLLM batch)",
                         f"{f['vs_one_batch_at_a_time']:.2f}", "1.0", f"{f['vs_one_batch_at_a_time']:.2f}", ""))
    if "decode" in results:
        for kind, d in results["decode"]["stages"].items():
            rows.append((f"decode [{kind}]: {d['unit']} per core", f"Ray {d['ray_per_core']:.1f} ({d['ray_mean_concurrency']:.2f} "
                         f"batches at once; {d['ray_per_busy_second']:.1f} per busy batch-second; CPU s per "
                         f"loop CPU s: stage {d['stage_cpu_vs_loop']:.2f}, all Ray {d['ray_cpu_vs_loop']:.2f})",
                         f"loop {d['loop_per_core']:.1f}", f"{d['ratio']:.3f}",
                         "decode_ratio" if kind == results["decode"]["worst_stage"] else ""))
    if "scale" in results:
        s = results["scale"]
        for p in s["points"]:
            rows.append((f"scale {p['factor']}x ({p['rows']} rows)", f"{p['wall_s']:.1f} s",
                         f"peak RSS {p['peak_total_rss_mib']:.0f} MiB (driver {p['peak_driver_rss_mib']:.0f}, "
                         f"{p['peak_processes']} Ray processes)", f"2nd half / 1st half {p['second_half_vs_first_half']:.3f}",
                         ""))
        rows.append((f"scale: peak RSS, 2nd half / 1st half of the {s['memory_growth_measured_in']} run",
                     f"{s['memory_growth']:.3f}", "1.0 (plateau)", f"{s['memory_growth']:.3f}", "memory_growth"))
        if "memory_growth_1000x" in s:
            rows.append(("scale: peak memory 1000x / 100x", f"{s['memory_growth_1000x']:.3f}", "1.0",
                         f"{s['memory_growth_1000x']:.3f}", "memory_growth_1000x"))
        if "footprint_growth" in s:
            rows.append((f"scale: footprint (memory outside shared memory + object store once), 2nd half / 1st half of the "
                         f"{s['memory_growth_measured_in']} run", f"{s['footprint_growth']:.3f}", "1.0 (plateau)",
                         f"{s['footprint_growth']:.3f}", ""))
        if "footprint_growth_1000x" in s:
            rows.append(("scale: peak footprint 1000x / 100x", f"{s['footprint_growth_1000x']:.3f}", "1.0",
                         f"{s['footprint_growth_1000x']:.3f}", ""))
        rows.append(("scale: peak memory 100x / 1x (1x below the working set)", f"{s['memory_growth_100x_vs_1x']:.3f}",
                     f"PSS {s['memory_growth_pss_100x_vs_1x']:.3f}; 100x/10x {s['memory_growth_10x_to_100x']:.3f}",
                     f"{s['memory_growth_100x_vs_1x']:.3f}", ""))
        rows.append(("scale: ms/row 10x->100x vs 1x->10x", f"{s['marginal_ms_per_row_10x_100x']:.2f}",
                     f"{s['marginal_ms_per_row_1x_10x']:.2f}",
                     f"{s['marginal_ms_per_row_10x_100x'] / s['marginal_ms_per_row_1x_10x']:.2f}", ""))
    if "relabel" in results:
        r = results["relabel"]
        rows.append((f"relabel: {r['rows']} judged rows, rows/s", f"{r['relabel_rows_per_s']:.0f} ({r['relabel_s']} s)",
                     f"{100_000 / 60:.0f} (100K rows in a minute)", f"{r['relabel_rows_per_s'] / (100_000 / 60):.2f}",
                     "relabel_rows_per_s"))
    if "resume" in results:
        r = results["resume"]
        rows.append((f"resume: {r['committed_ids']} committed ids, {r['remaining_rows']} rows left, wall s",
                     f"resume {r['resume_2m_ids_seconds']:.1f} (first new commit {r['resume']['first_commit_s']:.1f} s)",
                     f"fresh {r['fresh']['wall_s']:.1f} (first commit {r['fresh']['first_commit_s']:.1f} s)",
                     f"{r['seconds_vs_fresh']:.2f}", "resume_seconds_vs_fresh"))
        rows.append(("resume: peak RSS MiB (driver + Ray)", f"resume {r['resume_2m_ids_peak_mib']:.0f} (driver "
                     f"{r['resume']['peak_driver_rss_mib']:.0f})", f"fresh {r['fresh']['peak_total_rss_mib']:.0f} (driver "
                     f"{r['fresh']['peak_driver_rss_mib']:.0f})", f"{r['peak_mib_vs_fresh']:.2f}", "resume_peak_vs_fresh"))
    return rows


def markdown(results: dict[str, Any]) -> str:
    lines = [f"# flexcurate benchmarks ({results['size']}, {results['machine']['cpus']} CPUs, "
             f"{results['machine']['when']})", "",
             "| benchmark | measured | baseline | ratio | target |", "|---|---|---|---|---|"]
    for name, measured, baseline, ratio, key in headline_rows(results):
        target = ""
        if key and key in results["targets"]:
            t = results["targets"][key]
            target = f"{'>=' if t['higher_is_better'] else '<='} {t['threshold']}: {'holds' if t['holds'] else 'MISSED'}"
        lines.append(f"| {name} | {measured} | {baseline} | {ratio} | {target} |")
    if "sizing" in results:
        z = results["sizing"]
        lines += ["", f"## Decode CPUs per GPU replica (assumed {z['gpu_rows_per_s_per_replica']} judged rows/s "
                  f"per replica; decode cores at {z['target_cpu_utilisation']:.0%}; the decode stage in Ray at "
                  f"{z['ray_per_core_ratio']:.2f} of a plain loop per busy core)", "",
                  "| media mix | decode CPU ms/row | rows/s per decode core | decode CPUs per replica |",
                  "|---|---|---|---|"]
        for row in z["table"]:
            lines.append(f"| {row['mix']} | {row['decode_ms_per_row']} | {row['rows_per_s_per_decode_core']} "
                         f"| {row['decode_cpus_per_replica']} |")
    lines += ["", f"Load average (1 min) before each section: {results['machine']['load']}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for key, value in SIZES[args.size].items():
        if key in ("repeats", "feeding_rows") and getattr(args, key):
            continue
        setattr(args, key, value)
    args.media_profile = args.media_profile or ("typical" if args.device == "cuda" else "small")
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        print(f"unknown section(s) {unknown}; choose from {SECTIONS}", file=sys.stderr)
        return 2
    try:
        parse_variants(args.variants)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    logging.getLogger("ray").setLevel(logging.WARNING)
    out = Path(args.out).resolve()
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    results: dict[str, Any] = {
        "size": args.size,
        "machine": {"cpus": len(os.sched_getaffinity(0)), "python": platform.python_version(),
                    "when": time.strftime("%Y-%m-%d %H:%M"), "load": {},
                    "waited_for_load": wait_for_quiet(args.max_load, args.wait_load_s)},
        "args": {k: v for k, v in vars(args).items()},
    }
    from bench import decode, engine_efficiency, feeding, relabel, resume, scale

    modules = {"decode": decode, "feeding": feeding, "engine": engine_efficiency, "scale": scale, "relabel": relabel,
               "resume": resume}
    for section in SECTIONS:  # decode first: the sizing table needs its per-row costs
        if section not in sections:
            continue
        results["machine"]["load"][section] = round(load_average(), 2)
        print(f"[bench] {section} ...", flush=True)
        started = time.time()
        results[section] = modules[section].run(args, work / section)
        results[section]["section_s"] = round(time.time() - started, 1)
    if "decode" in results:
        d = results["decode"]
        costs = {kind: stage["cpu_s_per_row"] for kind, stage in d["stages"].items()}
        # The stage's own cost inside Ray (per busy batch-second vs the loop), not Ray Data's parallelism:
        # production shards give Ray many read tasks; see decode's mean concurrency for this machine's.
        efficiency = min(min(1.0, s["ray_per_busy_second"] / s["loop_per_core"]) for s in d["stages"].values())
        results["sizing"] = feeding.sizing(costs, efficiency, args.gpu_rows_per_s)

    results["targets"] = {}
    for key, (section, field, threshold, higher) in HEADLINES.items():
        if field not in results.get(section, {}):
            continue  # section not run, or the figure not measured (e.g. the peer could not run)
        value = results[section][field]
        if "." not in key:
            results[key] = value
        results["targets"][key] = {"value": value, "threshold": threshold, "higher_is_better": higher,
                                   "holds": value >= threshold if higher else value <= threshold}
    for key, (section, field) in FIGURES.items():
        if section in results:
            results[key] = results[section][field]
    ordered = {k: results[k] for k in [*HEADLINES, *FIGURES, "targets"] if k in results}
    ordered.update({k: v for k, v in results.items() if k not in ordered})
    (out / "results.json").write_text(json.dumps(ordered, indent=2, default=str))
    table = markdown(ordered)
    (out / "results.md").write_text(table)
    print()
    print(table)
    print(f"results: {out / 'results.json'}, {out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
