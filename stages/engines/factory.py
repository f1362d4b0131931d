"""Build the configured engine of one judge replica, inside its actor (never on the driver)."""
from __future__ import annotations

from dataclasses import dataclass

from stages.engines.api import Engine
from stages.engines.config import EngineConfig, SamplingConfig
from stages.engines.simulated import VerdictScript


@dataclass
class EngineFactory:
    engine: EngineConfig
    sampling: SamplingConfig
    structured: bool  # structured output on: each request's `guided_regex` constrains its verdict
    simulated_verdict: VerdictScript  # what the simulated backend answers: the format's own shape
    tensor_parallel_size: int = 1
    cpu_threads: int | None = None

    def __call__(self) -> Engine:
        if self.engine.backend == "simulated":
            from stages.engines.simulated import LatencyModel, SimulatedEngine

            sim = self.engine.simulation
            latency = LatencyModel(seconds_per_token=sim.seconds_per_token, median_tokens=sim.median_tokens,
                                   sigma=sim.sigma, max_tokens=self.sampling.max_tokens)
            return SimulatedEngine(self.simulated_verdict, latency=latency, concurrency=sim.concurrency)
        from stages.engines.vllm_engine import VllmEngine

        return VllmEngine(
            self.engine,
            self.sampling,
            structured=self.structured,
            tensor_parallel_size=self.tensor_parallel_size,
            cpu_threads=self.cpu_threads,
        )
