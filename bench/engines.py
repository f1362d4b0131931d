"""Engine factories the benchmarks hand to `run_curation`; Ray workers import them from here.

`MeteredFactory` wraps any engine factory (the pipeline's own `EngineFactory`, or `SimFactory`
for a `SimulatedEngine`) in a `MeteredEngine`, which counts requests, prompt tokens (and those
served from the prefix cache) and output tokens, records the engine's active window (first
request submitted .. last one completed), its slot occupancy, and the same up to the last request
submitted (the feeding span: after it the replica has nothing left to give, only verdict tails to
wait for), each request's output tokens in the order it was submitted (from which the feeding
benchmark replays the very same work on a perfectly fed replica), and writes those figures to a JSON file in `stats_dir`. It sits under the judge's
`SlotFeeder`, so it sees what enters the engine. The engine lives in the judge actor, so the file
is how the numbers reach the driver: it is written, before the caller sees the result, every
time the engine runs out of work (so always after the last completion) and on shutdown.
"""
from __future__ import annotations

import json
import os
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from stages.engines.api import Completion, Engine, JudgeRequest
from stages.engines.simulated import LatencyModel, SimulatedEngine
from stages.formats.pairwise import PairwiseFormat


class MeteredEngine:
    def __init__(self, inner: Engine, stats_path: Path, startup_s: float, timeline: bool = False) -> None:
        self.inner = inner
        self.slots = inner.slots
        self.prefetch = inner.prefetch
        self.stats_path = stats_path
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self.stats: dict[str, Any] = {
            "pid": os.getpid(), "startup_s": startup_s, "slots": self.slots, "submitted": 0, "completed": 0,
            "failed": 0, "output_tokens": 0, "prompt_tokens": 0, "cached_prompt_tokens": 0, "first_submit": None,
            "last_submit": None, "last_done": None, "slot_seconds": 0.0, "inflight_seconds": 0.0,
            "slot_seconds_to_last_submit": 0.0, "max_in_flight": 0,
        }
        self._output_tokens: list[int | None] = []  # per request, in submission order; None until it completes
        self._in_flight = 0
        self._since = time.time()
        self.timeline: list[tuple[float, int]] | None = [] if timeline else None  # (time, requests held)

    def _advance(self, now: float) -> None:
        """Integrate requests in flight, and min(in flight, slots): the slot-seconds with work."""
        self.stats["slot_seconds"] += min(self._in_flight, self.slots) * (now - self._since)
        self.stats["inflight_seconds"] += self._in_flight * (now - self._since)
        self._since = now
        if self.timeline is not None:
            self.timeline.append((now, self._in_flight))

    def submit(self, request: JudgeRequest) -> "Future[Completion]":
        outer: Future[Completion] = Future()
        with self._lock:
            now = time.time()
            self._advance(now)
            self._in_flight += 1
            self.stats["max_in_flight"] = max(self.stats["max_in_flight"], self._in_flight)
            index = self.stats["submitted"]
            self.stats["submitted"] += 1
            self._output_tokens.append(None)
            if self.stats["first_submit"] is None:
                self.stats["first_submit"] = now
            self.stats["last_submit"] = now
            self.stats["slot_seconds_to_last_submit"] = self.stats["slot_seconds"]
        self.inner.submit(request).add_done_callback(lambda inner: self._done(inner, outer, index))
        return outer

    def _done(self, inner: "Future[Completion]", outer: "Future[Completion]", index: int) -> None:
        try:
            error = inner.exception()
            with self._lock:
                now = time.time()
                self._advance(now)
                self._in_flight -= 1
                self.stats["last_done"] = now
                if error is None:
                    completion = inner.result()
                    self.stats["completed"] += 1
                    self.stats["output_tokens"] += completion.output_tokens
                    self._output_tokens[index] = completion.output_tokens
                    self.stats["prompt_tokens"] += completion.prompt_tokens
                    self.stats["cached_prompt_tokens"] += completion.cached_prompt_tokens
                else:
                    self.stats["failed"] += 1
                idle = self._in_flight == 0
            if idle:
                self.write()  # before the caller learns of the result: the driver reads it after the run
        finally:  # whatever happened above, the caller must get its result
            if inner.exception() is None:
                outer.set_result(inner.result())
            else:
                outer.set_exception(inner.exception())

    def write(self) -> None:
        with self._write_lock:  # completions resolve on many threads; one writer at a time
            with self._lock:
                stats = dict(self.stats)
                stats["request_output_tokens"] = list(self._output_tokens)
                busy = getattr(self.inner, "busy_seconds", None)  # SimulatedEngine's time with work in service
                if busy is not None:
                    stats["busy_seconds"] = busy
                if self.timeline is not None:
                    stats["timeline"] = list(self.timeline)
            temporary = self.stats_path.with_suffix(".tmp")
            temporary.write_text(json.dumps(stats))
            temporary.replace(self.stats_path)

    def shutdown(self) -> None:
        self.inner.shutdown()
        self.write()


@dataclass
class MeteredFactory:
    """Builds `inner()` in the judge actor, optionally runs `warmup` through it (part of start-up,
    as the raw baseline's warm-up call is), and returns it metered."""

    inner: Callable[[], Engine]
    stats_dir: str
    warmup: JudgeRequest | None = None
    timeline: bool = False

    def __call__(self) -> MeteredEngine:
        started = time.time()
        engine = self.inner()
        if self.warmup is not None:
            engine.submit(self.warmup).result()
        path = Path(self.stats_dir) / f"engine-{os.getpid()}-{uuid.uuid4().hex[:6]}.json"
        metered = MeteredEngine(engine, path, startup_s=time.time() - started, timeline=self.timeline)
        metered.write()
        return metered


@dataclass
class SimFactory:
    """A SimulatedEngine with `concurrency` slots and per-request latency from `latency`, answering
    seeded pairwise verdicts (the benchmarks' mode)."""

    latency: LatencyModel
    concurrency: int = 64

    def __call__(self) -> SimulatedEngine:
        return SimulatedEngine(PairwiseFormat().simulated_verdict, latency=self.latency, concurrency=self.concurrency,
                               seed=os.getpid())


def read_stats(stats_dir: Path) -> dict[str, Any]:
    """The metered engines' figures summed over replicas; `window_s` spans all of them."""
    parts = [json.loads(p.read_text()) for p in sorted(stats_dir.glob("engine-*.json"))]
    if not parts:
        raise RuntimeError(f"no engine stats in {stats_dir}: did the judge actor start?")
    total: dict[str, Any] = {"replicas": len(parts)}
    for key in ("submitted", "completed", "failed", "output_tokens", "prompt_tokens", "cached_prompt_tokens",
                "slot_seconds", "busy_seconds", "inflight_seconds"):
        if any(key in p for p in parts):
            total[key] = sum(p.get(key, 0) for p in parts)
    starts = [p["first_submit"] for p in parts if p["first_submit"]]
    ends = [p["last_done"] for p in parts if p["last_done"]]
    total["first_submit"], total["last_done"] = min(starts), max(ends)
    total["window_s"] = max(ends) - min(starts)
    total["startup_s"] = max(p["startup_s"] for p in parts)
    total["max_in_flight"] = max(p["max_in_flight"] for p in parts)
    total["per_replica"] = parts
    return total
