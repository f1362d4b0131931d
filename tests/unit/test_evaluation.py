"""Judge evaluation metrics on hand-made verdicts whose right answers are worked out by hand."""
from __future__ import annotations

import math

import numpy as np
import pytest

from pipelines.config import FilterConfig
from stages.formats.evaluation import LabelledRow, bootstrap_ci, cohen_kappa, correlations
from stages.formats.pairwise import PairwiseFormat
from stages.formats.single import SingleFormat

PAIRWISE, SINGLE = PairwiseFormat(), SingleFormat()


def pair(*slots, text="t"):
    """Verdicts from (order, shown_a, shown_b) slots; None scores: an unparsed verdict."""
    return tuple(PAIRWISE.verdict(order, None if s1 is None else (s1, s2), sample=0, attempt=0, seed=1, text=text)
                 for order, s1, s2 in slots)


def row(row_id, label, verdicts=(), outcome="kept", group=None, error_reason=None):
    return LabelledRow(row_id, outcome, error_reason, verdicts, label, group)


A_WINS = pair(("ab", 8, 3), ("ba", 3, 8))
B_WINS = pair(("ab", 2, 9), ("ba", 9, 2))
ROWS = [
    row("r1", "a", A_WINS, group="g1"),                                       # correct
    row("r2", "b", A_WINS, outcome="dropped", group="g1"),   # wrong (where it landed does not matter)
    row("r3", "a", pair(("ab", 5, 5), ("ba", 5, 5)), group="g1"),            # judge tie
    row("r4", "b", pair(("ab", None, None), ("ba", None, None)), outcome="errors", group="g2",
        error_reason="unparsed_verdict"),                                     # unparsed
    row("r5", "a", (), outcome="errors", group="g2", error_reason="image_undecodable"),  # not judged
    row("r6", "tie", pair(("ab", 6, 4), ("ba", 6, 4)), group="g1"),          # a human tie; orders disagree
    row("r7", "a", (), outcome="dropped", group="g2"),  # not judged
    row("r8", "b", B_WINS, group="g2"),                                       # correct
]


@pytest.fixture(scope="module")
def scores():
    return PAIRWISE.evaluate(ROWS, FilterConfig(min_margin=1.0, require_order_agreement=True))


def test_counts_and_accuracies(scores):
    assert (scores["n"], scores["human_ties"]) == (7, 1)
    assert (scores["judge_ties"], scores["unparsed"], scores["not_judged"]) == (1, 1, 2)
    assert scores["accuracy"] == pytest.approx(2 / 7)  # ties, unparsed and unjudged rows count as wrong
    assert scores["accuracy_excluding_ties"] == pytest.approx(2 / 3)  # r1, r2, r8 had a winner


def test_kappa_over_rows_where_both_have_a_winner(scores):
    # (judge, human): (a, a), (a, b), (b, b): observed 2/3, chance (2*1 + 1*2) / 9 = 4/9
    assert scores["cohen_kappa"] == pytest.approx((2 / 3 - 4 / 9) / (1 - 4 / 9))


def test_position_bias_rates(scores):
    # both orders judged: r1, r2, r3, r6, r8; the same non-tie winner: r1, r2, r8
    assert scores["order_agreement_rate"] == pytest.approx(3 / 5)
    # verdicts with a winner: 2 each of r1, r2, r6, r8; won by the answer shown first: 1 + 1 + 2 + 1
    assert scores["first_position_win_rate"] == pytest.approx(5 / 8)


def test_groups_and_macro_accuracy(scores):
    assert scores["by_group"] == {"g1": pytest.approx(1 / 3), "g2": pytest.approx(1 / 4)}
    assert scores["macro_accuracy"] == pytest.approx((1 / 3 + 1 / 4) / 2)


def test_threshold_table(scores):
    table = {(t["min_margin"], t["require_order_agreement"]): t for t in scores["thresholds"]}
    assert sorted({m for m, _ in table}) == [i / 2 for i in range(19)]  # 0 .. 9 (the 1-10 scale's span)
    assert table[(0.0, False)]["keep_rate"] == pytest.approx(3 / 7)  # r1, r2, r8: judged, not tied
    assert table[(0.0, False)]["kept_accuracy"] == pytest.approx(2 / 3)
    assert table[(6.0, False)] == {"min_margin": 6.0, "require_order_agreement": False,
                                   "keep_rate": pytest.approx(1 / 7), "kept_accuracy": 1.0}  # only r8's margin 7
    assert table[(7.5, True)]["keep_rate"] == 0 and table[(7.5, True)]["kept_accuracy"] is None
    keep = [table[(m / 2, False)]["keep_rate"] for m in range(19)]
    assert keep == sorted(keep, reverse=True)  # a higher margin never keeps more


def test_accuracy_interval_is_reproducible_and_brackets_the_estimate(scores):
    low, high = scores["accuracy_ci"]
    assert low <= scores["accuracy"] <= high
    assert PAIRWISE.evaluate(ROWS, FilterConfig())["accuracy_ci"] == [low, high]


def test_undefined_statistics_are_null_not_errors():
    one_class = [row(f"r{i}", "a", A_WINS) for i in range(4)]
    scores = PAIRWISE.evaluate(one_class, FilterConfig())
    assert scores["accuracy"] == 1.0 and scores["cohen_kappa"] is None  # chance agreement is 1
    assert scores["by_group"] == {} and scores["macro_accuracy"] is None
    empty = PAIRWISE.evaluate([], FilterConfig())
    assert empty["n"] == 0 and empty["accuracy"] is None and empty["accuracy_ci"] is None
    assert empty["order_agreement_rate"] is None


@pytest.mark.parametrize("raw, label", [
    ("a", "a"), ("B", "b"), (" tie ", "tie"), ("A", "a"), ("C", "tie"),
    ([0, 1], "a"), ([1, 0], "b"), ([1, 1], "tie"), ((2, 5), "a"),
])
def test_pairwise_label_encodings(raw, label):
    assert PAIRWISE.canonical_label(raw) == label


@pytest.mark.parametrize("raw", [None, "", "first", [0, 1, 2], ["a", "b"], 1])
def test_unreadable_pairwise_labels_are_refused(raw):
    with pytest.raises(ValueError):
        PAIRWISE.canonical_label(raw)


def test_kappa_known_values():
    assert cohen_kappa([]) is None
    assert cohen_kappa([("a", "a")] * 3) is None
    assert cohen_kappa([("a", "a"), ("b", "b"), ("a", "b"), ("b", "a")]) == pytest.approx(0.0)
    assert cohen_kappa([("a", "a"), ("b", "b")]) == pytest.approx(1.0)
    assert cohen_kappa([("a", "b"), ("b", "a")]) == pytest.approx(-1.0)


# ---- single -------------------------------------------------------------------------------------

def single(*scores):
    return tuple(SINGLE.verdict("ab", None if s is None else (s,), sample=i, attempt=0, seed=i, text="t")
                 for i, s in enumerate(scores))


SINGLE_ROWS = [
    row("s1", 4.5, single(4, 4)),
    row("s2", 1.0, single(2, 2), outcome="dropped"),
    row("s3", 3.0, single(3, 3)),
    row("s4", 5.0, single(None), outcome="errors", error_reason="unparsed_verdict"),
    row("s5", 2.0, (), outcome="errors", error_reason="audio_undecodable"),
]


def test_single_mode_correlations_and_counts():
    scores = SINGLE.evaluate(SINGLE_ROWS, FilterConfig(min_score=3))
    assert (scores["n"], scores["scored"], scores["unparsed"], scores["not_judged"]) == (5, 3, 1, 1)
    judge, human = np.array([4.0, 2.0, 3.0]), np.array([4.5, 1.0, 3.0])
    assert scores["pearson"] == pytest.approx(float(np.corrcoef(judge, human)[0, 1]))
    assert scores["spearman"] == pytest.approx(1.0) and scores["kendall_tau"] == pytest.approx(1.0)
    assert scores["mse"] == pytest.approx(((4 - 4.5) ** 2 + (2 - 1) ** 2) / 3)
    table = {t["min_score"]: t for t in scores["thresholds"]}
    assert sorted(table) == [1 + i / 2 for i in range(9)]
    assert table[3.0]["keep_rate"] == pytest.approx(2 / 5) and table[3.0]["kept_mean_label"] == pytest.approx(3.75)
    assert table[5.0]["keep_rate"] == 0 and table[5.0]["kept_mean_label"] is None


def test_single_labels_and_undefined_correlations():
    assert SINGLE.canonical_label("3.8") == 3.8 and SINGLE.canonical_label(4) == 4.0
    for bad in (None, "good", float("nan")):
        with pytest.raises(ValueError):
            SINGLE.canonical_label(bad)
    flat = correlations([3.0, 3.0, 3.0], [1.0, 2.0, 3.0])
    assert flat["pearson"] is None and flat["spearman"] is None and flat["mse"] == pytest.approx(5 / 3)


def test_bootstrap_interval():
    assert bootstrap_ci([1.0], lambda s: sum(s) / len(s)) is None
    values = [float(v) for v in range(20)]
    low, high = bootstrap_ci(values, lambda s: sum(s) / len(s))
    assert low < 9.5 < high and not math.isclose(low, high)
    assert bootstrap_ci(values, lambda s: sum(s) / len(s)) == [low, high]


def test_report_rates_come_from_summed_tallies():
    tallies = {}
    for verdicts in (A_WINS, pair(("ab", 6, 4), ("ba", 6, 4))):
        for key, count in PAIRWISE.tally(verdicts).items():
            tallies[key] = tallies.get(key, 0) + count
    assert PAIRWISE.rates(tallies) == {"order_agreement_rate": 0.5, "first_position_win_rate": 0.75}
    assert SINGLE.rates(SINGLE.tally(single(4))) == {}
