"""1. Engine efficiency: the whole pipeline vs. the same requests in one raw `LLM.generate` call,
and vs. Ray Data LLM (bench/ray_data_llm.py) on them, the library a user would use instead.

The requests are captured by running the pipeline's own normalize -> decode -> judge stages
in-process over the bench shards with a recording engine, so the raw side gets byte-for-byte the
prompts, media arrays and seeds the pipeline sends (both answer orders: 2 requests per row).
The raw baseline runs in a fresh `python -m bench.engine_efficiency --raw DIR` process with
the engine core where the pipeline's runs (`judge.engine.core_process`: in-process by default on
cpu, a process of its own on cuda) and the judge actor's thread count, the same engine arguments
(`stages.engines.vllm_engine.engine_args`) and the same sampling (seeded, regex-constrained).

Steady state excludes start-up on both sides: raw = requests / one `generate` call over all of
them (made as its two halves, `enqueue` + `wait_for_completion`, to time input preprocessing
separately; after a one-request warm-up); pipeline = requests / the engine's active window (first request in ..
last verdict out, measured inside the judge actor by `MeteredEngine`, after the same warm-up).
Cold start is reported separately: the raw process from spawn to exit vs. `run_curation` wall
time (plus `ray.init`, paid once per job).

Prefix cache: every pipeline run reports the prompt tokens vLLM served from its prefix cache
(`RequestOutput.num_cached_tokens`) over the prompt tokens requested: both answer orders of a row
(and its samples) share the system prompt, the media and the question. Measured with both orders
(the default runs) and, in one more pipeline run on a quarter of the rows, with judge.samples=3.
"""
from __future__ import annotations

import json
import pickle
import shutil
import sys
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from bench.common import (
    bench_config,
    bench_settings,
    config_sets,
    media_rows,
    median,
    parse_variants,
    ray_session,
    run_module,
    write_shards,
)
from bench.engines import MeteredFactory, read_stats
from pipelines.config import RunConfig
from stages.decode import DecodeStage
from stages.engines.api import Completion, JudgeRequest
from stages.formats.verdicts import verdict_text
from stages.judge import JudgeStage
from stages.normalize import NormalizeStage

GPU_OVERRIDES = [  # Flex-Omni-7B on one GPU (the demo config's CPU-engine sizes do not fit a GPU)
    "judge.engine.gpu_memory_utilization=0.85",
    "judge.engine.enforce_eager=false",
    "judge.engine.max_num_seqs=256",
    "judge.engine.max_model_len=8192",
    "judge.cpus_per_replica=4",
    "judge.batch_size=32",
]


class _Recorder:
    """An engine that records each request and answers it at once with a parsable verdict."""

    slots = 64
    prefetch = 0

    def __init__(self) -> None:
        self.requests: list[JudgeRequest] = []

    def submit(self, request: JudgeRequest) -> "Future[Completion]":
        self.requests.append(request)
        future: Future[Completion] = Future()
        future.set_result(Completion(verdict_text(7, 3), 0, 1, "stop"))
        return future

    def shutdown(self) -> None:
        pass


def capture_requests(cfg: RunConfig) -> list[JudgeRequest]:
    """The judge requests the pipeline sends for cfg's input, built by its own stages in-process."""
    table = pq.read_table(cfg.input.paths[0])
    decode = DecodeStage(cfg.media, cfg.input, batch_size=cfg.decode_batch_size)
    decode.setup()
    recorder = _Recorder()
    fmt = cfg.judging_format()
    judged = JudgeStage(fmt, cfg.judge, engine_factory=lambda: recorder).process(
        decode.process(NormalizeStage(fmt, cfg.input).process(table))
    )
    failed = [e for e in judged.column("error").to_pylist() if e]
    if failed:
        raise RuntimeError(f"bench rows failed before the engine: {failed[:3]}")
    return recorder.requests


# --------------------------------------------------------------------------- raw side


def run_raw(cfg: RunConfig, requests_file: Path, work: Path) -> dict[str, Any]:
    """One raw baseline run in a fresh process; returns its figures."""
    work.mkdir(parents=True, exist_ok=True)
    spec = {
        "engine": cfg.judge.engine.model_dump(mode="json"),
        "sampling": cfg.judge.sampling.model_dump(mode="json"),
        "structured": cfg.judge.structured(),
        "threads": cfg.judge.engine_threads(),
        "tensor_parallel_size": cfg.judge.tensor_parallel_size,
        "requests": str(requests_file),
    }
    (work / "spec.json").write_text(json.dumps(spec))
    threads = str(spec["threads"])
    started = time.time()
    run_module("bench.engine_efficiency", ["--raw", str(work)], work / "raw.log",
               env={"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads})
    total = time.time() - started
    result = json.loads((work / "result.json").read_text())
    result["cold_total_s"] = total
    return result


def _raw_main(work: Path) -> None:
    spawned = time.time()
    spec = json.loads((work / "spec.json").read_text())
    requests: list[JudgeRequest] = pickle.loads(Path(spec["requests"]).read_bytes())
    from stages.engines.config import EngineConfig
    from stages.engines.vllm_engine import engine_args, prepare_engine_process, to_vllm_prompt

    engine = EngineConfig.model_validate(spec["engine"])
    prepare_engine_process(engine, spec["threads"])  # as VllmEngine does on its engine thread
    from vllm import LLM, SamplingParams
    from vllm.sampling_params import StructuredOutputsParams

    sampling = spec["sampling"]

    def params(request: JudgeRequest) -> SamplingParams:
        return SamplingParams(
            temperature=sampling["temperature"], top_p=sampling["top_p"], max_tokens=sampling["max_tokens"],
            seed=request.seed,
            structured_outputs=(  # the pipeline's own per-request regex
                StructuredOutputsParams(regex=request.guided_regex)
                if spec["structured"] and request.guided_regex is not None else None
            ),
        )

    loading = time.time()
    llm = LLM(**engine_args(engine, structured=spec["structured"], tensor_parallel_size=spec["tensor_parallel_size"]))
    loaded = time.time()
    prompts = [to_vllm_prompt(r, engine.resolved_family()) for r in requests]
    sampling_params = [params(r) for r in requests]
    llm.generate(prompts[:1], sampling_params[:1], use_tqdm=False)  # warm-up, as MeteredFactory does
    warmed = time.time()
    # LLM.generate is exactly these two calls (add every request, then run the engine to the
    # end); made separately, they also time the input preprocessing (tokeniser, HF processor).
    llm.enqueue(prompts, sampling_params, use_tqdm=False)
    enqueued = time.time()
    outputs = llm.wait_for_completion(use_tqdm=False)
    done = time.time()
    result = {
        "requests": len(outputs),
        "output_tokens": sum(len(o.outputs[0].token_ids) for o in outputs),
        "prompt_tokens": sum(len(o.prompt_token_ids or ()) for o in outputs),
        "cached_prompt_tokens": sum(o.num_cached_tokens or 0 for o in outputs),
        "generate_s": done - warmed,
        "preprocess_s": enqueued - warmed,
        "load_s": loaded - loading,
        "warmup_s": warmed - loaded,
        "import_s": loading - spawned,
        "torch_threads": __import__("torch").get_num_threads(),
    }
    (work / "result.json").write_text(json.dumps(result))


# --------------------------------------------------------------------------- pipeline side


def run_pipeline(cfg: RunConfig, warmup: JudgeRequest, work: Path) -> dict[str, Any]:
    from pipelines.curate import run_curation

    stats_dir = work / "engine-stats"
    shutil.rmtree(stats_dir, ignore_errors=True)
    stats_dir.mkdir(parents=True)
    engine_factory = JudgeStage(cfg.judging_format(), cfg.judge).engine_factory
    factory = MeteredFactory(engine_factory, str(stats_dir), warmup=warmup)
    started = time.time()
    result = run_curation(cfg, engine_factory=factory)
    wall = time.time() - started
    if not result.succeeded or result.report["counts"]["errors"]:
        raise RuntimeError(f"pipeline run failed: {result.report['status']} {result.report['error_reasons']}")
    stats = read_stats(stats_dir)
    return {
        "rows": result.report["timings"]["stages"]["judge"]["rows"],
        "requests": stats["completed"],
        "output_tokens": stats["output_tokens"],
        "prompt_tokens": stats["prompt_tokens"],
        "cached_prompt_tokens": stats["cached_prompt_tokens"],
        "prefix_cache_hit_rate": stats["cached_prompt_tokens"] / stats["prompt_tokens"],
        "window_s": stats["window_s"],
        "engine_startup_s": stats["startup_s"],
        "first_request_after_s": stats["first_submit"] - started,
        "cold_total_s": wall,
        "slot_occupancy": stats["slot_seconds"] / (cfg.judge.engine.max_num_seqs * stats["window_s"]),
    }


# --------------------------------------------------------------------------- the peer: Ray Data LLM


def run_ray_data_llm(cfg: RunConfig, requests: list[JudgeRequest], work: Path) -> dict[str, Any]:
    """One Ray Data LLM run over the same requests, on the pipeline's engine arguments."""
    from bench.ray_data_llm import run_peer
    from stages.engines.vllm_engine import engine_args

    stats_dir = work / "engine-stats"
    shutil.rmtree(stats_dir, ignore_errors=True)
    structured = cfg.judge.structured()
    peer = run_peer(requests, engine_args(cfg.judge.engine, structured=structured,
                                          tensor_parallel_size=cfg.judge.tensor_parallel_size),
                    cfg.judge.sampling.model_dump(mode="json"), structured, family=cfg.judge.engine.resolved_family(),
                    on_cpu=cfg.judge.engine.device == "cpu", threads=cfg.judge.engine_threads(),
                    replicas=cfg.judge.replicas, stats_dir=stats_dir)
    stats = read_stats(stats_dir)
    return {"requests": stats["completed"], "output_tokens": stats["output_tokens"], "window_s": stats["window_s"],
            "engine_startup_s": stats["startup_s"], "cold_total_s": peer["cold_total_s"]}


def _rates(rows: int, run: dict[str, Any], seconds: float) -> dict[str, float]:
    return {"rows_per_s": rows / seconds, "requests_per_s": run["requests"] / seconds,
            "output_tokens_per_s": run["output_tokens"] / seconds}


def _medians(runs: list[dict[str, Any]]) -> dict[str, float]:
    keys = ("rows_per_s", "requests_per_s", "output_tokens_per_s", "cold_total_s", "slot_occupancy",
            "prefix_cache_hit_rate")
    return {key: median([r[key] for r in runs]) for key in keys if key in runs[0]}


def run(args: Any, work: Path) -> dict[str, Any]:
    from jobs.runtime import resolve_model

    rows, repeats = (args.engine_rows, args.repeats)
    input_dir = write_shards(work / "input", media_rows(rows, ["image+audio"], args.media_profile, distinct=True),
                             rows_per_shard=max(16, rows // 4))
    overrides = [f"judge.engine.model={args.model}", f"judge.engine.device={args.device}",
                 f"judge.sampling.max_tokens={args.max_tokens}", "judge.structured_output=true",
                 "filter.require_order_agreement=false"]
    if args.device == "cuda":
        overrides += GPU_OVERRIDES
    variant_sets = {"default": [], **parse_variants(args.variants)}
    configs = {name: bench_config(input_dir, work / "output", [*overrides, *args.overrides, *config_sets(sets)])
               for name, sets in variant_sets.items()}
    for cfg in configs.values():
        resolve_model(cfg)
    cfg = configs["default"]
    requests = capture_requests(cfg)
    requests_file = work / "requests.pkl"
    requests_file.write_bytes(pickle.dumps(requests))
    thread_counts = sorted({c.judge.engine_threads() for c in configs.values()})

    raw_runs: dict[int, list[dict[str, Any]]] = {t: [] for t in thread_counts}
    pipe_runs: dict[str, list[dict[str, Any]]] = {name: [] for name in configs}
    peer_runs: list[dict[str, Any]] = []
    peer_error: str | None = None
    with ray_session() as ray_init_s:
        for repeat in range(repeats):  # interleaved: raw, pipeline (, variants), peer, raw, pipeline, ...
            for threads in thread_counts:
                raw_cfg = next(c for c in configs.values() if c.judge.engine_threads() == threads)
                raw = run_raw(raw_cfg, requests_file, work / f"raw-{threads}-{repeat}")
                raw.update(_rates(rows, raw, raw["generate_s"]))
                raw_runs[threads].append(raw)
            for name, variant in configs.items():
                with bench_settings(variant_sets[name]):
                    pipe = run_pipeline(variant, requests[0], work / f"pipeline-{name}-{repeat}")
                pipe.update(_rates(pipe["rows"], pipe, pipe["window_s"]))
                pipe_runs[name].append(pipe)
            if peer_error is None:
                try:
                    peer = run_ray_data_llm(cfg, requests, work / f"ray-data-llm-{repeat}")
                    peer.update(_rates(rows, peer, peer["window_s"]))
                    peer_runs.append(peer)
                except Exception as exc:  # noqa: BLE001 - reported in results.json; the other sides stand
                    peer_error = f"{type(exc).__name__}: {exc}"[:2000]
                    print(f"  Ray Data LLM could not run: {peer_error[:300]}", flush=True)
            print(f"  engine efficiency run {repeat + 1}/{repeats}: raw "
                  + ", ".join(f"{raw_runs[t][-1]['rows_per_s']:.2f} ({t} threads)" for t in thread_counts)
                  + "; pipeline " + ", ".join(f"{pipe_runs[n][-1]['rows_per_s']:.2f} ({n})" for n in configs)
                  + (f"; Ray Data LLM {peer_runs[-1]['rows_per_s']:.2f}" if len(peer_runs) > repeat else "")
                  + " rows/s", flush=True)
        samples3 = _samples_run(args, work, overrides, rows, warmup=requests[0])

    raw_med = {t: _medians(runs) for t, runs in raw_runs.items()}
    variants = {}
    for name, variant in configs.items():
        pipe, raw = _medians(pipe_runs[name]), raw_med[variant.judge.engine_threads()]
        variants[name] = {
            "engine_efficiency": pipe["rows_per_s"] / raw["rows_per_s"],
            "engine_efficiency_requests": pipe["requests_per_s"] / raw["requests_per_s"],
            "engine_efficiency_tokens": pipe["output_tokens_per_s"] / raw["output_tokens_per_s"],
            "engine_threads": variant.judge.engine_threads(),
            "bench_settings": [x for x in variant_sets[name] if x.startswith("bench.")],
            "settings": {k: getattr(variant.judge, k) for k in ("batch_size", "batches_in_flight", "cpus_per_replica")}
            | {"decode_batch_size": variant.decode_batch_size},
            "pipeline": pipe,
            "raw": raw,
        }
    default = variants["default"]
    from bench.ray_data_llm import peer_settings  # imports vLLM: not at module import (the raw process)

    ray_data_llm: dict[str, Any] = {"settings": peer_settings(cfg.judge.replicas), "runs": peer_runs}
    if peer_runs:
        ray_data_llm.update(_medians(peer_runs))
    if peer_error is not None:
        ray_data_llm["error"] = peer_error
    section: dict[str, Any] = {
        "engine_efficiency": default["engine_efficiency"],
        "engine_efficiency_requests": default["engine_efficiency_requests"],
        "engine_efficiency_tokens": default["engine_efficiency_tokens"],
        "pipeline_rows_per_s": default["pipeline"]["rows_per_s"],
        "raw_rows_per_s": default["raw"]["rows_per_s"],
        "pipeline_requests_per_s": default["pipeline"]["requests_per_s"],
        "raw_requests_per_s": default["raw"]["requests_per_s"],
        "pipeline_output_tokens_per_s": default["pipeline"]["output_tokens_per_s"],
        "raw_output_tokens_per_s": default["raw"]["output_tokens_per_s"],
        "pipeline_cold_s": default["pipeline"]["cold_total_s"],
        "raw_cold_s": default["raw"]["cold_total_s"],
        "ray_init_s": ray_init_s,
        "rows": rows,
        "requests_per_row": len(requests) / rows,
        "max_tokens": args.max_tokens,
        "model": cfg.judge.engine.model,
        "device": args.device,
        "media": args.media_profile,
        "engine_threads": default["engine_threads"],
        "settings": default["settings"],
        "overrides": args.overrides,
        "variants": variants,
        "ray_data_llm": ray_data_llm,
        "prefix_cache_hit_rate": default["pipeline"]["prefix_cache_hit_rate"],
        "prefix_cache_hit_rate_raw": median([r["cached_prompt_tokens"] / r["prompt_tokens"]
                                             for r in raw_runs[default["engine_threads"]]]),
        "prefix_cache_samples_3": samples3,
        "prefix_cache_hit_rate_samples_3": samples3["prefix_cache_hit_rate"],
        "runs": {"raw": raw_runs, "pipeline": pipe_runs},
    }
    if peer_runs:  # pipeline rows/s over the peer's, steady state, medians of the interleaved runs
        section["vs_ray_data_llm"] = default["pipeline"]["rows_per_s"] / ray_data_llm["rows_per_s"]
    return section


def _samples_run(args: Any, work: Path, overrides: list[str], rows: int, warmup: JudgeRequest) -> dict[str, Any]:
    """One pipeline run with judge.samples=3 on a quarter of the rows (their own media): how much
    of the prompt vLLM's prefix cache serves when each row asks 2 orders x 3 samples."""
    count = max(4, rows // 4)
    input_dir = write_shards(work / "input-samples-3", media_rows(count, ["image+audio"], args.media_profile,
                                                                 distinct=True), rows_per_shard=max(16, count // 4))
    cfg = bench_config(input_dir, work / "output-samples-3", [*overrides, *args.overrides, "judge.samples=3"])
    from jobs.runtime import resolve_model

    resolve_model(cfg)
    run = run_pipeline(cfg, warmup, work / "pipeline-samples-3")
    return {key: run[key] for key in ("rows", "requests", "prompt_tokens", "cached_prompt_tokens",
                                      "prefix_cache_hit_rate")}


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--raw":
        _raw_main(Path(sys.argv[2]))
    else:
        sys.exit("usage: python -m bench.engine_efficiency --raw WORKDIR  (started by python -m bench)")
