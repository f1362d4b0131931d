"""Speech quality: one audio clip per row scored on a mean opinion score (MOS) scale, 1.0-5.0.

The prompt is fixed (no question, no answer text): `audio_mos_nisqa_somos` (the default; NISQA and
SOMOS) or `audio_mos_bvcc` (`judge.mos_prompt`), with the clip in place of the answer; the verdict one
`<answer>` score to the first decimal. Flex-Omni only: Flex-VL hears no audio (a config error).

Decision rules, applied in this order:
  1. errors  `unparsed_verdict`  any slot unparsed after retries, or no slot at all.
  2. dropped `mos_below_min`     mean score < filter.min_mos (1e-9 float tolerance).
  otherwise kept. With `judge.aggregate: vote` the row's score is the whole score most samples gave.
Evaluation against a human MOS column: Pearson (LCC), Spearman (SRCC), Kendall's tau and MSE.
"""
from __future__ import annotations

import random
from typing import Any, Literal, Mapping, Sequence

import pyarrow as pa
from pydantic import Field

from stages.config import ConfigSection
from stages.engines.api import JudgeRequest
from stages.formats.base import ThresholdRule
from stages.formats.prompts import chat_prompt, load_prompts, system_prompt_text
from stages.formats.single import SingleFormat
from stages.rows import RowRejected

REASON_MOS = "mos_below_min"
# prompts.json user templates, verbatim (the clip's placeholder is in the text).
USER_TEMPLATES = {"audio_mos_nisqa_somos": "audio_mos_nisqa_somos (Omni)", "audio_mos_bvcc": "audio_mos_bvcc (Omni)"}


class MosOptions(ConfigSection):
    mos_prompt: Literal[tuple(USER_TEMPLATES)] = Field(  # type: ignore[valid-type]
        default="audio_mos_nisqa_somos",
        description="MOS: the speech-quality prompt, audio_mos_nisqa_somos (NISQA, SOMOS) or audio_mos_bvcc (BVCC).",
    )


class MosRules(ConfigSection):
    min_mos: float = Field(default=3.0, ge=0, description="MOS: mean score (1.0-5.0) to keep a clip.")


class MosFormat(SingleFormat):
    mode = "mos"
    summary = "one speech clip -> a mean opinion score"
    texts = ()
    answer_columns = ()
    media = {"audio": "audio"}
    required_modalities = frozenset({"audio"})
    scale = (1.0, 5.0)
    score_pattern = "[1-4]\\.[0-9]|5\\.0"  # the first decimal, as the prompts ask
    rules = MosRules
    options = MosOptions
    drop_reasons = {REASON_MOS: "MOS mode: mean score below `filter.min_mos`"}
    result_columns = {"mos": pa.float64()}
    histograms = {"mos": 0.5}
    threshold_rule = ThresholdRule("min_mos", "mos", REASON_MOS)
    headline_metrics = ("pearson", "spearman")  # NISQA's LCC and SRCC

    def required_columns(self, mapping: Mapping[str, str], present: Sequence[str]) -> list[str]:
        return [mapping.get("audio", "audio")]

    def check_row(self, row: Mapping[str, Any]) -> None:
        if row.get("audio") is None:
            raise RowRejected("missing_media", "a MOS row needs its audio clip")

    def user_message(self, question: str, answers: Sequence[str], media: Sequence[str], family: str) -> str:
        """The prompt's user turn, verbatim: the clip's placeholder is part of it."""
        return load_prompts()["user_templates"][USER_TEMPLATES[self.option("mos_prompt")]]

    def system_prompt(self, row: Mapping[str, Any]) -> str:
        return system_prompt_text(self.option("mos_prompt"))

    def request(
        self, row: Mapping[str, Any], order: str, media: Mapping[str, Any], family: str, *, prefill_think: bool
    ) -> tuple[str, dict[str, Any]]:
        user = self.user_message("", [], ["audio"], family)
        return chat_prompt(self.system_prompt(row), user, prefill_think=prefill_think), {"audio": media["audio"]}

    def simulated_verdict(self, request: JudgeRequest) -> str:
        """A MOS to the first decimal drawn from the request's seed."""
        score = random.Random(request.seed).uniform(*self.scale)
        return f"<think>simulated</think><answer>{score:.1f}</answer>"
