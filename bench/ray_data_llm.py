"""The peer: Ray Data LLM (`ray.data.llm`, the vLLM engine processor of ray 2.60) on the same
requests as the raw and pipeline sides of the engine benchmark.

Each captured request (prompt with the family's media placeholders, decoded media arrays, seed,
sampling, its own verdict regex as structured output) becomes one row of a Ray dataset; the
processor's own chat-template, tokenize and detokenize stages are off, as its docs say for rows
that carry a rendered prompt (vLLM tokenises it and detokenises the output itself), and its
multimodal preparation stage is off too: on vllm 0.32 that stage cannot run (it imports
`vllm.entrypoints.chat_utils`, which moved), and rows carrying `multimodal_data` themselves need
no preparation. The peer's unit is a request; its rows/s are requests/s over requests per
candidate row, so all three sides are compared on candidates judged.

Its configuration follows its docs (ProcessorConfig and vLLMEngineProcessorConfig): `batch_size`
32 (its default; our judge's batch of rows times its two answer orders is the same number of
requests), `max_concurrent_batches` 8 (its default, "good enough for batch_size >= 32", and
batch_size x 8 >= max_num_seqs, which it warns about otherwise), `max_tasks_in_flight_per_actor`
left at its default 2 x max_concurrent_batches, `max_pending_requests` at its default 1.1 x
max_num_seqs, `concurrency` = the pipeline's replicas, the input repartitioned into blocks of one
batch (its tuning guide's first advice). Engine arguments are the pipeline's own
(`stages.engines.vllm_engine.engine_args`). On the CPU build it needs a CPU placement bundle
(`placement_group_config`), Prometheus engine metrics off (`log_engine_metrics`), and the same
thread count as the other sides (OMP_NUM_THREADS in its runtime env); its engine is vLLM's
`AsyncLLMEngine`, which on vllm 0.32 always runs the engine core in a process of its own.

Steady state is timed as on the pipeline side, inside the engine actor: a subclass of its engine
UDF sends one warm-up request first (as the other sides do), then records the window from the
first request submitted to the last output returned, the requests and tokens, in a JSON file.
"""
from __future__ import annotations

import asyncio
import copy
import json
import os
import time
from pathlib import Path
from typing import Any, AsyncIterator

from bench.paths import checkout_pythonpath
from stages.engines.api import JudgeRequest
from stages.engines.torchvision_compat import ensure_torchvision_importable
from stages.engines.vllm_engine import prepare_cpu_core_process, prepare_cpu_engine, to_vllm_prompt

# Ray Data LLM's engine stage imports vllm, which imports torchvision: beside the CPU build of
# torch that needs the compatibility shim first (a no-op on GPU installs). Ray workers import
# this module to unpickle MeteredPeerUDF, so it is applied here, at import.
ensure_torchvision_importable()
from ray.llm._internal.batch.stages.vllm_engine_stage import vLLMEngineStageUDF  # noqa: E402

BATCH_SIZE = 32
MAX_CONCURRENT_BATCHES = 8


def peer_settings(replicas: int) -> dict[str, Any]:
    """The processor settings the comparison uses, as results.json records them."""
    return {"batch_size": BATCH_SIZE, "max_concurrent_batches": MAX_CONCURRENT_BATCHES,
            "max_tasks_in_flight_per_actor": 2 * MAX_CONCURRENT_BATCHES, "concurrency": replicas,
            "max_pending_requests": "default (1.1 x max_num_seqs)", "blocks": f"{BATCH_SIZE} rows each",
            "stages": "engine only (rows carry the rendered prompt and multimodal_data)"}


def peer_row(request: JudgeRequest, sampling: dict[str, Any], structured: bool, family: str) -> dict[str, Any]:
    """One request as a row of the processor's input: the same prompt, media, seed and sampling."""
    prompt = to_vllm_prompt(request, family)
    params: dict[str, Any] = {"temperature": sampling["temperature"], "top_p": sampling["top_p"],
                              "max_tokens": sampling["max_tokens"], "seed": request.seed}
    if structured and request.guided_regex is not None:
        params["structured_outputs"] = {"regex": request.guided_regex}
    row: dict[str, Any] = {"prompt": prompt["prompt"], "sampling_params": params}
    if "multi_modal_data" in prompt:
        row["multimodal_data"] = prompt["multi_modal_data"]
    if "mm_processor_kwargs" in prompt:
        row["mm_processor_kwargs"] = prompt["mm_processor_kwargs"]
    return row


class MeteredPeerUDF(vLLMEngineStageUDF):
    """The processor's engine UDF, metered: one warm-up request, then the steady-state window."""

    def __init__(self, *args: Any, stats_path: str, threads: int, on_cpu: bool, **kwargs: Any) -> None:
        started = time.time()
        if on_cpu:  # the CPU build's set-up, as the raw side gets it; its engine core always runs apart
            prepare_cpu_engine(threads)
            prepare_cpu_core_process(threads)
        super().__init__(*args, **kwargs)
        self._stats_path = Path(stats_path)
        self._warm = asyncio.Lock()
        self._warmed = False
        self._in_flight = 0
        self._stats: dict[str, Any] = {
            "pid": os.getpid(), "startup_s": time.time() - started, "submitted": 0, "completed": 0,
            "failed": 0, "output_tokens": 0, "prompt_tokens": 0, "first_submit": None, "last_done": None,
            "max_in_flight": 0,
        }
        self._write()

    async def _warm_up(self, row: dict[str, Any]) -> None:
        async with self._warm:
            if not self._warmed:
                await self.llm.generate_async(copy.deepcopy(row))
                self._warmed = True

    async def udf(self, batch: list[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
        await self._warm_up(batch[0])
        stats = self._stats
        stats["first_submit"] = stats["first_submit"] or time.time()
        stats["submitted"] += len(batch)
        self._in_flight += len(batch)
        stats["max_in_flight"] = max(stats["max_in_flight"], self._in_flight)
        async for output in super().udf(batch):
            self._in_flight -= 1
            stats["last_done"] = time.time()
            if output.get("__inference_error__"):
                stats["failed"] += 1
            else:
                stats["completed"] += 1
                stats["output_tokens"] += output["num_generated_tokens"]
                stats["prompt_tokens"] += output["num_input_tokens"]
            if self._in_flight == 0:
                self._write()
            yield output

    def _write(self) -> None:
        temporary = self._stats_path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self._stats))
        temporary.replace(self._stats_path)


def run_peer(requests: list[JudgeRequest], engine_kwargs: dict[str, Any], sampling: dict[str, Any],
             structured: bool, *, family: str, on_cpu: bool, threads: int, replicas: int,
             stats_dir: Path) -> dict[str, Any]:
    """One processor run over every request; returns its outputs' count and wall time. The
    metered figures are in `stats_dir` (bench.engines.read_stats reads them)."""
    import ray
    from vllm.config import StructuredOutputsConfig

    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    kwargs = {k: v for k, v in engine_kwargs.items() if k != "model"}
    if isinstance(kwargs.get("structured_outputs_config"), dict):
        kwargs["structured_outputs_config"] = StructuredOutputsConfig(**kwargs["structured_outputs_config"])
    config = vLLMEngineProcessorConfig(
        model_source=engine_kwargs["model"],
        engine_kwargs=kwargs,
        batch_size=BATCH_SIZE,
        max_concurrent_batches=MAX_CONCURRENT_BATCHES,
        concurrency=replicas,
        chat_template_stage=False,
        tokenize_stage=False,
        detokenize_stage=False,
        log_engine_metrics=False,
        placement_group_config={"bundles": [{"CPU": 1}]} if on_cpu else None,
        runtime_env={"env_vars": {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
                                  "PYTHONPATH": checkout_pythonpath()}},
    )
    processor = build_processor(config)
    stats_dir.mkdir(parents=True, exist_ok=True)
    stage = processor.get_stage_by_name("vLLMEngineStage")
    # Copied, not assigned: assignment re-runs the stage's validator, which re-derives its resources
    # without the placement config it consumed the first time (and asks for a GPU).
    processor.stages["vLLMEngineStage"] = stage.model_copy(update={
        "fn": MeteredPeerUDF,
        "fn_constructor_kwargs": {**stage.fn_constructor_kwargs, "threads": threads, "on_cpu": on_cpu,
                                  "stats_path": str(stats_dir / f"engine-peer-{time.time_ns()}.json")},
    })
    rows = [peer_row(r, sampling, structured, family) for r in requests]
    started = time.time()
    dataset = ray.data.from_items(rows, override_num_blocks=max(1, len(rows) // BATCH_SIZE))
    outputs = processor(dataset).take_all()
    wall = time.time() - started
    errors = [o.get("__inference_error__") for o in outputs if o.get("__inference_error__")]
    if len(outputs) != len(rows) or errors:
        raise RuntimeError(f"Ray Data LLM returned {len(outputs)} of {len(rows)} rows; errors: {errors[:3]}")
    return {"outputs": len(outputs), "cold_total_s": wall,
            "texts": [o["generated_text"] for o in outputs[:4]]}
