"""Pairwise judging, the trained format: two answers scored 1-10, a preference and DPO pairs.

Each row is judged in its own answer order ('ab') and, with `judge.swap_order`, swapped ('ba'), the
position-bias remedy of the paper; a swapped verdict's scores are flipped back. Per row: mean score
per answer, votes, whether every verdict agrees on the winner, the winner and the margin.

Decision rules, applied in this order; the first failure is the reason:
  1. errors  `unparsed_verdict`       any slot unparsed after retries, or no slot at all. Partial
                                       verdicts are never used: dropping the swapped order's slot
                                       would silently skip the position-bias check, and a missing
                                       sample would bias the mean.
  2. dropped `tie`                    mean scores equal (a tie is never a preference, whatever
                                       min_margin says).
  3. dropped `order_disagreement`     filter.require_order_agreement and not result.order_agreement.
  4. dropped `margin_below_min`       mean(chosen) - mean(rejected) < filter.min_margin.
  5. dropped `chosen_score_below_min` mean(chosen) < filter.min_chosen_score.
  otherwise kept, reason None.
Threshold comparisons allow a 1e-9 float tolerance (a margin of 0.9999999999 from averaging
counts as 1.0); tie detection on means uses the same tolerance.
Before judging, a pair whose two answers are the same text is dropped (`identical_responses`).
With `judge.aggregate: vote` the winner is the samples' majority (the paper's k=7 self-consistency);
scores, margin and the rules' thresholds stay on the mean scores.

Position bias, in every run's report and in evaluation: `order_agreement_rate`, over rows judged in
both orders, the fraction whose two orders pick the same (non-tie) winner; `first_position_win_rate`,
over every final verdict with a winner, the fraction won by the answer shown first (0.5: no bias).

Evaluation against human preferences (`evaluate`): a row the human calls a tie is left out of both
accuracies and counted in `human_ties`; of the rest (`n`), a judge tie, an unparsed verdict or a row
without a verdict (another error, or dropped before judging) counts as wrong in `accuracy`, and is
left out of `accuracy_excluding_ties`.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping, Optional, Sequence

import pyarrow as pa
from pydantic import Field

from stages.config import ConfigSection
from stages.formats import position_bias
from stages.formats.base import REASON_UNPARSED, JudgingFormat, ThresholdRule
from stages.formats.evaluation import LabelledRow, bootstrap_ci, by_group, cohen_kappa, grid, ratio
from stages.formats.preferences import preference_row, preference_schema, preference_table
from stages.formats.prompts import check_user_text, with_media
from stages.formats.verdicts import EPS, ORDERS, Verdict, final_verdicts, mean, plurality
from stages.rows import DROPPED, ERRORS, KEPT, RowRejected

Winner = Literal["a", "b", "tie"]

REASON_IDENTICAL = "identical_responses"
REASON_TIE = "tie"
REASON_ORDER_DISAGREEMENT = "order_disagreement"
REASON_MARGIN = "margin_below_min"
REASON_CHOSEN_SCORE = "chosen_score_below_min"


class OrderAgreementRule(ConfigSection):
    require_order_agreement: bool = Field(
        default=True,
        description="Pairwise, ranking and choice: every verdict (both answer orders, every sample) must pick "
        "the same winner.",
    )


class PairwiseRules(OrderAgreementRule):
    min_margin: float = Field(
        default=1.0, ge=0, description="Pairwise and ranking: chosen minus rejected mean score, at least."
    )
    min_chosen_score: float = Field(
        default=0.0, ge=0, description="Pairwise and ranking: chosen (best) mean score, at least."
    )


def slot_winner(original_scores: Sequence[float]) -> Winner:
    """Winner of one pairwise verdict from the original answers' scores; equal scores tie."""
    a, b = original_scores
    return "a" if a > b else "b" if b > a else "tie"


def _winner_of_means(mean_a: Optional[float], mean_b: Optional[float]) -> Optional[Winner]:
    if mean_a is None or mean_b is None:
        return None
    if abs(mean_a - mean_b) <= EPS:
        return "tie"
    return "a" if mean_a > mean_b else "b"


@dataclass(frozen=True)
class PairwiseResult:
    """Aggregate of one row's pairwise slots, all scores in the original answers' terms.

    mean_a / mean_b: mean over parsed slots (None when none parsed).
    votes_a / votes_b / ties: parsed slots preferring a, b, or scoring both equal.
    winner_ab / winner_ba: winner of each order from that order's mean scores (None: order not
        judged or none of its slots parsed).
    order_agreement: True iff at least one slot parsed and every parsed slot picks the same
        non-tie winner. A tied slot breaks agreement. With only one order judged (swap_order off)
        it means every sample of that order agrees (with one sample: that sample is not a tie).
    winner: from the means ("tie" when equal within 1e-9; None when nothing parsed); with
        `judge.aggregate: vote`, the winner most parsed slots picked ("tie" when a, b or tie share
        the most votes).
    margin: |mean_a - mean_b| (None when nothing parsed).
    unparsed_slots: (order, sample) of slots with no parsed attempt; never counted as ties.
    """

    mean_a: Optional[float]
    mean_b: Optional[float]
    votes_a: int
    votes_b: int
    ties: int
    winner_ab: Optional[Winner]
    winner_ba: Optional[Winner]
    order_agreement: bool
    winner: Optional[Winner]
    margin: Optional[float]
    n_slots: int
    n_parsed: int
    unparsed_slots: tuple[tuple[str, int], ...]

    @property
    def chosen_score(self) -> Optional[float]:
        return {"a": self.mean_a, "b": self.mean_b}.get(self.winner or "")

    @property
    def rejected_score(self) -> Optional[float]:
        return {"a": self.mean_b, "b": self.mean_a}.get(self.winner or "")

    def columns(self) -> dict[str, Any]:
        return {
            "score_a": self.mean_a,
            "score_b": self.mean_b,
            "votes_a": self.votes_a,
            "votes_b": self.votes_b,
            "votes_tie": self.ties,
            "order_agreement": self.order_agreement,
            "winner": self.winner,
            "margin": self.margin,
        }


class PairwiseFormat(JudgingFormat):
    mode = "pairwise"
    summary = "two answers -> preference"
    answer_columns = ("response_a", "response_b")
    system_key = "train_pairwise_1_10__judgelrm_generation"
    scale = (1.0, 10.0)
    n_scores = 2
    score_pattern = "10|[1-9]"
    rules = PairwiseRules
    drop_reasons = {
        REASON_IDENTICAL: "both answers are the same text: no preference can come from them (not judged)",
        REASON_TIE: "equal mean scores",
        REASON_ORDER_DISAGREEMENT: "the two answer orders (or samples) picked different winners",
        REASON_MARGIN: "chosen minus rejected mean score below `filter.min_margin`",
        REASON_CHOSEN_SCORE: "chosen mean score below `filter.min_chosen_score`",
    }
    result_columns = {
        "score_a": pa.float64(),
        "score_b": pa.float64(),
        "votes_a": pa.int32(),
        "votes_b": pa.int32(),
        "votes_tie": pa.int32(),
        "order_agreement": pa.bool_(),
        "winner": pa.string(),
        "margin": pa.float64(),
    }
    label_columns = {
        "chosen": pa.string(),
        "rejected": pa.string(),
        "score_chosen": pa.float64(),
        "score_rejected": pa.float64(),
    }
    histograms = {"score_chosen": 1.0, "score_rejected": 1.0, "margin": 1.0}
    threshold_rule = ThresholdRule("min_margin", "margin", REASON_MARGIN)
    headline_metrics = ("accuracy", "accuracy_excluding_ties", "cohen_kappa")

    # -- columns ---------------------------------------------------------------------------------

    def required_columns(self, mapping: Mapping[str, str], present: Sequence[str]) -> list[str]:
        if "responses" in mapping:  # one list column holding both answers
            return [mapping.get("question", "question"), mapping["responses"]]
        return super().required_columns(mapping, present)

    def answers(self, get: Callable[[str], Any], mapping: Mapping[str, str]) -> dict[str, Any]:
        if "responses" not in mapping:
            return super().answers(get, mapping)
        answers = get("responses")
        if answers is None or len(answers) != 2:
            raise RowRejected("invalid_responses", f"expected a list of 2 responses, got {answers!r:.80}")
        return dict(zip(self.answer_columns, answers))

    def drop_before_judging(self, row: Mapping[str, Any]) -> str | None:
        a, b = (row[column] for column in self.answer_columns)
        return REASON_IDENTICAL if a.strip() == b.strip() else None

    # -- requests --------------------------------------------------------------------------------

    def orders(self, swap_order: bool) -> tuple[str, ...]:
        return ORDERS if swap_order else ("ab",)

    def shown_answers(self, row: Mapping[str, Any], order: str) -> list[str]:
        a, b = (row[column] for column in self.answer_columns)
        if order == "ab":
            return [a, b]
        if order == "ba":
            return [b, a]
        raise ValueError(f"unknown answer order {order!r}; expected 'ab' or 'ba'")

    def user_message(self, question: str, answers: Sequence[str], media: Sequence[str], family: str) -> str:
        """SPEC: `{media}\\n\\n[Question]\\n{q}\\n\\n[Assistant 1's Answer]\\n{a1}\\n\\n[Assistant 2's Answer]\\n{a2}`."""
        if isinstance(answers, str) or len(answers) != 2:
            raise ValueError("pairwise judging takes 2 answers")
        body = (
            "[Question]\n"
            + check_user_text("question", question)
            + "\n\n[Assistant 1's Answer]\n"
            + check_user_text("answer_1", answers[0])
            + "\n\n[Assistant 2's Answer]\n"
            + check_user_text("answer_2", answers[1])
        )
        return with_media(body, media, family)

    # -- verdicts --------------------------------------------------------------------------------

    def to_original(self, scores: Sequence[float], order: str) -> tuple[float, ...]:
        """'ba' flips the two scores back; its own inverse."""
        if order == "ab":
            return tuple(scores)
        if order == "ba":
            if len(scores) != 2:
                raise ValueError("a swapped ('ba') verdict must hold exactly two scores")
            return (scores[1], scores[0])
        raise ValueError(f"unknown answer order {order!r}; expected 'ab' or 'ba'")

    def aggregate(self, verdicts: Sequence[Verdict]) -> PairwiseResult:
        slots = final_verdicts(verdicts)
        parsed = [v for v in slots.values() if v.parsed]
        unparsed = [slot for slot, v in slots.items() if not v.parsed]
        originals = [v.original_scores or () for v in parsed]
        for slot, scores in zip((v.slot for v in parsed), originals):
            if len(scores) != 2:
                raise ValueError(f"pairwise verdict {slot} holds {len(scores)} scores, not 2")
        winners = [slot_winner(s) for s in originals]
        mean_a = mean([s[0] for s in originals])
        mean_b = mean([s[1] for s in originals])
        per_order: dict[str, Optional[Winner]] = {}
        for order in ORDERS:
            of_order = [v.original_scores or () for v in parsed if v.order == order]
            per_order[order] = _winner_of_means(mean([s[0] for s in of_order]), mean([s[1] for s in of_order]))
        agreement = bool(winners) and winners[0] != "tie" and all(w == winners[0] for w in winners)
        return PairwiseResult(
            mean_a=mean_a,
            mean_b=mean_b,
            votes_a=winners.count("a"),
            votes_b=winners.count("b"),
            ties=winners.count("tie"),
            winner_ab=per_order["ab"],
            winner_ba=per_order["ba"],
            order_agreement=agreement,
            winner=plurality(winners, tie="tie") if self.vote else _winner_of_means(mean_a, mean_b),
            margin=None if mean_a is None or mean_b is None else abs(mean_a - mean_b),
            n_slots=len(slots),
            n_parsed=len(parsed),
            unparsed_slots=tuple(unparsed),
        )

    # -- labels ----------------------------------------------------------------------------------

    def decide(self, result: PairwiseResult, rules: PairwiseRules) -> tuple[str, Optional[str]]:
        if result.unparsed_slots or result.n_parsed == 0 or result.winner is None:
            return ERRORS, REASON_UNPARSED
        if result.winner == "tie":
            return DROPPED, REASON_TIE
        if rules.require_order_agreement and not result.order_agreement:
            return DROPPED, REASON_ORDER_DISAGREEMENT
        if (result.margin or 0.0) + EPS < rules.min_margin:
            return DROPPED, REASON_MARGIN
        if (result.chosen_score or 0.0) + EPS < rules.min_chosen_score:
            return DROPPED, REASON_CHOSEN_SCORE
        return KEPT, None

    def labels(self, row: Mapping[str, Any], result: PairwiseResult, rules: PairwiseRules) -> dict[str, Any]:
        a, b = (row[column] for column in self.answer_columns)
        a_wins = result.winner == "a"
        return {
            "chosen": a if a_wins else b,
            "rejected": b if a_wins else a,
            "score_chosen": result.chosen_score,
            "score_rejected": result.rejected_score,
        }

    # -- what the run report and evaluation read -------------------------------------------------

    def tally(self, verdicts: Sequence[Verdict]) -> dict[str, int]:
        return position_bias.tally(verdicts, self._order_winner, position_bias.first_of_two_wins)

    def _order_winner(self, verdicts: list[Verdict]) -> Optional[Winner]:
        """The winner of one order's verdicts, from their mean scores; None for a tie."""
        scores = [v.original_scores or () for v in verdicts]
        winner = _winner_of_means(mean([s[0] for s in scores]), mean([s[1] for s in scores]))
        return None if winner == "tie" else winner

    def rates(self, tallies: Mapping[str, int]) -> dict[str, Optional[float]]:
        return position_bias.rates(tallies)

    def canonical_label(self, raw: Any) -> Winner:
        """'a', 'b' or 'tie' from `a` / `b` / `tie` (any case), MLLM-as-a-Judge's `A` / `B` / `C` (C: a tie),
        or a ranking of the two answers, best first (VL-RewardBench's `[0, 1]`: the first is preferred)."""
        if isinstance(raw, str):
            winner = {"a": "a", "b": "b", "tie": "tie", "c": "tie"}.get(raw.strip().lower())
            if winner is not None:
                return winner  # type: ignore[return-value]
        elif isinstance(raw, (list, tuple)) and len(raw) == 2 and all(isinstance(r, (int, float)) for r in raw):
            first, second = raw
            return "a" if first < second else "b" if second < first else "tie"
        raise ValueError(f"not a pairwise preference: {raw!r} (expected a, b, tie; A, B, C; or a ranking of 2)")

    def evaluate(self, rows: Sequence[LabelledRow], rules: PairwiseRules) -> dict[str, Any]:
        preferred = [row for row in rows if row.label != "tie"]
        results = [self.aggregate(row.verdicts) for row in preferred]
        status = [_status(row, result) for row, result in zip(preferred, results)]
        counts = Counter(status)
        n = len(preferred)
        decided = n - counts["judge_tie"] - counts["unparsed"] - counts["not_judged"]
        return {
            "n": n,
            "human_ties": len(rows) - n,
            "judge_ties": counts["judge_tie"],
            "unparsed": counts["unparsed"],
            "not_judged": counts["not_judged"],
            "accuracy": ratio(counts["correct"], n),
            "accuracy_ci": bootstrap_ci(status, lambda sample: ratio(sample.count("correct"), len(sample))),
            "accuracy_excluding_ties": ratio(counts["correct"], decided),
            "cohen_kappa": cohen_kappa([(result.winner, row.label) for row, result, s in zip(preferred, results, status)
                                        if s in ("correct", "wrong")]),
            **position_bias.summed_rates(self.tally(row.verdicts) for row in rows if row.verdicts),
            **by_group(preferred, [s == "correct" for s in status]),
            "thresholds": self._thresholds(preferred, results, status, rules),
        }

    def _thresholds(
        self, rows: Sequence[LabelledRow], results: Sequence[PairwiseResult], status: Sequence[str], rules: PairwiseRules
    ) -> list[dict[str, Any]]:
        """Keep rate and the kept rows' agreement with humans over a grid of margins, with and without
        the order-agreement rule (the run's other rules as they are): the curve to pick settings from."""
        table = []
        for agreement in (False, True):
            for margin in grid(0.0, self.scale[1] - self.scale[0], 0.5):
                variant = rules.model_copy(update={"min_margin": margin, "require_order_agreement": agreement})
                kept = [s for row, result, s in zip(rows, results, status)
                        if row.outcome != ERRORS and result.n_parsed and self.decide(result, variant)[0] == KEPT]
                table.append({
                    "min_margin": margin,
                    "require_order_agreement": agreement,
                    "keep_rate": ratio(len(kept), len(rows)),
                    "kept_accuracy": ratio(kept.count("correct"), len(kept)),
                })
        return table

    def preference_schema(self) -> pa.Schema:
        return preference_schema()

    def preference_rows(self, kept: pa.Table) -> pa.Table:
        """One DPO row per kept row, from its `chosen` / `rejected` labels."""
        return preference_table([
            preference_row(row, row["chosen"], row["rejected"], row["score_chosen"], row["score_rejected"])
            for row in kept.to_pylist()
        ])


def _status(row: LabelledRow, result: PairwiseResult) -> str:
    """A labelled row's verdict against its human winner: correct, wrong, judge_tie, unparsed or not_judged."""
    if row.outcome == ERRORS:
        return "unparsed" if row.error_reason == REASON_UNPARSED else "not_judged"
    if not result.n_parsed or result.winner is None:
        return "not_judged"  # dropped before judging (identical answers)
    if result.winner == "tie":
        return "judge_tie"
    return "correct" if result.winner == row.label else "wrong"
