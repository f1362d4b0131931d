"""The `labels` section: where the human labels `flexcurate evaluate` scores the judge against are,
and known benchmarks' label columns."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from stages.config import ConfigSection

# A known benchmark's label column (and the column that groups its rows for per-group accuracy).
LABEL_PRESETS: dict[str, dict[str, str]] = {
    # MMInstruction/VL-RewardBench: `human_ranking` [0, 1] = the first response is preferred.
    "vl_rewardbench": {"column": "human_ranking", "group_column": "query_source"},
    # MLLM-as-a-Judge pairs: `human` is A, B or C (a tie).
    "mllm_judge": {"column": "human"},
    # TIGER-Lab/GenAI-Bench: `vote_type` is leftvote, rightvote, tievote or bothbad_vote.
    "genai_bench": {"column": "vote_type"},
    "genai_bench_edition": {"column": "vote_type"},
}
DEFAULT_COLUMN = "label"


class LabelsConfig(ConfigSection):
    """The `labels` section: human labels `flexcurate evaluate` scores the judge against."""

    paths: list[str] = Field(
        default_factory=list,
        description="Parquet shards holding the labels, joined to the run's rows on id (files, directories "
        "or globs, local or URIs). Usually given with --labels; empty: the run's own input shards.",
    )
    preset: Literal[tuple(LABEL_PRESETS)] | None = Field(  # type: ignore[valid-type]
        default=None,
        description="A benchmark's label column and groups. None: input.preset's, when it names one.",
    )
    column: Optional[str] = Field(
        default=None,
        description="The label column (pairwise: a / b / tie, A / B / C, or a ranking of the two answers; single: "
        "a number). Default: the preset's, else `label`.",
    )
    group_column: Optional[str] = Field(
        default=None, description="A column grouping rows for per-group accuracy (default: the preset's)."
    )

    def resolved(self, input_preset: str | None) -> tuple[str, str | None]:
        """(label column, group column) after presets."""
        preset = LABEL_PRESETS.get(self.preset or input_preset or "", {})
        return self.column or preset.get("column", DEFAULT_COLUMN), self.group_column or preset.get("group_column")
