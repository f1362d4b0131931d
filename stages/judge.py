"""Judge each row on a replica of the Flex-Judge engine: fan out its requests, gather them back.

The judging format (stages/formats/) says what a row asks: per pending row, its answer orders x
`samples` slots, each a prompt of the format; a verdict that does not parse is asked again with a
new seed, up to `max_retries` times. The replica holds several batches, and their requests reach
the engine through one `SlotFeeder` (stages/engines/feeder.py) as the engine's slots free: a
batch's requests in row order, a row's requests adjacent (so its shared prefix is computed once),
a retry ahead of everything fresh, submitted the moment its unparsed verdict returns. Seeds derive
from (base seed, row id, slot, attempt): a re-run asks exactly the same questions. The format
aggregates a row's verdicts into its result columns.

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
from typing import Any, Callable, Literal, NamedTuple

import pyarrow as pa
from pydantic import Field, create_model

from stages.base import Settlement, Stage, with_columns
from stages.config import ConfigSection
from stages.decode import decoded_columns, decoded_media
from stages.engines.api import Completion, Engine, JudgeRequest, RequestRejected
from stages.engines.config import EngineConfig, SamplingConfig
from stages.engines.factory import EngineFactory
from stages.engines.feeder import SlotFeeder
from stages.formats.base import JUDGMENT_TYPE, JudgingFormat
from stages.formats.registry import config_sections
from stages.formats.verdicts import Verdict

JUDGE_COLUMNS: dict[str, pa.DataType] = {"judge_model": pa.string(), "judgments": pa.list_(JUDGMENT_TYPE)}


class JudgeSettings(ConfigSection):
    """The judge's own settings; JudgeConfig adds every judging format's request options."""

    engine: EngineConfig = Field(default_factory=EngineConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    replicas: int = Field(default=1, ge=1, description="Fixed number of judge actors (engine replicas).")
    tensor_parallel_size: int = Field(default=1, ge=1, description="GPUs per replica.")
    batch_size: int = Field(default=32, ge=1, description="Rows per batch handed to a replica.")
    batches_in_flight: int | None = Field(
        default=None,
        ge=1,
        description="Batches a replica holds at once, so its engine never waits for the next. None: enough "
        "that the replica holds about 8x engine.max_num_seqs requests (a batch returns when its slowest "
        "verdict does, so most of a batch's slots sit idle while its long tail decodes).",
    )
    cpus_per_replica: float = Field(default=1.0, gt=0, description="CPUs reserved per judge actor.")
    resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources per judge actor, e.g. {judge_node: 1} to pin the pool to labelled nodes.",
    )
    swap_order: bool = Field(
        default=True,
        description="Judge each row in a second order too, mapped back (position-bias remedy): pairwise swaps the "
        "answers, ranking reverses them, choice swaps left and right; single and MOS have one order.",
    )
    samples: int = Field(default=1, ge=1, description="Verdicts per order; scores are averaged and votes counted.")
    aggregate: Literal["mean", "vote"] = Field(
        default="mean",
        description="How a row's verdicts decide it: their mean scores, or a majority vote of the verdicts' winners "
        "(ranking: best answers; choice: options; single and MOS: whole scores), a tie when the most votes are "
        "shared; the paper's self-consistency, GenAI-Bench 45.2 -> 49.3 at samples: 7. Pairwise and ranking "
        "scores and margins stay means.",
    )
    max_retries: int = Field(default=2, ge=0, description="Re-asks (new seed) of a verdict that did not parse.")
    quarantine_after_crashes: int = Field(
        default=2,
        ge=1,
        description="A row in flight during this many replica deaths (the last time alone) goes to errors/ "
        "as replica_crash instead of being retried forever.",
    )
    replica_down_timeout_s: float = Field(
        default=900.0,
        gt=0,
        description="A replica down this long with rows in flight (its node lost, and no node to restart it on) "
        "stops the run (exit 3; the same command resumes it). Ray restarts replicas on any node that can host "
        "them: leave time for an autoscaler to bring a replacement GPU node up.",
    )
    structured_output: bool | None = Field(
        default=None, description="Constrain text to the verdict regex; None: on for the CPU engine only."
    )
    reasoning_max_chars: int = Field(
        default=4000, gt=0, description="With structured output, most characters allowed before </think>."
    )
    prefill_think: bool = Field(default=False, description="Start the assistant turn with '<think>\\n' as in training.")

    def gpus_per_replica(self) -> int:
        """GPUs one judge actor asks for: tensor parallel x 1 on a CUDA vLLM engine, none otherwise."""
        on_gpu = self.engine.device == "cuda" and self.engine.backend == "vllm"
        return self.tensor_parallel_size if on_gpu else 0

    def engine_threads(self) -> int:
        """Torch threads of a replica's CPU engine: engine.cpu_threads, else the actor's whole CPUs."""
        return self.engine.cpu_threads or max(1, int(self.cpus_per_replica))

    def structured(self) -> bool:
        if self.structured_output is None:
            return self.engine.device == "cpu"
        return self.structured_output


# The `judge` section: the judge's own settings and every judging format's request options.
JudgeConfig = create_model(
    "JudgeConfig", __base__=(*config_sections("options"), JudgeSettings), __doc__="The judge section."
)


def request_seed(base: int, row_id: str, order: str, sample: int, attempt: int) -> int:
    digest = hashlib.blake2b(f"{base}:{row_id}:{order}:{sample}:{attempt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % (2**31 - 1)


@dataclass
class _RowJob:
    index: int
    row_id: str
    content: dict[str, Any]  # the row's own columns (no decoded media): what its verdicts are read against
    requests: dict[str, tuple[str, dict[str, Any]]]  # order -> (prompt, media)
    regex: str | None  # structured output's verdict shape for this row
    verdicts: list[Verdict] = field(default_factory=list)
    error: Exception | None = None


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

    def __init__(self, fmt: JudgingFormat, judge: JudgeConfig, engine_factory: Callable[[], Engine] | None = None) -> None:
        self.fmt = fmt
        self.judge = judge
        self.family = judge.engine.resolved_family()
        self.orders = fmt.orders(judge.swap_order)
        self.engine_factory = engine_factory or EngineFactory(
            judge.engine,
            judge.sampling,
            structured=judge.structured(),
            simulated_verdict=fmt.simulated_verdict,
            tensor_parallel_size=judge.tensor_parallel_size,
            cpu_threads=judge.engine_threads(),
        )
        self.decoded = decoded_columns(fmt.media)
        self.needs = ("id", *fmt.columns(), *self.decoded)
        self.adds = {**fmt.result_columns, **JUDGE_COLUMNS}
        self.batch_size = judge.batch_size
        self.pool_size = judge.replicas
        self.batches_in_flight = judge.batches_in_flight or auto_batches_in_flight(
            judge.engine.max_num_seqs, judge.batch_size, len(self.orders) * judge.samples
        )
        self.quarantine_after = judge.quarantine_after_crashes
        self.num_cpus = judge.cpus_per_replica
        self.num_gpus = judge.gpus_per_replica()
        self.engine: SlotFeeder | None = None  # shared by the replica's batches in flight

    def ray_remote_args(self) -> dict[str, Any]:
        return {"resources": dict(self.judge.resources)} if self.judge.resources else {}

    def setup(self) -> None:
        if self.engine is None:
            self.engine = SlotFeeder(self.engine_factory())

    def close(self) -> None:
        if self.engine is not None:
            self.engine.shutdown()
            self.engine = None

    def process(self, table: pa.Table) -> pa.Table:
        settlement = Settlement(table)
        rows = table.select([c for c in self.needs if c in table.column_names]).to_pylist()
        jobs: list[_RowJob] = []
        for index in settlement.pending():
            try:
                jobs.append(self._job(index, rows[index]))
            except Exception as exc:  # a row whose prompt cannot be built is data, not a crash
                settlement.fail(index, self.name, exc)
        self._run(jobs)
        out: dict[str, list[Any]] = {column: [None] * table.num_rows for column in self.adds}
        for job in jobs:
            for column, value in self._row_columns(job).items():
                out[column][job.index] = value
            if job.error is not None:
                settlement.fail(job.index, self.name, job.error)
        # Decoded pixels and samples are the bulk of a row and nothing after the judge reads them:
        # dropping them here keeps label/write batches small and the object store free.
        decoded = [c for c in self.decoded if c in table.column_names]
        return settlement.apply(with_columns(table.drop_columns(decoded), out, self.adds))

    def _job(self, index: int, row: dict[str, Any]) -> _RowJob:
        media = decoded_media(row, self.fmt.media)
        content = {column: row.get(column) for column in self.fmt.columns()}  # what a verdict is read against
        requests = {
            order: self.fmt.request(row, order, media, self.family, prefill_think=self.judge.prefill_think)
            for order in self.orders
        }
        regex = (
            self.fmt.verdict_regex(
                content, reasoning_max_chars=self.judge.reasoning_max_chars, prefill_think=self.judge.prefill_think
            )
            if self.judge.structured()
            else None
        )
        return _RowJob(index=index, row_id=row["id"], content=content, requests=requests, regex=regex)

    def _request(self, job: _RowJob, order: str, sample: int, attempt: int) -> tuple[JudgeRequest, _Slot]:
        seed = request_seed(self.judge.sampling.seed, job.row_id, order, sample, attempt)
        prompt, media = job.requests[order]
        request = JudgeRequest(
            request_id=f"{job.row_id}:{order}:{sample}:{attempt}:{uuid.uuid4().hex[:8]}",
            prompt=prompt,
            multi_modal_data=media,
            seed=seed,
            guided_regex=job.regex,
            group=job.row_id,
        )
        return request, _Slot(job, order, sample, attempt, seed)

    def _run(self, jobs: list[_RowJob]) -> None:
        self.setup()
        assert self.engine is not None
        first = [
            self._request(job, order, sample, 0)
            for job in jobs
            for order in job.requests
            for sample in range(self.judge.samples)
        ]
        futures = self.engine.submit_all(request for request, _ in first)
        slots: dict[Future[Completion], _Slot] = dict(zip(futures, (slot for _, slot in first)))
        while slots:
            done, _ = wait(slots, return_when=FIRST_COMPLETED)
            for future in done:
                job, order, sample, attempt, seed = slots.pop(future)
                try:
                    completion = future.result()
                except RequestRejected as exc:
                    job.error = job.error or exc
                    continue
                verdict = self.fmt.read(
                    completion.text,
                    row=job.content,
                    order=order,
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
                    request, slot = self._request(job, order, sample, attempt + 1)
                    slots[self.engine.submit(request, retry=True)] = slot

    def _row_columns(self, job: _RowJob) -> dict[str, Any]:
        columns: dict[str, Any] = {
            "judge_model": self.judge.engine.model,
            "judgments": [v.to_dict() for v in sorted(job.verdicts, key=lambda v: (v.order, v.sample, v.attempt))],
        }
        if job.error is not None:
            return columns
        result = self.fmt.aggregate(job.verdicts)
        columns.update(result.columns())
        job.error = self.fmt.unparsed_error(result, attempts=self.judge.max_retries + 1)
        return columns
