"""Single-answer judging: one answer scored 1-5, for filtering.

Decision rules, applied in this order; the first failure is the reason:
  1. errors  `unparsed_verdict`  any slot unparsed after retries, or no slot at all.
  2. dropped `score_below_min`   mean score < filter.min_score (1e-9 float tolerance).
  otherwise kept, reason None.
With `judge.aggregate: vote` the row's score is the whole score most samples gave (scores sharing
the most votes average), instead of the mean.

Evaluation against a human score (a rating or MOS per row, `evaluate`): Pearson, Spearman, Kendall's
tau and the mean squared error between the row's mean judge score and the label, over the rows with a
score; rows in errors/ are counted (`unparsed`, `not_judged`) and left out of the correlations.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import pyarrow as pa
from pydantic import Field

from stages.config import ConfigSection
from stages.formats.base import REASON_UNPARSED, JudgingFormat, ThresholdRule
from stages.formats.evaluation import LabelledRow, bootstrap_ci, correlations, grid, ratio
from stages.formats.prompts import check_user_text, with_media
from stages.formats.verdicts import EPS, Verdict, final_verdicts, mean
from stages.rows import DROPPED, ERRORS, KEPT

REASON_SCORE = "score_below_min"


class SingleRules(ConfigSection):
    min_score: float = Field(default=3.0, ge=0, description="Single: mean score (1-5) to keep a row.")


@dataclass(frozen=True)
class SingleResult:
    mean_score: Optional[float]
    n_slots: int
    n_parsed: int
    unparsed_slots: tuple[tuple[str, int], ...]
    column: str = "score"  # the result column the score is written to

    def columns(self) -> dict[str, Any]:
        return {self.column: self.mean_score}


class SingleFormat(JudgingFormat):
    mode = "single"
    summary = "one answer -> score"
    answer_columns = ("response",)
    system_key = "mllm_judge_score_1_5"
    scale = (1.0, 5.0)
    n_scores = 1
    score_pattern = "[1-5]"
    rules = SingleRules
    drop_reasons = {REASON_SCORE: "single mode: mean score below `filter.min_score`"}
    result_columns = {"score": pa.float64()}
    histograms = {"score": 0.5}
    threshold_rule = ThresholdRule("min_score", "score", REASON_SCORE)
    headline_metrics = ("spearman", "pearson")

    def user_message(self, question: str, answers: Sequence[str], media: Sequence[str], family: str) -> str:
        """SPEC: `{media}\\n\\n[Question]\\n{q}\\n\\n[Assistant's Answer]\\n{a}`."""
        if isinstance(answers, str) or len(answers) != 1:
            raise ValueError("single judging takes 1 answer")
        body = "[Question]\n" + check_user_text("question", question) + "\n\n[Assistant's Answer]\n" + check_user_text(
            "answer", answers[0]
        )
        return with_media(body, media, family)

    def aggregate(self, verdicts: Sequence[Verdict]) -> SingleResult:
        slots = final_verdicts(verdicts)
        scores: list[float] = []
        for slot, verdict in slots.items():
            if verdict.original_scores is None:
                continue
            if len(verdict.original_scores) != 1:
                raise ValueError(f"single verdict {slot} holds {len(verdict.original_scores)} scores, not 1")
            scores.append(verdict.original_scores[0])
        return SingleResult(
            mean_score=self._voted(scores) if self.vote else mean(scores),
            n_slots=len(slots),
            n_parsed=len(scores),
            unparsed_slots=tuple(slot for slot, v in slots.items() if not v.parsed),
            column=self.threshold_rule.column,
        )

    @staticmethod
    def _voted(scores: Sequence[float]) -> Optional[float]:
        """The score bucket (the nearest whole score) most samples gave; buckets sharing the most votes
        average (a tie among buckets)."""
        if not scores:
            return None
        buckets: dict[float, int] = {}
        for score in scores:
            bucket = float(math.floor(score + 0.5))  # halves round up (round() would send 2.5 to 2, 3.5 to 4)
            buckets[bucket] = buckets.get(bucket, 0) + 1
        most = max(buckets.values())
        return mean([bucket for bucket, count in buckets.items() if count == most])

    def decide(self, result: SingleResult, rules: Any) -> tuple[str, Optional[str]]:
        if result.unparsed_slots or result.n_parsed == 0 or result.mean_score is None:
            return ERRORS, REASON_UNPARSED
        rule = self.threshold_rule
        if result.mean_score + EPS < getattr(rules, rule.field):
            return DROPPED, rule.reason
        return KEPT, None

    def canonical_label(self, raw: Any) -> float:
        """A human score: a number, or a string holding one."""
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise ValueError(f"not a numeric score: {raw!r}") from None
        if math.isnan(value) or math.isinf(value):
            raise ValueError(f"not a numeric score: {raw!r}")
        return value

    def evaluate(self, rows: Sequence[LabelledRow], rules: SingleRules) -> dict[str, Any]:
        results = [self.aggregate(row.verdicts) for row in rows]
        scored = [(result.mean_score, row.label) for row, result in zip(rows, results)
                  if row.outcome != ERRORS and result.mean_score is not None]
        errors = Counter(row.error_reason == REASON_UNPARSED for row in rows if row.outcome == ERRORS)
        judge, human = [s for s, _ in scored], [h for _, h in scored]
        return {
            "n": len(rows),
            "scored": len(scored),
            "unparsed": errors[True],
            "not_judged": errors[False] + sum(1 for row, result in zip(rows, results)
                                              if row.outcome != ERRORS and result.mean_score is None),
            **correlations(judge, human),
            "spearman_ci": bootstrap_ci(scored, lambda sample: correlations([s for s, _ in sample],
                                                                            [h for _, h in sample])["spearman"]),
            "thresholds": [self._threshold(rows, results, rules, m) for m in grid(self.scale[0], self.scale[1], 0.5)],
        }

    def _threshold(
        self, rows: Sequence[LabelledRow], results: Sequence[SingleResult], rules: Any, threshold: float
    ) -> dict[str, Any]:
        """Keep rate and the kept rows' mean human label at one threshold of the format's rule."""
        field = self.threshold_rule.field
        variant = rules.model_copy(update={field: threshold})
        kept = [row.label for row, result in zip(rows, results)
                if row.outcome != ERRORS and self.decide(result, variant)[0] == KEPT]
        return {field: threshold, "keep_rate": ratio(len(kept), len(rows)), "kept_mean_label": ratio(sum(kept), len(kept))}
