"""Every judging format the pipeline offers, by the run config's `mode` name."""
from __future__ import annotations

from typing import Any, Literal

from stages.formats.base import JudgingFormat
from stages.formats.choice import ChoiceFormat
from stages.formats.mos import MosFormat
from stages.formats.pairwise import PairwiseFormat
from stages.formats.ranking import RankingFormat
from stages.formats.single import SingleFormat

FORMATS: dict[str, type[JudgingFormat]] = {
    fmt.mode: fmt for fmt in (PairwiseFormat, SingleFormat, RankingFormat, ChoiceFormat, MosFormat)
}
Mode = Literal[tuple(FORMATS)]  # type: ignore[valid-type]  # the config's `mode` values


def judging_format(mode: str, settings: Any = None) -> JudgingFormat:
    """The format of `mode`, with the run's `judge` section (its aggregate and format options)."""
    if mode not in FORMATS:
        raise ValueError(f"unknown judging mode {mode!r}; expected one of {tuple(FORMATS)}")
    return FORMATS[mode](settings)


def config_sections(kind: str) -> tuple[type, ...]:
    """Every format's `rules` (or `options`) section, those another already extends left out, in
    the order a composed config lists them last-to-first (pydantic lists the last base's fields first)."""
    found = [getattr(fmt, kind) for fmt in FORMATS.values() if getattr(fmt, kind) is not None]
    unique = list(dict.fromkeys(found))
    kept = [c for c in unique if not any(other is not c and issubclass(other, c) for other in unique)]
    return tuple(reversed(kept))
