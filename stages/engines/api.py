"""What the judge stage needs from an inference engine, whatever runs behind it.

`VllmEngine` (vllm_engine.py) is the production implementation; `SimulatedEngine` (simulated.py)
answers without a model, for dry runs, tests and benchmarks.
"""
from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class JudgeRequest:
    request_id: str
    prompt: str  # the full ChatML string, media placeholders included
    # "image" -> uint8 (H, W, 3); "audio" -> (float32 samples, sample rate); "video" -> (uint8 frames
    # (T, H, W, 3), {"fps": sampling rate}); see vllm_engine.py for every accepted form.
    multi_modal_data: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    guided_regex: str | None = None  # structured output: the verdict's shape (an engine without it ignores it)
    # Requests that share their media (a row's answer orders and samples): an engine that processes
    # media apart (stages/engines/render.py) processes them in one place, once.
    group: str | None = None


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    output_tokens: int
    finish_reason: str | None
    cached_prompt_tokens: int = 0  # prompt tokens served from the engine's prefix cache, not computed


class RequestRejected(ValueError):
    """The engine refused one request before generating (e.g. prompt longer than max_model_len).

    Only that request's row fails; the engine goes on.
    """


class EngineDead(RuntimeError):
    """The engine itself failed; every in-flight request is lost and the replica must not go on."""


class Engine(Protocol):
    slots: int  # requests it serves at once (vLLM's max_num_seqs); more wait in its queue
    # Requests it should hold beyond its slots because it prepares them before they can enter (its
    # render processes): 0 for an engine that takes a request as it is.
    prefetch: int

    def submit(self, request: JudgeRequest) -> "Future[Completion]":
        """Queue one request; the future resolves with its completion or raises RequestRejected/EngineDead."""
        ...

    def shutdown(self) -> None: ...
