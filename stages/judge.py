"""Judge each row on a replica of the Flex-Judge engine: fan out its requests, gather them back.

Per pending row: both answer orders (pairwise with `swap_order`) x `samples` slots; a verdict that
does not parse is asked again with a new seed, up to `max_retries` times. All requests of a batch
are submitted at once and the replica holds several batches, so the engine always has work.
Seeds derive from (base seed, row id, slot, attempt): a re-run asks exactly the same questions.

A request the engine rejects (prompt too long, bad media) fails its row only; a row with a slot
still unparsed after its retries fails with `unparsed_verdict`, its raw texts kept in `judgments`.
A dead engine raises: the batch must not be written as if judged.
"""
from __future__ import annotations

import hashlib
import math
import uuid
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

import pyarrow as pa

from pipelines.config import JudgeConfig, Mode
from stages.base import ERROR, ERROR_STAGE, Stage, column_or_nulls, describe_exception, settled_mask, with_columns
from stages.decode import DecodeStage, decoded_media
from stages.engine_api import Completion, Engine, JudgeRequest, RequestRejected
from stages.normalize import MEDIA_COLUMNS
from stages.prompts import JudgePrompt
from stages.schema import JUDGMENT_TYPE
from stages.verdicts import REASON_UNPARSED, Verdict, aggregate_pairwise, aggregate_single

PAIRWISE_COLUMNS: dict[str, pa.DataType] = {
    "score_a": pa.float64(),
    "score_b": pa.float64(),
    "votes_a": pa.int32(),
    "votes_b": pa.int32(),
    "votes_tie": pa.int32(),
    "order_agreement": pa.bool_(),
    "winner": pa.string(),
    "margin": pa.float64(),
}
SINGLE_COLUMNS: dict[str, pa.DataType] = {"score": pa.float64()}
COMMON_COLUMNS: dict[str, pa.DataType] = {"judge_model": pa.string(), "judgments": pa.list_(JUDGMENT_TYPE)}


class UnparsedVerdict(ValueError):
    pass


def request_seed(base: int, row_id: str, order: str, sample: int, attempt: int) -> int:
    digest = hashlib.blake2b(f"{base}:{row_id}:{order}:{sample}:{attempt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % (2**31 - 1)


@dataclass
class ConfiguredEngineFactory:
    """Builds the configured engine inside the judge actor (never on the driver)."""

    judge: JudgeConfig
    guided_regex: str | None

    def __call__(self) -> Engine:
        engine = self.judge.engine
        if engine.backend == "simulated":
            from stages.simulated_engine import LatencyModel, SimulatedEngine

            sim = engine.simulation
            latency = LatencyModel(seconds_per_token=sim.seconds_per_token, median_tokens=sim.median_tokens,
                                   sigma=sim.sigma, max_tokens=self.judge.sampling.max_tokens)
            return SimulatedEngine(latency=latency, concurrency=sim.concurrency)
        from stages.vllm_engine import VllmEngine

        return VllmEngine(
            engine,
            self.judge.sampling,
            guided_regex=self.guided_regex,
            tensor_parallel_size=self.judge.tensor_parallel_size,
            cpu_threads=self.judge.engine_threads(),
        )


@dataclass
class _RowJob:
    index: int
    row_id: str
    prompts: dict[str, str]  # order -> prompt
    media: dict[str, Any]
    verdicts: list[Verdict] = field(default_factory=list)
    error: str | None = None


class _Slot(NamedTuple):
    job: _RowJob
    order: str
    sample: int
    attempt: int
    seed: int


# Requests a replica should hold per engine slot. A batch of rows returns when its slowest verdict
# does; with long-tailed verdict lengths (lognormal, sigma 1, capped at ~14x the median) a batch's
# requests are in service for about 1/7 of its lifetime, so ~7 requests held per slot keep the
# slots full. Measured with the feeding benchmark (simulated 64- and 256-slot replicas): 4x held
# gave 0.63-0.70 of a perfectly fed replica's rows/s, 8x gave 0.92-1.0, 16x no better.
REQUESTS_HELD_PER_SLOT = 8
MAX_AUTO_BATCHES_IN_FLIGHT = 64


def auto_batches_in_flight(max_num_seqs: int, batch_size: int, requests_per_row: int) -> int:
    """Batches in flight per replica that keep about REQUESTS_HELD_PER_SLOT requests per engine slot."""
    wanted = math.ceil(REQUESTS_HELD_PER_SLOT * max_num_seqs / (batch_size * requests_per_row))
    return max(2, min(MAX_AUTO_BATCHES_IN_FLIGHT, wanted))


class JudgeStage(Stage):
    name = "judge"

    def __init__(self, mode: Mode, judge: JudgeConfig, engine_factory: Callable[[], Engine] | None = None) -> None:
        self.mode = mode
        self.judge = judge
        self.prompt = JudgePrompt(mode, judge.engine.resolved_family(), judge.prefill_think)
        regex = self.prompt.regex(judge.reasoning_max_chars) if judge.structured() else None
        self.engine_factory = engine_factory or ConfiguredEngineFactory(judge, regex)
        self.orders = ("ab", "ba") if mode == "pairwise" and judge.swap_order else ("ab",)
        self.needs = ("id", "question", "response_a", "response_b", "response", *MEDIA_COLUMNS, *DecodeStage.adds)
        self.adds = {**(PAIRWISE_COLUMNS if mode == "pairwise" else SINGLE_COLUMNS), **COMMON_COLUMNS}
        self.batch_size = judge.batch_size
        self.pool_size = judge.replicas
        self.batches_in_flight = judge.batches_in_flight or auto_batches_in_flight(
            judge.engine.max_num_seqs, judge.batch_size, len(self.orders) * judge.samples
        )
        self.quarantine_after = judge.quarantine_after_crashes
        self.num_cpus = judge.cpus_per_replica
        on_gpu = judge.engine.device == "cuda" and judge.engine.backend == "vllm"
        self.num_gpus = judge.tensor_parallel_size if on_gpu else 0
        self.engine: Engine | None = None

    def ray_remote_args(self) -> dict[str, Any]:
        return {"resources": dict(self.judge.resources)} if self.judge.resources else {}

    def setup(self) -> None:
        if self.engine is None:
            self.engine = self.engine_factory()

    def close(self) -> None:
        if self.engine is not None:
            self.engine.shutdown()
            self.engine = None

    def process(self, table: pa.Table) -> pa.Table:
        settled = settled_mask(table)
        rows = table.select([c for c in self.needs if c in table.column_names]).to_pylist()
        error_stage, error_text = column_or_nulls(table, ERROR_STAGE), column_or_nulls(table, ERROR)
        jobs: list[_RowJob] = []
        for index, row in enumerate(rows):
            if settled[index]:
                continue
            try:
                jobs.append(self._job(index, row))
            except Exception as exc:  # a row whose prompt cannot be built is data, not a crash
                error_stage[index], error_text[index] = self.name, describe_exception(exc)
        self._run(jobs)
        out: dict[str, list[Any]] = {column: [None] * table.num_rows for column in self.adds}
        for job in jobs:
            for column, value in self._row_columns(job).items():
                out[column][job.index] = value
            if job.error is not None:
                error_stage[job.index], error_text[job.index] = self.name, job.error
        out[ERROR_STAGE], out[ERROR] = error_stage, error_text
        types = {**self.adds, ERROR_STAGE: pa.string(), ERROR: pa.string()}
        # Decoded pixels and samples are the bulk of a row and nothing after the judge reads them:
        # dropping them here keeps label/write batches small and the object store free.
        decoded = [c for c in DecodeStage.adds if c in table.column_names]
        return with_columns(table.drop_columns(decoded), out, types)

    def _job(self, index: int, row: dict[str, Any]) -> _RowJob:
        media = decoded_media(row)
        fps = media.pop("video_fps", None)
        if "video" in media and fps:
            media["video"] = (media["video"], {"fps": fps})  # the engine's form for sampled frames
        modalities = [m for m in MEDIA_COLUMNS if m in media]
        if self.mode == "pairwise":
            prompts = {
                order: self.prompt.build_pairwise(row["question"], row["response_a"], row["response_b"], modalities, order)
                for order in self.orders
            }
        else:
            prompts = {"ab": self.prompt.build(row["question"], [row["response"]], modalities)}
        return _RowJob(index=index, row_id=row["id"], prompts=prompts, media=media)

    def _submit(self, job: _RowJob, order: str, sample: int, attempt: int) -> tuple[Future[Completion], _Slot]:
        assert self.engine is not None
        seed = request_seed(self.judge.sampling.seed, job.row_id, order, sample, attempt)
        request = JudgeRequest(
            request_id=f"{job.row_id}:{order}:{sample}:{attempt}:{uuid.uuid4().hex[:8]}",
            prompt=job.prompts[order],
            multi_modal_data=job.media,
            seed=seed,
        )
        return self.engine.submit(request), _Slot(job, order, sample, attempt, seed)

    def _run(self, jobs: list[_RowJob]) -> None:
        self.setup()
        slots = dict(
            self._submit(job, order, sample, 0)
            for job in jobs
            for order in job.prompts
            for sample in range(self.judge.samples)
        )
        while slots:
            done, _ = wait(slots, return_when=FIRST_COMPLETED)
            for future in done:
                job, order, sample, attempt, seed = slots.pop(future)
                try:
                    completion = future.result()
                except RequestRejected as exc:
                    job.error = job.error or describe_exception(exc)
                    continue
                verdict = Verdict.from_text(
                    completion.text,
                    self.mode,
                    order=order,  # type: ignore[arg-type]
                    sample=sample,
                    attempt=attempt,
                    seed=seed,
                    prompt_tokens=completion.prompt_tokens,
                    output_tokens=completion.output_tokens,
                    finish_reason=completion.finish_reason,
                    think_prefilled=self.judge.prefill_think,
                )
                job.verdicts.append(verdict)
                if not verdict.parsed and attempt < self.judge.max_retries and job.error is None:
                    retry, slot = self._submit(job, order, sample, attempt + 1)
                    slots[retry] = slot

    def _row_columns(self, job: _RowJob) -> dict[str, Any]:
        columns: dict[str, Any] = {
            "judge_model": self.judge.engine.model,
            "judgments": [v.to_dict() for v in sorted(job.verdicts, key=lambda v: (v.order, v.sample, v.attempt))],
        }
        if job.error is not None:
            return columns
        if self.mode == "pairwise":
            result = aggregate_pairwise(job.verdicts)
            columns.update(
                score_a=result.mean_a,
                score_b=result.mean_b,
                votes_a=result.votes_a,
                votes_b=result.votes_b,
                votes_tie=result.ties,
                order_agreement=result.order_agreement,
                winner=result.winner,
                margin=result.margin,
            )
        else:
            single = aggregate_single(job.verdicts)
            columns["score"] = single.mean_score
            result = single  # type: ignore[assignment]
        if result.any_unparsed:
            slots = ", ".join(f"{o}:{s}" for o, s in result.unparsed_slots)
            job.error = describe_exception(
                UnparsedVerdict(f"[{REASON_UNPARSED}] no parsable verdict after {self.judge.max_retries + 1} attempts (slots {slots})")
            )
        return columns
