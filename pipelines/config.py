"""The run configuration, composed from the sections the stages, formats and engines own.

Each part of the pipeline defines the pydantic model of its own settings next to its code (the
judge's in stages/judge.py, the media bounds in stages/media/config.py, each judging format's
label rules in its module, ...); this module composes them into `RunConfig`, the YAML users write
(`jobs/configs/*.yaml`) plus dotted `--set key=value` overrides. It is validated on the driver
before any cluster resource is requested; every field has a description and the default a user
would choose.
"""
from __future__ import annotations

import copy
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, create_model, model_validator

from pipelines.labels import LabelsConfig
from stages.config import ConfigSection
from stages.engines.families import modalities_of
from stages.formats.base import JudgingFormat
from stages.formats.registry import FORMATS, Mode, config_sections, judging_format
from stages.judge import JudgeConfig
from stages.media.config import MediaConfig
from stages.media.fetch import MediaSourceConfig
from stages.normalize import NormalizeConfig
from stages.write import OutputConfig


class ConfigError(ValueError):
    """A config that cannot run; the message names the offending field."""


class InputConfig(MediaSourceConfig, NormalizeConfig):  # fields: the last base's first
    """The `input` section: the shards, and how their columns and media are read."""

    paths: list[str] = Field(
        default_factory=list,
        description="Parquet shards: files, directories or globs, local or any pyarrow filesystem URI "
        "(s3://, gs://). Usually given with --input.",
    )
    skip_bad_shards: bool = Field(
        default=False, description="List and skip unreadable or mis-shaped shards instead of failing."
    )
    directory_columns: bool = Field(
        default=True,
        description="Read key=value directories below the inputs (Spark's and Hive's partitionBy layout, e.g. "
        "source=web/part-0.parquet) as string columns of the rows under them, as Spark does. A key that a "
        "shard also holds as a column is read from no directory: the shards' own values are kept (logged).",
    )


# The `filter` section: every judging format's label rules side by side (each field documented by
# its format); a run applies those of its mode.
FilterConfig = create_model("FilterConfig", __base__=config_sections("rules"), __doc__="Label rules of every judging format.")


class IncrementalConfig(ConfigSection):
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


class RunConfig(ConfigSection):
    mode: Mode = Field(  # type: ignore[valid-type]
        default="pairwise",
        description="The judging format: " + "; ".join(f"{m}: {f.summary}" for m, f in FORMATS.items()) + ".",
    )
    input: InputConfig = Field(default_factory=InputConfig)
    media: MediaConfig = Field(default_factory=MediaConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    filter: FilterConfig = Field(default_factory=FilterConfig)  # type: ignore[valid-type]
    output: OutputConfig = Field(default_factory=OutputConfig)
    labels: LabelsConfig = Field(default_factory=LabelsConfig)
    incremental: IncrementalConfig = Field(default_factory=IncrementalConfig)
    decode_batch_size: int | None = Field(
        default=None,
        ge=1,
        description="Rows per block read from the shards and per CPU decode task; default judge.batch_size. "
        "Ray's costs are per block (tasks, object-store entries, the driver's records of each), so larger "
        "blocks cost less per row; but Ray Data hands a judge replica whole blocks, and a block larger than "
        "judge.batch_size becomes a task of several batches run one after another: keep it a divisor of "
        "judge.batch_size.",
    )
    object_store_budget_mib: Annotated[int, Field(ge=64)] | Literal["auto", "ray"] = Field(
        default="auto",
        description="Object-store memory the run's plan may fill ahead of and inside the judge, MiB. auto: twice "
        "what the judge replicas hold (replicas x batches in flight x batch size rows, at the decoded size of a few "
        "sampled rows), at least 512; ray: Ray Data's own budget, half the object store, which the read-ahead fills "
        "in a long run. Ray Data caps any budget at half the store.",
    )
    max_error_fraction: float = Field(
        default=0.05, ge=0, le=1, description="A run whose errors exceed this fraction of input rows fails."
    )

    def judging_format(self) -> JudgingFormat:
        return judging_format(self.mode, self.judge)

    @model_validator(mode="after")
    def _coherent(self) -> "RunConfig":
        fmt = self.judging_format()
        family = self.judge.engine.resolved_family()
        untaken = sorted(fmt.required_modalities - set(modalities_of(family)))
        if untaken:
            raise ValueError(
                f"mode {self.mode} judges {', '.join(untaken)}, which judge.engine.model {self.judge.engine.model} "
                f"(family {family}) cannot take; use Flex-Omni-7B"
            )
        self._engine_takes_the_media(fmt)
        if self.decode_batch_size is None:
            object.__setattr__(self, "decode_batch_size", self.judge.batch_size)
        if self.judge.swap_order and len(fmt.orders(swap_order=True)) == 1:
            # A format with one answer order has nothing to swap; keep the flag meaningful.
            object.__setattr__(self.judge, "swap_order", False)
        return self

    def _engine_takes_the_media(self, fmt: JudgingFormat) -> None:
        """The engine reserves memory for the media a request of this mode shows, and only for those
        (vLLM sizes its encoder cache by these limits): the mode's counts unless the user set limits,
        which then must hold them."""
        engine = self.judge.engine
        taken = set(modalities_of(engine.resolved_family()))
        needed = {modality: n for modality, n in fmt.media_per_prompt().items() if modality in taken}
        if "limit_mm_per_prompt" not in engine.model_fields_set:
            object.__setattr__(engine, "limit_mm_per_prompt", needed)
            return
        short = {m: n for m, n in needed.items() if engine.limit_mm_per_prompt.get(m, 0) < n}
        if short:
            raise ValueError(
                f"judge.engine.limit_mm_per_prompt {dict(engine.limit_mm_per_prompt)}: mode {self.mode} shows up to "
                f"{short} per request; raise it or leave it unset"
            )


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


def _merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overlay.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    base: dict[str, Any] | None = None,
    **top_level: Any,
) -> RunConfig:
    """Load YAML over `base` (a config dump, e.g. a finished run's), apply `--set` overrides and keyword
    values (dotted keys), validate.

    Raises ConfigError naming every invalid field.
    """
    tree: dict[str, Any] = copy.deepcopy(base or {})
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config {path} must be a mapping, got {type(loaded).__name__}")
        tree = _merge(tree, loaded or {})
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
