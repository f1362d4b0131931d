"""Apply the filter rules to each judged row: keep it, or drop it with a reason.

Decisions come from `stages.verdicts` (rules and their order are documented there), re-derived
from the row's own `judgments`, so a row's outcome can always be recomputed from its outputs.
Pairwise kept rows get `chosen` / `rejected` texts and their mean scores.
"""
from __future__ import annotations

from typing import Any

import pyarrow as pa

from pipelines.config import FilterConfig, Mode
from stages.base import DROP_REASON, RowStage
from stages.verdicts import DROPPED, KEPT, Verdict, aggregate_pairwise, aggregate_single, decide_pairwise, decide_single

PAIRWISE_LABELS: dict[str, pa.DataType] = {
    "chosen": pa.string(),
    "rejected": pa.string(),
    "score_chosen": pa.float64(),
    "score_rejected": pa.float64(),
}


def verdicts_of(judgments: list[dict[str, Any]]) -> list[Verdict]:
    return [
        Verdict(
            order=j["order"],
            sample=j["sample"],
            attempt=j["attempt"],
            seed=j["seed"],
            text=j["text"],
            scores=tuple(j["scores"]) if j["scores"] is not None else None,
            prompt_tokens=j["prompt_tokens"] or 0,
            output_tokens=j["output_tokens"] or 0,
            finish_reason=j["finish_reason"],
        )
        for j in judgments
    ]


class LabelStage(RowStage):
    name = "label"
    num_cpus = 0.25

    def __init__(self, mode: Mode, rules: FilterConfig, batch_size: int = 64) -> None:
        self.mode = mode
        self.rules = rules
        self.batch_size = batch_size
        self.needs = ("response_a", "response_b", "judgments")
        self.adds = {DROP_REASON: pa.string(), **(PAIRWISE_LABELS if mode == "pairwise" else {})}

    def process_row(self, row: dict[str, Any]) -> dict[str, Any]:
        verdicts = verdicts_of(row["judgments"] or [])
        if self.mode == "single":
            outcome, reason = decide_single(aggregate_single(verdicts), self.rules)
            return self._settle(outcome, reason, {})
        result = aggregate_pairwise(verdicts)
        outcome, reason = decide_pairwise(result, self.rules)
        labels: dict[str, Any] = {}
        if outcome == KEPT:
            a_wins = result.winner == "a"
            labels = {
                "chosen": row["response_a"] if a_wins else row["response_b"],
                "rejected": row["response_b"] if a_wins else row["response_a"],
                "score_chosen": result.chosen_score,
                "score_rejected": result.rejected_score,
            }
        return self._settle(outcome, reason, labels)

    @staticmethod
    def _settle(outcome: str, reason: str | None, labels: dict[str, Any]) -> dict[str, Any]:
        if outcome == DROPPED:
            return {DROP_REASON: reason}
        if outcome != KEPT:  # the judge stage already routes unparsed verdicts; never keep one
            raise ValueError(f"[{reason}] row reached labelling without a usable verdict")
        return labels
