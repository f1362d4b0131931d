"""Reading Flex-Judge verdicts and turning them into keep / drop / error decisions.

Pure Python (stdlib only): the judge stage calls these per row; tests call them directly.

Parsing rules (`parse_scores`):
* Only the text after the LAST `</think>` is read: the reasoning may quote example tags such as
  the system prompt's `<answer>3</answer><answer>5</answer>`.
* Reasoning that was opened and never closed is unparsed: a text with `<think>` but no `</think>`,
  a `<think>` re-opened after the last `</think>`, or (with `think_prefilled=True`, the prompt
  ended in `<think>\\n`) a text without `</think>`. Tags found there are reasoning, not a verdict.
  A text with no think tags at all is read whole (the model skipped reasoning).
* Every `<answer>...</answer>` tag in the answer region counts. The number of tags must equal
  `expected` exactly (pairwise: two); more or fewer is unparsed, since the model's intent is then
  ambiguous. Each tag must hold one number `\\d+(\\.\\d+)?` (whitespace around it tolerated);
  any other content makes the whole verdict unparsed.
* Scores outside the scale (pairwise 1-10, single 1-5, inclusive; decimals allowed inside it)
  make the verdict unparsed: the model did not follow the format, so its numbers are not trusted.
* Unparsed is `None`, never a tie (SPEC): the judge retries with a new seed, then records it.

Aggregation: requests form slots (order, sample). A slot's final verdict is its latest parsed
attempt; a slot with no parsed attempt is unparsed (its latest attempt keeps the raw text).

Decision rules, applied in this order; the first failure is the reason:
pairwise
  1. error   `unparsed_verdict`      any slot unparsed after retries, or no slot at all. Partial
                                      verdicts are never used: dropping the swapped order's slot
                                      would silently skip the position-bias check, and a missing
                                      sample would bias the mean.
  2. dropped `tie`                   mean scores equal (a tie is never a preference, whatever
                                      min_margin says).
  3. dropped `order_disagreement`    filter.require_order_agreement and not result.order_agreement.
  4. dropped `margin_below_min`      mean(chosen) - mean(rejected) < filter.min_margin.
  5. dropped `chosen_score_below_min` mean(chosen) < filter.min_chosen_score.
  otherwise kept, reason None.
single
  1. error   `unparsed_verdict`      as above.
  2. dropped `score_below_min`       mean score < filter.min_score.
  otherwise kept, reason None.
Threshold comparisons allow a 1e-9 float tolerance (a margin of 0.9999999999 from averaging
counts as 1.0); tie detection on means uses the same tolerance.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Iterable, Literal, Mapping, Optional, Protocol, Sequence

if TYPE_CHECKING:
    from pipelines.config import Mode

Order = Literal["ab", "ba"]
Winner = Literal["a", "b", "tie"]
Outcome = Literal["kept", "dropped", "error"]

ORDERS: tuple[str, ...] = ("ab", "ba")
KEPT, DROPPED, ERROR = "kept", "dropped", "error"

REASON_UNPARSED = "unparsed_verdict"
REASON_TIE = "tie"
REASON_ORDER_DISAGREEMENT = "order_disagreement"
REASON_MARGIN = "margin_below_min"
REASON_CHOSEN_SCORE = "chosen_score_below_min"
REASON_SCORE = "score_below_min"

# Pairwise (and batch) verdicts score 1-10; single-answer verdicts 1-5 (prompts.SCALES).
SCALES: dict[str, tuple[float, float]] = {"pairwise": (1.0, 10.0), "single": (1.0, 5.0)}
N_SCORES: dict[str, int] = {"pairwise": 2, "single": 1}
EPS = 1e-9

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
_TAG_RE = re.compile(r"<answer>([\s\S]*?)</answer>")
_NUMBER_RE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*")


def answer_region(text: str, *, think_prefilled: bool = False) -> str | None:
    """The part of `text` that may hold the verdict, or None while reasoning is still open."""
    cut = text.rfind(THINK_CLOSE)
    if cut < 0:
        if think_prefilled or THINK_OPEN in text:
            return None
        return text
    region = text[cut + len(THINK_CLOSE):]
    if THINK_OPEN in region:
        return None
    return region


def default_scale(expected: int) -> tuple[float, float]:
    """The Flex-Judge scale for a number of scores: 1 -> single (1-5), otherwise 1-10."""
    return SCALES["single"] if expected == 1 else SCALES["pairwise"]


def parse_scores(
    text: str,
    expected: int,
    *,
    scale: tuple[float, float] | None = None,
    think_prefilled: bool = False,
) -> tuple[float, ...] | None:
    """Scores in the order written, or None when the text is not a well-formed verdict.

    `scale` defaults to `default_scale(expected)`; see the module docstring for every rule.
    """
    if expected < 1:
        raise ValueError("expected must be at least 1")
    if not isinstance(text, str):
        return None
    region = answer_region(text, think_prefilled=think_prefilled)
    if region is None:
        return None
    tags = _TAG_RE.findall(region)
    if len(tags) != expected:
        return None
    low, high = scale if scale is not None else default_scale(expected)
    scores = []
    for content in tags:
        number = _NUMBER_RE.fullmatch(content)
        if number is None:
            return None
        value = float(number.group(1))
        if not low <= value <= high:
            return None
        scores.append(value)
    return tuple(scores)


def parse_verdict(text: str, mode: "Mode", *, think_prefilled: bool = False) -> tuple[float, ...] | None:
    """`parse_scores` with the count and scale of a judging mode."""
    if mode not in N_SCORES:
        raise ValueError(f"unknown judging mode {mode!r}")
    return parse_scores(text, N_SCORES[mode], scale=SCALES[mode], think_prefilled=think_prefilled)


def to_original(scores: Sequence[float], order: str) -> tuple[float, ...]:
    """Scores as shown to the model -> scores of the original answers (a, b). 'ba' flips them back.

    Its own inverse: to_original(to_original(s, o), o) == s.
    """
    if order == "ab":
        return tuple(scores)
    if order == "ba":
        if len(scores) != 2:
            raise ValueError("a swapped ('ba') verdict must hold exactly two scores")
        return (scores[1], scores[0])
    raise ValueError(f"unknown answer order {order!r}; expected 'ab' or 'ba'")


@dataclass(frozen=True)
class Verdict:
    """One judge request's result. `scores` are in the order shown to the model (None: unparsed)."""

    order: Order
    sample: int
    attempt: int
    seed: Optional[int]
    text: str
    scores: Optional[tuple[float, ...]]
    prompt_tokens: int = 0
    output_tokens: int = 0
    finish_reason: Optional[str] = None

    def __post_init__(self) -> None:
        if self.order not in ORDERS:
            raise ValueError(f"unknown answer order {self.order!r}; expected 'ab' or 'ba'")
        if self.scores is not None:
            object.__setattr__(self, "scores", tuple(float(s) for s in self.scores))
            if self.order == "ba" and len(self.scores) != 2:
                raise ValueError("a swapped ('ba') verdict must hold exactly two scores")

    @property
    def parsed(self) -> bool:
        return self.scores is not None

    @property
    def original_scores(self) -> Optional[tuple[float, ...]]:
        """Scores of the original answers (a, b) (single: (score,)); None when unparsed."""
        return None if self.scores is None else to_original(self.scores, self.order)

    @property
    def slot(self) -> tuple[str, int]:
        return (self.order, self.sample)

    @classmethod
    def from_text(
        cls,
        text: str,
        mode: "Mode",
        *,
        order: Order = "ab",
        sample: int = 0,
        attempt: int = 0,
        seed: Optional[int] = None,
        prompt_tokens: int = 0,
        output_tokens: int = 0,
        finish_reason: Optional[str] = None,
        think_prefilled: bool = False,
    ) -> "Verdict":
        """Parse a completion's text into a Verdict."""
        if mode == "single" and order != "ab":
            raise ValueError("single-answer verdicts have only the 'ab' order")
        return cls(
            order=order,
            sample=sample,
            attempt=attempt,
            seed=seed,
            text=text,
            scores=parse_verdict(text, mode, think_prefilled=think_prefilled),
            prompt_tokens=prompt_tokens,
            output_tokens=output_tokens,
            finish_reason=finish_reason,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain values for an Arrow struct column (scores as lists, derived fields included)."""
        original = self.original_scores
        return {
            "order": self.order,
            "sample": self.sample,
            "attempt": self.attempt,
            "seed": self.seed,
            "text": self.text,
            "scores": None if self.scores is None else list(self.scores),
            "original_scores": None if original is None else list(original),
            "prompt_tokens": self.prompt_tokens,
            "output_tokens": self.output_tokens,
            "finish_reason": self.finish_reason,
            "parsed": self.parsed,
        }


def final_verdicts(verdicts: Iterable[Verdict]) -> dict[tuple[str, int], Verdict]:
    """Per (order, sample) slot: the latest parsed attempt, else the latest attempt (unparsed)."""
    best: dict[tuple[str, int], Verdict] = {}
    for verdict in verdicts:
        current = best.get(verdict.slot)
        if current is None or (verdict.parsed, verdict.attempt) > (current.parsed, current.attempt):
            best[verdict.slot] = verdict
    return dict(sorted(best.items()))


def slot_winner(original_scores: Sequence[float]) -> Winner:
    """Winner of one pairwise verdict from the original answers' scores; equal scores tie."""
    a, b = original_scores
    return "a" if a > b else "b" if b > a else "tie"


def _mean(values: Sequence[float]) -> Optional[float]:
    return sum(values) / len(values) if values else None


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
    winner: from the means ("tie" when equal within 1e-9; None when nothing parsed).
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
    def any_unparsed(self) -> bool:
        return bool(self.unparsed_slots)

    @property
    def chosen_score(self) -> Optional[float]:
        return {"a": self.mean_a, "b": self.mean_b}.get(self.winner or "")

    @property
    def rejected_score(self) -> Optional[float]:
        return {"a": self.mean_b, "b": self.mean_a}.get(self.winner or "")


@dataclass(frozen=True)
class SingleResult:
    mean_score: Optional[float]
    n_slots: int
    n_parsed: int
    unparsed: int
    unparsed_slots: tuple[tuple[str, int], ...]

    @property
    def any_unparsed(self) -> bool:
        return self.unparsed > 0


def aggregate_pairwise(verdicts: Iterable[Verdict]) -> PairwiseResult:
    slots = final_verdicts(verdicts)
    parsed: list[Verdict] = []
    unparsed: list[tuple[str, int]] = []
    for slot, verdict in slots.items():
        if verdict.parsed:
            if len(verdict.scores or ()) != 2:
                raise ValueError(f"pairwise verdict {slot} holds {len(verdict.scores or ())} scores, not 2")
            parsed.append(verdict)
        else:
            unparsed.append(slot)
    originals = [v.original_scores or () for v in parsed]
    winners = [slot_winner(s) for s in originals]
    mean_a = _mean([s[0] for s in originals])
    mean_b = _mean([s[1] for s in originals])
    per_order: dict[str, Optional[Winner]] = {}
    for order in ORDERS:
        of_order = [v.original_scores or () for v in parsed if v.order == order]
        per_order[order] = _winner_of_means(_mean([s[0] for s in of_order]), _mean([s[1] for s in of_order]))
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
        winner=_winner_of_means(mean_a, mean_b),
        margin=None if mean_a is None or mean_b is None else abs(mean_a - mean_b),
        n_slots=len(slots),
        n_parsed=len(parsed),
        unparsed_slots=tuple(unparsed),
    )


def aggregate_single(verdicts: Iterable[Verdict]) -> SingleResult:
    slots = final_verdicts(verdicts)
    scores: list[float] = []
    unparsed: list[tuple[str, int]] = []
    for slot, verdict in slots.items():
        if verdict.scores is None:
            unparsed.append(slot)
            continue
        if len(verdict.scores) != 1:
            raise ValueError(f"single verdict {slot} holds {len(verdict.scores)} scores, not 1")
        scores.append(verdict.scores[0])
    return SingleResult(
        mean_score=_mean(scores),
        n_slots=len(slots),
        n_parsed=len(scores),
        unparsed=len(unparsed),
        unparsed_slots=tuple(unparsed),
    )


class PairwiseFilter(Protocol):  # pipelines.config.FilterConfig satisfies it
    min_margin: float
    min_chosen_score: float
    require_order_agreement: bool


class SingleFilter(Protocol):
    min_score: float


def decide_pairwise(result: PairwiseResult, filter_cfg: PairwiseFilter) -> tuple[Outcome, Optional[str]]:
    """(outcome, reason) by the ordered rules of the module docstring; kept rows have reason None."""
    if result.any_unparsed or result.n_parsed == 0 or result.winner is None:
        return ERROR, REASON_UNPARSED
    if result.winner == "tie":
        return DROPPED, REASON_TIE
    if filter_cfg.require_order_agreement and not result.order_agreement:
        return DROPPED, REASON_ORDER_DISAGREEMENT
    if (result.margin or 0.0) + EPS < filter_cfg.min_margin:
        return DROPPED, REASON_MARGIN
    if (result.chosen_score or 0.0) + EPS < filter_cfg.min_chosen_score:
        return DROPPED, REASON_CHOSEN_SCORE
    return KEPT, None


def decide_single(result: SingleResult, filter_cfg: SingleFilter) -> tuple[Outcome, Optional[str]]:
    if result.any_unparsed or result.n_parsed == 0 or result.mean_score is None:
        return ERROR, REASON_UNPARSED
    if result.mean_score + EPS < filter_cfg.min_score:
        return DROPPED, REASON_SCORE
    return KEPT, None


def summary(result: PairwiseResult | SingleResult) -> Mapping[str, Any]:
    """Plain dict of a result (for a judge-details column); slots written as 'order:sample'."""
    out = asdict(result)
    if isinstance(result, PairwiseResult):
        out["chosen_score"], out["rejected_score"] = result.chosen_score, result.rejected_score
    out["unparsed_slots"] = [f"{order}:{sample}" for order, sample in result.unparsed_slots]
    return out
