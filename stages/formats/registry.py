"""Every judging format the pipeline offers, by the run config's `mode` name."""
from __future__ import annotations

from typing import Literal

from stages.formats.base import JudgingFormat
from stages.formats.pairwise import PairwiseFormat
from stages.formats.single import SingleFormat

FORMATS: dict[str, type[JudgingFormat]] = {fmt.mode: fmt for fmt in (PairwiseFormat, SingleFormat)}
Mode = Literal[tuple(FORMATS)]  # type: ignore[valid-type]  # the config's `mode` values


def judging_format(mode: str) -> JudgingFormat:
    if mode not in FORMATS:
        raise ValueError(f"unknown judging mode {mode!r}; expected one of {tuple(FORMATS)}")
    return FORMATS[mode]()
