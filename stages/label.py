"""Apply the judging format's label rules to each judged row: keep it, or drop it with a reason.

Decisions are re-derived from the row's own `judgments` (stages/formats/ documents each format's
rules and their order), so a row's outcome can always be recomputed from its outputs. Kept rows
get the format's label columns (pairwise: `chosen` / `rejected` texts and their mean scores).
"""
from __future__ import annotations

from typing import Any

import pyarrow as pa

from stages.base import RowStage
from stages.config import ConfigSection
from stages.formats.base import REASON_UNPARSED, JudgingFormat, UnparsedVerdict
from stages.formats.verdicts import Verdict
from stages.rows import DROP_REASON, DROPPED, KEPT


class LabelStage(RowStage):
    name = "label"
    num_cpus = 0.0  # the write stage's too, so that Ray Data runs the two as one task (see WriteStage)

    def __init__(self, fmt: JudgingFormat, rules: ConfigSection, batch_size: int = 64) -> None:
        self.fmt = fmt
        self.rules = rules  # the run's `filter` section: every format's rules, this format's among them
        self.batch_size = batch_size
        self.needs = (*fmt.answer_columns, "judgments", *fmt.result_columns)
        self.adds: dict[str, pa.DataType] = {DROP_REASON: pa.string(), **fmt.label_columns}

    def process_row(self, row: dict[str, Any]) -> dict[str, Any]:
        result = self.fmt.aggregate([Verdict.from_dict(j) for j in row["judgments"] or []])
        outcome, reason = self.fmt.decide(result, self.rules)
        if outcome == DROPPED:
            return {DROP_REASON: reason}
        if outcome != KEPT:  # the judge stage already routes unparsed verdicts; never keep one
            raise UnparsedVerdict(reason or REASON_UNPARSED, "row reached labelling without a usable verdict")
        return self.fmt.labels(row, result, self.rules)
