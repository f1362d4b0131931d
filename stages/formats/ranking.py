"""Ranking judging: N answers to one question scored 1-10 in one verdict, best-versus-worst DPO pairs.

A row's `responses` list holds its N >= 2 answers (N may vary per row; `judge.max_responses` bounds
it). The prompt is `mllm_judge_batch_1_10` ("DO NOT assign the same score to multiple assistants"),
the verdict N `<answer>` scores. Position bias: with `judge.swap_order` each row is also judged with
its answers in reverse order ('ba'), the scores flipped back; an answer's score is its mean over the
row's verdicts. A verdict with the wrong number of scores is unparsed (retried, then errors/), never
padded.

Decision rules, applied in this order; the first failure is the reason:
  1. errors  `unparsed_verdict`       any slot unparsed after retries, or no slot at all.
  2. dropped `tie`                    two or more answers share the best mean score.
  3. dropped `order_disagreement`     filter.require_order_agreement and the verdicts do not all pick
                                       the same best answer.
  4. dropped `margin_below_min`       best minus worst mean score < filter.min_margin.
  5. dropped `chosen_score_below_min` best mean score < filter.min_chosen_score.
  otherwise kept: `chosen` / `rejected` are the best and the worst answer (of answers tied for worst,
  the later one), and preferences/ gets that pair, or with `filter.pairs: all_above_margin` every
  pair of answers whose mean scores differ by at least filter.min_margin (the better one chosen).
With `judge.aggregate: vote` the best answer is the one most verdicts scored highest (a tie when
answers share the most votes); scores, ranking and margin stay on the means.
Before judging, a row whose answers are all the same text is dropped (`identical_responses`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping, Optional, Sequence

import pyarrow as pa
from pydantic import Field

from stages.config import ConfigSection
from stages.engines.api import JudgeRequest
from stages.formats import position_bias
from stages.formats.base import REASON_UNPARSED, JudgingFormat, ThresholdRule
from stages.formats.evaluation import LabelledRow, bootstrap_ci, by_group, correlations, grid, ratio
from stages.formats.pairwise import (
    REASON_CHOSEN_SCORE,
    REASON_IDENTICAL,
    REASON_MARGIN,
    REASON_ORDER_DISAGREEMENT,
    REASON_TIE,
    PairwiseRules,
)
from stages.formats.preferences import preference_row, preference_schema, preference_table
from stages.formats.prompts import check_user_text, with_media
from stages.formats.verdicts import EPS, ORDERS, Verdict, final_verdicts, mean, plurality
from stages.rows import DROPPED, ERRORS, KEPT, RowRejected

_ANSWER_HEADER = re.compile(r"^\[Assistant (\d+)'s Answer\]$", re.M)


class RankingOptions(ConfigSection):
    max_responses: int = Field(
        default=8, ge=2, description="Ranking: most answers one row may hold; a longer list is an error (invalid_responses)."
    )


class RankingRules(PairwiseRules):
    pairs: Literal["best_worst", "all_above_margin"] = Field(
        default="best_worst",
        description="Ranking: preferences/ from the best and the worst answer, or from every pair whose mean "
        "scores differ by at least min_margin.",
    )


def _unique_extreme(scores: Sequence[float], best: bool) -> Optional[int]:
    """The index of the single highest (or lowest) score; None when two or more share it."""
    target = max(scores) if best else min(scores)
    at = [i for i, score in enumerate(scores) if abs(score - target) <= EPS]
    return at[0] if len(at) == 1 else None


@dataclass(frozen=True)
class RankingResult:
    """A row's verdicts aggregated: `scores` mean per answer in the row's order (None: nothing parsed),
    `ranking` answer indices best first (ties in the row's order), `best` the single best answer
    (None: tied), `worst` the lowest answer (the later one of a tie), `margin` best minus worst mean,
    `order_agreement` every parsed verdict picks the same single best answer."""

    scores: Optional[tuple[float, ...]]
    ranking: tuple[int, ...]
    best: Optional[int]
    worst: Optional[int]
    margin: Optional[float]
    order_agreement: bool
    n_slots: int
    n_parsed: int
    unparsed_slots: tuple[tuple[str, int], ...]

    def columns(self) -> dict[str, Any]:
        return {
            "scores": None if self.scores is None else list(self.scores),
            "ranking": list(self.ranking) if self.scores is not None else None,
            "best": self.best,
            "worst": self.worst,
            "margin": self.margin,
            "order_agreement": self.order_agreement,
        }


class RankingFormat(JudgingFormat):
    mode = "ranking"
    summary = "N answers -> scores, a ranking and best-vs-worst preference pairs"
    answer_columns = ("responses",)
    answer_types = {"responses": pa.list_(pa.string())}
    system_key = "mllm_judge_batch_1_10"
    scale = (1.0, 10.0)
    n_scores = 0  # per row: one score per answer
    score_pattern = "10|[1-9]"
    rules = RankingRules
    options = RankingOptions
    drop_reasons = {
        REASON_IDENTICAL: "all of a row's answers are the same text: nothing to rank (not judged)",
        REASON_TIE: "two or more answers share the best mean score",
        REASON_ORDER_DISAGREEMENT: "the verdicts (orders, samples) picked different best answers",
        REASON_MARGIN: "best minus worst mean score below `filter.min_margin`",
        REASON_CHOSEN_SCORE: "best mean score below `filter.min_chosen_score`",
    }
    result_columns = {
        "scores": pa.list_(pa.float64()),
        "ranking": pa.list_(pa.int32()),
        "best": pa.int32(),
        "worst": pa.int32(),
        "margin": pa.float64(),
        "order_agreement": pa.bool_(),
    }
    label_columns = {
        "chosen": pa.string(),
        "rejected": pa.string(),
        "score_chosen": pa.float64(),
        "score_rejected": pa.float64(),
        "preference_pairs": pa.list_(pa.list_(pa.int32())),
    }
    histograms = {"score_chosen": 1.0, "score_rejected": 1.0, "margin": 1.0}
    threshold_rule = ThresholdRule("min_margin", "margin", REASON_MARGIN)
    headline_metrics = ("top1_accuracy", "kendall_tau")

    # -- columns ---------------------------------------------------------------------------------

    def answers(self, get: Callable[[str], Any], mapping: Mapping[str, str]) -> dict[str, Any]:
        answers = get("responses")
        limit = self.option("max_responses")
        if answers is None or isinstance(answers, (str, bytes)) or not 2 <= len(answers) <= limit:
            raise RowRejected("invalid_responses", f"expected a list of 2 to {limit} responses, got {answers!r:.80}")
        return {"responses": list(answers)}

    def check_answers(self, row: dict[str, Any], check: Callable[[Any, str], str]) -> None:
        row["responses"] = [check(answer, "responses") for answer in row["responses"]]

    def drop_before_judging(self, row: Mapping[str, Any]) -> str | None:
        return REASON_IDENTICAL if len({answer.strip() for answer in row["responses"]}) == 1 else None

    # -- requests --------------------------------------------------------------------------------

    def orders(self, swap_order: bool) -> tuple[str, ...]:
        return ORDERS if swap_order else ("ab",)

    def shown_answers(self, row: Mapping[str, Any], order: str) -> list[str]:
        if order not in ORDERS:
            raise ValueError(f"unknown answer order {order!r}; expected one of {ORDERS}")
        answers = list(row["responses"])
        return answers if order == "ab" else answers[::-1]

    def user_message(self, question: str, answers: Sequence[str], media: Sequence[str], family: str) -> str:
        """SPEC's batch template: `{media}\\n\\n[Question]\\n{q}\\n\\n` then `[Assistant {i}'s Answer]\\n{a_i}\\n\\n`
        for i = 1..N, the whole text stripped (as the authors' code does)."""
        if isinstance(answers, str) or len(answers) < 2:
            raise ValueError("ranking judging takes 2 or more answers")
        body = "[Question]\n" + check_user_text("question", question) + "\n\n" + "".join(
            f"[Assistant {i}'s Answer]\n" + check_user_text(f"answer_{i}", answer) + "\n\n"
            for i, answer in enumerate(answers, start=1)
        )
        return with_media(body, media, family).strip()

    def score_count(self, row: Mapping[str, Any] | None) -> int | None:
        return None if row is None else len(row["responses"])

    def simulated_count(self, request: JudgeRequest) -> int:
        """The answers the request's prompt shows (its `[Assistant i's Answer]` headers, numbered 1..N)."""
        numbers = [int(n) for n in _ANSWER_HEADER.findall(request.prompt)]
        count = 0
        while count + 1 in numbers:
            count += 1
        return count

    # -- verdicts --------------------------------------------------------------------------------

    def to_original(self, scores: Sequence[float], order: str) -> tuple[float, ...]:
        """'ba' showed the answers reversed: reversing the scores maps them back (its own inverse)."""
        if order not in ORDERS:
            raise ValueError(f"unknown answer order {order!r}; expected one of {ORDERS}")
        return tuple(scores) if order == "ab" else tuple(reversed(scores))

    def aggregate(self, verdicts: Sequence[Verdict]) -> RankingResult:
        slots = final_verdicts(verdicts)
        parsed = [v.original_scores for v in slots.values() if v.original_scores is not None]
        unparsed = tuple(slot for slot, v in slots.items() if not v.parsed)
        if parsed and len({len(s) for s in parsed}) != 1:
            raise ValueError(f"a row's ranking verdicts hold different numbers of scores: {[len(s) for s in parsed]}")
        if not parsed:
            return RankingResult(None, (), None, None, None, False, len(slots), 0, unparsed)
        scores = tuple(mean(column) for column in zip(*parsed))  # type: ignore[misc]
        ranking = tuple(sorted(range(len(scores)), key=lambda i: (-scores[i], i)))
        bests = [_unique_extreme(s, best=True) for s in parsed]
        best = plurality(bests, tie=None) if self.vote else _unique_extreme(scores, best=True)
        low = min(scores)
        worst = max(i for i, score in enumerate(scores) if abs(score - low) <= EPS)
        return RankingResult(
            scores=scores,
            ranking=ranking,
            best=best,
            worst=worst,
            margin=max(scores) - low,
            order_agreement=bests[0] is not None and all(b == bests[0] for b in bests),
            n_slots=len(slots),
            n_parsed=len(parsed),
            unparsed_slots=unparsed,
        )

    # -- labels ----------------------------------------------------------------------------------

    def decide(self, result: RankingResult, rules: RankingRules) -> tuple[str, Optional[str]]:
        if result.unparsed_slots or result.scores is None:
            return ERRORS, REASON_UNPARSED
        if result.best is None:
            return DROPPED, REASON_TIE
        if rules.require_order_agreement and not result.order_agreement:
            return DROPPED, REASON_ORDER_DISAGREEMENT
        if (result.margin or 0.0) + EPS < rules.min_margin:
            return DROPPED, REASON_MARGIN
        if result.scores[result.best] + EPS < rules.min_chosen_score:
            return DROPPED, REASON_CHOSEN_SCORE
        return KEPT, None

    def labels(self, row: Mapping[str, Any], result: RankingResult, rules: RankingRules) -> dict[str, Any]:
        assert result.scores is not None and result.best is not None and result.worst is not None
        answers, scores = row["responses"], result.scores
        if rules.pairs == "all_above_margin":
            pairs = [[i, j] for i in result.ranking for j in result.ranking
                     if i != j and scores[i] - scores[j] + EPS >= max(rules.min_margin, EPS)]
        else:
            pairs = [[result.best, result.worst]]
        return {
            "chosen": answers[result.best],
            "rejected": answers[result.worst],
            "score_chosen": scores[result.best],
            "score_rejected": scores[result.worst],
            "preference_pairs": pairs,
        }

    # -- what the run report and evaluation read -------------------------------------------------

    def tally(self, verdicts: Sequence[Verdict]) -> dict[str, int]:
        """Order agreement (both orders rank the same answer first); with N answers a first-position
        rate would have no common baseline, so it is left out."""
        return position_bias.tally(verdicts, lambda of_order: self.aggregate(of_order).best)

    def rates(self, tallies: Mapping[str, int]) -> dict[str, Optional[float]]:
        return {"order_agreement_rate": position_bias.rates(tallies)["order_agreement_rate"]}

    # -- evaluation ------------------------------------------------------------------------------

    def canonical_label(self, raw: Any) -> tuple[float, ...]:
        """A human ranking: each answer's rank in the row's order, lower is better (ties allowed),
        e.g. VL-RewardBench's `[0, 1]`."""
        if isinstance(raw, (list, tuple)) and len(raw) >= 2 and all(isinstance(r, (int, float)) for r in raw):
            return tuple(float(r) for r in raw)
        raise ValueError(f"not a ranking: {raw!r} (expected each answer's rank, lower is better)")

    def evaluate(self, rows: Sequence[LabelledRow], rules: RankingRules) -> dict[str, Any]:
        """Top-1 accuracy (the judge's single best answer is one of the human's best; a judge tie, an
        unparsed verdict or a row without a verdict counts as wrong), the mean per-row Kendall's tau
        between the judge's mean scores and the human ranking (rows where it is defined), per-group
        top-1 accuracy, and the keep rate / kept rows' top-1 accuracy over a grid of margins."""
        results = [self.aggregate(row.verdicts) for row in rows]
        top1, taus, unparsed, not_judged = [], [], 0, 0
        for row, result in zip(rows, results):
            if row.outcome == ERRORS or result.scores is None:
                unparsed += row.error_reason == REASON_UNPARSED
                not_judged += row.error_reason != REASON_UNPARSED
                top1.append(False)
                continue
            ranks = row.label
            if len(ranks) != len(result.scores):
                raise ValueError(f"row {row.id}: the human ranks {len(ranks)} answers, the judge scored {len(result.scores)}")
            top1.append(result.best is not None and ranks[result.best] == min(ranks))
            tau = correlations(list(result.scores), [-r for r in ranks])["kendall_tau"]
            if tau is not None:
                taus.append(tau)
        return {
            "n": len(rows),
            "unparsed": unparsed,
            "not_judged": not_judged,
            "top1_accuracy": ratio(sum(top1), len(rows)),
            "top1_accuracy_ci": bootstrap_ci(top1, lambda sample: ratio(sum(sample), len(sample))),
            "kendall_tau": mean(taus),
            "kendall_tau_rows": len(taus),
            "order_agreement_rate": position_bias.summed_rates(
                self.tally(row.verdicts) for row in rows if row.verdicts)["order_agreement_rate"],
            **by_group(rows, top1),
            "thresholds": self._thresholds(rows, results, top1, rules),
        }

    def _thresholds(
        self, rows: Sequence[LabelledRow], results: Sequence[RankingResult], top1: Sequence[bool], rules: RankingRules
    ) -> list[dict[str, Any]]:
        """Keep rate and the kept rows' top-1 accuracy over a grid of margins, with and without the
        order-agreement rule (the run's other rules as they are)."""
        table = []
        for agreement in (False, True):
            for margin in grid(0.0, self.scale[1] - self.scale[0], 0.5):
                variant = rules.model_copy(update={"min_margin": margin, "require_order_agreement": agreement})
                kept = [ok for row, result, ok in zip(rows, results, top1)
                        if row.outcome != ERRORS and result.n_parsed and self.decide(result, variant)[0] == KEPT]
                table.append({"min_margin": margin, "require_order_agreement": agreement,
                              "keep_rate": ratio(len(kept), len(rows)), "kept_top1_accuracy": ratio(sum(kept), len(kept))})
        return table

    # -- outputs ---------------------------------------------------------------------------------

    def preference_schema(self) -> pa.Schema:
        return preference_schema()

    def preference_rows(self, kept: pa.Table) -> pa.Table:
        """One DPO row per kept row's preference pair (best vs worst, or every pair above the margin)."""
        rows = []
        for row in kept.to_pylist():
            for chosen, rejected in row["preference_pairs"] or []:
                rows.append(preference_row(row, row["responses"][chosen], row["responses"][rejected],
                                           row["scores"][chosen], row["scores"][rejected]))
        return preference_table(rows)
