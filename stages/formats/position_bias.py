"""Position-bias evidence of the formats judged in two orders (pairwise, ranking, choice), counted per
row (`tally`, summed by the run report) and turned into rates (`rates`).

`order_agreement_rate`: over rows judged in both orders, the fraction whose two orders pick the same
winner (a tie or no winner in either order disagrees). `first_position_win_rate`: over every final
verdict with a winner between two shown items, the fraction won by the one shown first (0.5: no bias;
formats without a two-way winner leave it out).
"""
from __future__ import annotations

from collections import Counter
from typing import Callable, Hashable, Iterable, Mapping, Optional, Sequence

from stages.formats.evaluation import ratio
from stages.formats.verdicts import ORDERS, Verdict, final_verdicts


def tally(
    verdicts: Sequence[Verdict],
    winner: Callable[[list[Verdict]], Optional[Hashable]],
    first_shown_wins: Callable[[Verdict], Optional[bool]] | None = None,
) -> dict[str, int]:
    """Counts over one row's verdicts. `winner`: the winner of one order's parsed verdicts (None: a tie
    or none); `first_shown_wins`: whether a verdict's first shown item won (None: no winner)."""
    slots = [v for v in final_verdicts(verdicts).values() if v.parsed]
    counts: Counter[str] = Counter()
    by_order = {order: [v for v in slots if v.order == order] for order in ORDERS}
    if all(by_order.values()):
        counts["rows_judged_both_orders"] += 1
        first, second = (winner(by_order[order]) for order in ORDERS)
        counts["rows_orders_agree"] += first is not None and first == second
    if first_shown_wins is not None:
        for verdict in slots:
            won = first_shown_wins(verdict)
            if won is not None:
                counts["verdicts_with_winner"] += 1
                counts["first_position_wins"] += won
    return dict(counts)


def rates(tallies: Mapping[str, int]) -> dict[str, Optional[float]]:
    return {
        "order_agreement_rate": ratio(tallies.get("rows_orders_agree", 0), tallies.get("rows_judged_both_orders", 0)),
        "first_position_win_rate": ratio(tallies.get("first_position_wins", 0), tallies.get("verdicts_with_winner", 0)),
    }


def summed_rates(tallies: Iterable[Mapping[str, int]]) -> dict[str, Optional[float]]:
    """The rates over many rows' tallies (evaluation's rows)."""
    total: Counter[str] = Counter()
    for counts in tallies:
        total.update(counts)
    return rates(total)


def first_of_two_wins(verdict: Verdict) -> Optional[bool]:
    """For verdicts of two items' scores (or marks) as shown: whether the first scored higher; None when equal."""
    first, second = verdict.scores or (0.0, 0.0)
    return None if first == second else first > second
