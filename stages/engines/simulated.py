"""An engine with the real interface and no model: scripted verdicts, simulated decode time.

Dry runs (`judge.engine.backend: simulated`) answer with the judging format's own seeded verdicts;
tests script it to pin down judging, retries and labelling; the benchmarks use it to measure how
well the pipeline keeps an engine fed when verdicts take a long-tailed time to decode (as on a
GPU), without a GPU. It serves at most `concurrency` requests at once, like an engine's batch slots.
"""
from __future__ import annotations

import random
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

from stages.engines.api import Completion, EngineDead, JudgeRequest, RequestRejected

VerdictScript = Callable[[JudgeRequest], str]


@dataclass(frozen=True)
class LatencyModel:
    """Decode time of one request: prefill plus a lognormal number of output tokens."""

    seconds_per_token: float = 0.0
    median_tokens: int = 300
    sigma: float = 1.0
    max_tokens: int = 4096
    prefill_seconds: float = 0.0

    def sample(self, rng: random.Random) -> tuple[float, int]:
        tokens = min(self.max_tokens, max(1, int(rng.lognormvariate(0.0, self.sigma) * self.median_tokens)))
        return self.seconds_for(tokens), tokens

    def seconds_for(self, tokens: int) -> float:
        """Decode time of a request that produced `tokens` output tokens."""
        return self.prefill_seconds + tokens * self.seconds_per_token


class SimulatedEngine:
    def __init__(
        self,
        script: VerdictScript,
        *,
        latency: LatencyModel = LatencyModel(),
        concurrency: int = 64,
        max_prompt_chars: int | None = None,
        seed: int = 0,
    ) -> None:
        self.script = script
        self.latency = latency
        self.slots = concurrency
        self.prefetch = 0
        self.max_prompt_chars = max_prompt_chars
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="sim-engine")
        self._seed = seed
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._dead = False
        self.busy_seconds = 0.0
        self.active = 0
        self._busy_since: float | None = None

    def submit(self, request: JudgeRequest) -> Future[Completion]:
        if self._dead:
            failed: Future[Completion] = Future()
            failed.set_exception(EngineDead("engine was shut down"))
            return failed
        if self.max_prompt_chars is not None and len(request.prompt) > self.max_prompt_chars:
            rejected: Future[Completion] = Future()
            rejected.set_exception(RequestRejected(f"prompt of {len(request.prompt)} chars exceeds {self.max_prompt_chars}"))
            return rejected
        if request.seed is not None:  # a seeded request decodes for the same time on every run
            seconds, tokens = self.latency.sample(random.Random(f"{self._seed}:{request.seed}"))
        else:
            with self._lock:
                seconds, tokens = self.latency.sample(self._rng)
        return self._pool.submit(self._serve, request, seconds, tokens)

    def _serve(self, request: JudgeRequest, seconds: float, tokens: int) -> Completion:
        self._mark(+1)
        try:
            if seconds:
                time.sleep(seconds)
            text = self.script(request)
        finally:
            self._mark(-1)
        return Completion(text=text, prompt_tokens=len(request.prompt) // 4, output_tokens=tokens, finish_reason="stop")

    def _mark(self, delta: int) -> None:
        """Track time with at least one request in service (the engine's busy time)."""
        with self._lock:
            now = time.perf_counter()
            if self.active == 0 and delta > 0:
                self._busy_since = now
            self.active += delta
            if self.active == 0 and self._busy_since is not None:
                self.busy_seconds += now - self._busy_since
                self._busy_since = None

    def shutdown(self) -> None:
        self._dead = True
        self._pool.shutdown(wait=False, cancel_futures=True)
