"""Verdict parsing, flip-back, aggregation and keep/drop/error decisions of the pairwise and single formats."""
from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stages.formats.pairwise import PairwiseFormat
from stages.formats.single import SingleFormat
from stages.formats.verdicts import final_verdicts, parse_scores
from stages.rows import DROPPED, ERRORS, KEPT

PAIRWISE, SINGLE = PairwiseFormat(), SingleFormat()
aggregate_pairwise, decide_pairwise = PAIRWISE.aggregate, PAIRWISE.decide
aggregate_single, decide_single = SINGLE.aggregate, SINGLE.decide


@dataclass
class Filt:  # the fields of the formats' rules (pipelines.config.FilterConfig), without pydantic
    min_margin: float = 1.0
    min_chosen_score: float = 0.0
    require_order_agreement: bool = True
    min_score: float = 3.0


def pv(order, s1, s2, sample=0, attempt=0):
    """A parsed pairwise verdict with scores as shown to the model."""
    return PAIRWISE.verdict(order, (s1, s2), sample=sample, attempt=attempt, seed=attempt, text="t")


def unparsed(order, sample=0, attempt=0, text="garbage"):
    return PAIRWISE.verdict(order, None, sample=sample, attempt=attempt, seed=attempt, text=text)


# ---- parsing ---------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "text,expected",
    [
        ("<think>\nB is vague.\n</think><answer>8</answer><answer>3</answer>", (8.0, 3.0)),
        ("<think>x</think>\n<answer>10</answer>\n<answer>1</answer>", (10.0, 1.0)),
        ("<think>x</think>Scores: <answer> 7 </answer> and <answer>2</answer>.", (7.0, 2.0)),
        ("<think>x</think><answer>7.5</answer><answer>6.25</answer>", (7.5, 6.25)),
        ("<answer>4</answer><answer>9</answer>", (4.0, 9.0)),  # no think at all: whole text
        ("<think>a</think> more </think><answer>4</answer><answer>9</answer>", (4.0, 9.0)),
    ],
)
def test_parse_pairwise_good(text, expected):
    assert parse_scores(text, 2, scale=(1, 10)) == expected
    assert PAIRWISE.parse(text) == expected


def test_quoted_example_inside_think_is_ignored():
    text = (
        "<think>The format is, for example,<answer>3</answer><answer>5</answer>. "
        "Assistant 1 is accurate, 2 hallucinates.</think><answer>9</answer><answer>2</answer>"
    )
    assert PAIRWISE.parse(text) == (9.0, 2.0)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "I think A is better.",
        "<think>x</think>",
        "<think>x</think><answer>8</answer>",  # one tag
        "<think>x</think><answer>8</answer><answer>3</answer><answer>5</answer>",  # three tags
        "<think>x</think><answer>eight</answer><answer>3</answer>",
        "<think>x</think><answer>8/10</answer><answer>3</answer>",
        "<think>x</think><answer>-1</answer><answer>3</answer>",
        "<think>x</think><answer>8</answer><answer>3",  # truncated
        "<think>x</think><answer>8.</answer><answer>3</answer>",
        "<think>x</think><answer></answer><answer>3</answer>",
        "<think>x</think><answer><answer>8</answer><answer>3</answer>",  # nested junk
        # reasoning never closed: the tags are the quoted example, not a verdict
        "<think>for example,<answer>3</answer><answer>5</answer> and then I ran out",
        # reasoning re-opened after the last close
        "<think>a</think><think>example <answer>3</answer><answer>5</answer>",
    ],
)
def test_parse_pairwise_malformed(text):
    assert PAIRWISE.parse(text) is None


@pytest.mark.parametrize(
    "scores,ok",
    [((1, 10), True), ((0, 5), False), ((11, 5), False), ((10.5, 5), False), ((0.5, 1), False), ((9.9, 1.0), True)],
)
def test_pairwise_scale(scores, ok):
    text = f"<think>x</think><answer>{scores[0]}</answer><answer>{scores[1]}</answer>"
    assert (PAIRWISE.parse(text) is not None) is ok


@pytest.mark.parametrize("score,ok", [("1", True), ("5", True), ("3.8", True), ("0", False), ("6", False), ("10", False)])
def test_single_scale(score, ok):
    text = f"<think>x</think><answer>{score}</answer>"
    assert (SINGLE.parse(text) is not None) is ok


def test_explicit_scale():
    assert parse_scores("<answer>42</answer>", 1, scale=(0, 100)) == (42.0,)
    with pytest.raises(ValueError):
        parse_scores("x", 0, scale=(1, 10))


def test_think_prefilled():
    # the prompt ended in "<think>\n": output begins inside the reasoning
    good = "A is better.\n</think><answer>8</answer><answer>3</answer>"
    assert PAIRWISE.parse(good, think_prefilled=True) == (8.0, 3.0)
    open_reasoning = "for example <answer>3</answer><answer>5</answer> and no close"
    assert PAIRWISE.parse(open_reasoning, think_prefilled=True) is None
    assert PAIRWISE.parse(open_reasoning) == (3.0, 5.0)  # without prefill: the model skipped thinking


def test_non_string_text_is_unparsed():
    assert PAIRWISE.parse(None) is None  # type: ignore[arg-type]


# ---- verdict records and flip-back -----------------------------------------------------------

def test_flip_back_swapped_order():
    text = "<think>x</think><answer>9</answer><answer>4</answer>"
    ab = PAIRWISE.read(text, order="ab", sample=0, attempt=0, seed=1, prompt_tokens=10, output_tokens=5, finish_reason="stop")
    ba = PAIRWISE.read(text, order="ba", sample=1, attempt=2, seed=3)
    assert ab.scores == ab.original_scores == (9.0, 4.0)
    assert ba.scores == (9.0, 4.0)  # as shown: the model saw b first
    assert ba.original_scores == (4.0, 9.0)  # a, b
    assert ab.parsed and ba.parsed
    d = ba.to_dict()
    assert d["scores"] == [9.0, 4.0] and d["original_scores"] == [4.0, 9.0]
    assert d["order"] == "ba" and d["sample"] == 1 and d["attempt"] == 2 and d["seed"] == 3 and d["parsed"]
    assert ab.to_dict()["prompt_tokens"] == 10 and ab.to_dict()["finish_reason"] == "stop"


def test_unparsed_verdict_record():
    v = PAIRWISE.read("<think>no answer", order="ba", sample=0, attempt=0, seed=None)
    assert not v.parsed and v.scores is None and v.original_scores is None
    assert v.to_dict()["scores"] is None and v.to_dict()["text"] == "<think>no answer"


def test_verdict_validation():
    fields = dict(sample=0, attempt=0, seed=None, text="")
    with pytest.raises(ValueError):
        PAIRWISE.verdict("xy", None, **fields)
    with pytest.raises(ValueError):
        PAIRWISE.verdict("ba", (3.0,), **fields)
    with pytest.raises(ValueError):
        SINGLE.read("<answer>3</answer>", order="ba", sample=0, attempt=0, seed=None)
    single = SINGLE.read("<think>x</think><answer>4</answer>", sample=0, attempt=0, seed=None)
    assert single.original_scores == (4.0,)


@given(st.tuples(st.floats(1, 10), st.floats(1, 10)), st.sampled_from(["ab", "ba"]))
def test_flipping_twice_is_identity(scores, order):
    assert PAIRWISE.to_original(PAIRWISE.to_original(scores, order), order) == scores


@given(st.tuples(st.integers(1, 10), st.integers(1, 10)))
def test_swapped_view_maps_back_to_same_original(original):
    """Judging (a, b) as shown in 'ba' order and flipping back recovers the original assignment."""
    shown = (original[1], original[0])
    assert pv("ba", *shown).original_scores == tuple(map(float, original))


# ---- aggregation -----------------------------------------------------------------------------

def test_agreement_both_orders_keep():
    # a wins in both orders: ab shows (a, b); ba shows (b, a)
    result = aggregate_pairwise([pv("ab", 8, 3), pv("ba", 4, 9)])
    assert result.mean_a == 8.5 and result.mean_b == 3.5
    assert (result.votes_a, result.votes_b, result.ties) == (2, 0, 0)
    assert result.winner_ab == result.winner_ba == "a"
    assert result.order_agreement and result.winner == "a" and result.margin == 5.0
    assert result.chosen_score == 8.5 and result.rejected_score == 3.5
    assert result.n_slots == result.n_parsed == 2 and not result.unparsed_slots
    assert decide_pairwise(result, Filt()) == (KEPT, None)


def test_position_bias_disagreement():
    # the judge prefers whatever is shown first: ab says a, ba (shown b first) says b
    result = aggregate_pairwise([pv("ab", 8, 5), pv("ba", 9, 7)])
    assert result.winner_ab == "a" and result.winner_ba == "b"
    assert not result.order_agreement and (result.votes_a, result.votes_b) == (1, 1)
    assert result.mean_a == 7.5 and result.mean_b == 7.0 and result.winner == "a"
    assert decide_pairwise(result, Filt()) == (DROPPED, "order_disagreement")
    # without the agreement rule the mean decides, then the margin rule applies
    assert decide_pairwise(result, Filt(require_order_agreement=False)) == (DROPPED, "margin_below_min")
    assert decide_pairwise(result, Filt(require_order_agreement=False, min_margin=0.5)) == (KEPT, None)


def test_tie():
    result = aggregate_pairwise([pv("ab", 6, 6), pv("ba", 6, 6)])
    assert result.winner == "tie" and result.ties == 2 and not result.order_agreement and result.margin == 0
    assert result.chosen_score is None
    assert decide_pairwise(result, Filt(min_margin=0, require_order_agreement=False)) == (DROPPED, "tie")
    # means tie although slots disagree: still a tie, reported first
    split = aggregate_pairwise([pv("ab", 8, 4), pv("ba", 8, 4)])
    assert split.mean_a == split.mean_b == 6 and split.winner == "tie"
    assert decide_pairwise(split, Filt()) == (DROPPED, "tie")


def test_one_tied_slot_breaks_agreement():
    result = aggregate_pairwise([pv("ab", 7, 7), pv("ba", 3, 8)])
    assert result.ties == 1 and result.votes_a == 1 and not result.order_agreement
    assert result.winner == "a"
    assert decide_pairwise(result, Filt()) == (DROPPED, "order_disagreement")


def test_margin_rule():
    result = aggregate_pairwise([pv("ab", 7, 6), pv("ba", 6, 7)])
    assert result.order_agreement and result.margin == 1.0
    assert decide_pairwise(result, Filt(min_margin=1.0)) == (KEPT, None)
    assert decide_pairwise(result, Filt(min_margin=1.5)) == (DROPPED, "margin_below_min")


def test_margin_float_tolerance():
    # means (2.0 + 3.1) / 2 - (2.0 + 1.1) / 2 land a hair under 1.0 in floating point
    result = aggregate_pairwise([pv("ab", 2.0, 2.0, sample=0), pv("ab", 3.1, 1.1, sample=1)])
    assert result.margin < 1.0 and abs(result.margin - 1.0) < 1e-9
    assert decide_pairwise(result, Filt(min_margin=1.0, require_order_agreement=False)) == (KEPT, None)


def test_chosen_score_rule():
    result = aggregate_pairwise([pv("ab", 4, 1), pv("ba", 1, 4)])  # ba shows (b, a) = (1, 4): a wins both
    assert result.winner == "a" and result.chosen_score == 4.0
    assert decide_pairwise(result, Filt(min_chosen_score=4)) == (KEPT, None)
    assert decide_pairwise(result, Filt(min_chosen_score=6)) == (DROPPED, "chosen_score_below_min")
    # rule order: margin is checked before the chosen score
    assert decide_pairwise(result, Filt(min_margin=5, min_chosen_score=6)) == (DROPPED, "margin_below_min")


def test_b_wins():
    result = aggregate_pairwise([pv("ab", 2, 9), pv("ba", 9, 3)])
    assert result.winner == "b" and result.order_agreement
    assert result.chosen_score == 9.0 and result.rejected_score == 2.5
    assert decide_pairwise(result, Filt()) == (KEPT, None)


def test_all_unparsed_is_error():
    result = aggregate_pairwise([unparsed("ab", attempt=a) for a in range(3)] + [unparsed("ba")])
    assert result.n_parsed == 0 and result.winner is None and result.margin is None
    assert result.unparsed_slots == (("ab", 0), ("ba", 0)) and not result.order_agreement
    assert result.ties == 0  # unparsed is never a tie
    assert decide_pairwise(result, Filt()) == (ERRORS, "unparsed_verdict")


def test_mixed_some_slot_unparsed_is_error():
    result = aggregate_pairwise([pv("ab", 9, 2), unparsed("ba"), unparsed("ba", attempt=1)])
    assert result.n_parsed == 1 and result.unparsed_slots == (("ba", 0),)
    assert result.order_agreement  # over the parsed slots only...
    assert result.winner_ba is None
    assert decide_pairwise(result, Filt()) == (ERRORS, "unparsed_verdict")  # ...but never used


def test_retry_that_parsed_counts():
    vs = [unparsed("ab", attempt=0), pv("ab", 8, 2, attempt=1), unparsed("ba", attempt=0), pv("ba", 3, 7, attempt=1)]
    finals = final_verdicts(vs)
    assert [v.attempt for v in finals.values()] == [1, 1]
    result = aggregate_pairwise(vs)
    assert result.n_slots == 2 and result.n_parsed == 2 and not result.unparsed_slots
    assert decide_pairwise(result, Filt()) == (KEPT, None)


def test_final_verdict_unparsed_keeps_latest_text():
    vs = [unparsed("ab", attempt=0, text="first"), unparsed("ab", attempt=2, text="last"), unparsed("ab", attempt=1)]
    assert final_verdicts(vs)[("ab", 0)].text == "last"


def test_empty_is_error():
    assert decide_pairwise(aggregate_pairwise([]), Filt()) == (ERRORS, "unparsed_verdict")
    assert decide_single(aggregate_single([]), Filt()) == (ERRORS, "unparsed_verdict")


def test_samples_votes_and_single_order():
    vs = [pv("ab", 8, 3, sample=0), pv("ab", 7, 5, sample=1), pv("ab", 4, 6, sample=2)]
    result = aggregate_pairwise(vs)
    assert (result.votes_a, result.votes_b) == (2, 1) and result.winner_ab == "a" and result.winner_ba is None
    assert not result.order_agreement  # one order only: every sample must agree
    one = aggregate_pairwise([pv("ab", 8, 3)])
    assert one.order_agreement and decide_pairwise(one, Filt()) == (KEPT, None)


def test_wrong_score_count_is_a_bug():
    with pytest.raises(ValueError):
        PAIRWISE.verdict("ab", (3.0,), sample=0, attempt=0, seed=0, text="")
    with pytest.raises(ValueError):
        aggregate_single([pv("ab", 3, 4)])


@settings(max_examples=100)
@given(
    a=st.integers(1, 10),
    b=st.integers(1, 10),
    samples=st.integers(1, 4),
    swap=st.booleans(),
)
def test_identical_judgements_agree(a, b, samples, swap):
    """The same judgement of (a, b) in every slot, whatever order it was shown in, agrees unless a tie."""
    vs = []
    for s in range(samples):
        vs.append(pv("ab", a, b, sample=s))
        if swap:
            vs.append(pv("ba", b, a, sample=s))
    result = aggregate_pairwise(vs)
    assert result.mean_a == a and result.mean_b == b and result.margin == abs(a - b)
    assert result.order_agreement is (a != b)
    assert result.winner == ("a" if a > b else "b" if b > a else "tie")
    outcome, reason = decide_pairwise(result, Filt(min_margin=0))
    assert (outcome, reason) == ((KEPT, None) if a != b else (DROPPED, "tie"))


@settings(max_examples=100)
@given(st.lists(st.tuples(st.sampled_from(["ab", "ba"]), st.integers(1, 10), st.integers(1, 10)), max_size=6))
def test_swapping_labels_mirrors_result(slots):
    """Renaming a<->b (same judgements) swaps the means and the winner."""
    vs = [pv(o, s1, s2, sample=i) for i, (o, s1, s2) in enumerate(slots)]
    mirrored = [pv("ba" if o == "ab" else "ab", s1, s2, sample=i) for i, (o, s1, s2) in enumerate(slots)]
    r, m = aggregate_pairwise(vs), aggregate_pairwise(mirrored)
    assert (r.mean_a, r.mean_b) == (m.mean_b, m.mean_a)
    assert (r.votes_a, r.votes_b, r.ties) == (m.votes_b, m.votes_a, m.ties)
    assert r.order_agreement == m.order_agreement
    flip = {"a": "b", "b": "a", "tie": "tie", None: None}
    assert flip[r.winner] == m.winner


# ---- single ----------------------------------------------------------------------------------

def sv(text, sample=0, attempt=0):
    return SINGLE.read(text, sample=sample, attempt=attempt, seed=None)


def test_single_keep_drop():
    result = aggregate_single([sv("<think>x</think><answer>4</answer>", 0), sv("<think>y</think><answer>3</answer>", 1)])
    assert result.mean_score == 3.5 and result.n_parsed == 2 and not result.unparsed_slots
    assert decide_single(result, Filt(min_score=3.0)) == (KEPT, None)
    assert decide_single(result, Filt(min_score=4.0)) == (DROPPED, "score_below_min")
    assert decide_single(result, Filt(min_score=3.5)) == (KEPT, None)


def test_single_unparsed():
    result = aggregate_single([sv("<think>x</think><answer>4</answer>", 0), sv("<think>cut off", 1)])
    assert result.unparsed_slots == (("ab", 1),) and result.n_parsed == 1
    assert decide_single(result, Filt()) == (ERRORS, "unparsed_verdict")
    retried = aggregate_single([sv("<think>cut off", 0, 0), sv("<think>x</think><answer>5</answer>", 0, 1)])
    assert not retried.unparsed_slots and retried.mean_score == 5.0
    assert decide_single(retried, Filt()) == (KEPT, None)


def test_filter_config_is_accepted():
    config = pytest.importorskip("pipelines.config")
    filt = config.FilterConfig()
    assert decide_pairwise(aggregate_pairwise([pv("ab", 8, 3), pv("ba", 3, 8)]), filt) == (KEPT, None)
    assert decide_single(aggregate_single([sv("<answer>2</answer>")]), filt) == (DROPPED, "score_below_min")


# ---- judge.aggregate: vote -------------------------------------------------------------------


def voting(mode):
    from pipelines.config import load_config

    return load_config(overrides=[f"mode={mode}", "judge.aggregate=vote"]).judging_format()


def test_pairwise_vote_takes_the_majority_winner_and_keeps_mean_scores():
    # four samples prefer a by one point, three prefer b by eight: the means say b, the vote a
    verdicts = [pv("ab", 6, 5, sample=i) for i in range(4)] + [pv("ab", 1, 9, sample=i) for i in range(4, 7)]
    assert aggregate_pairwise(verdicts).winner == "b"
    result = voting("pairwise").aggregate(verdicts)
    assert (result.winner, result.votes_a, result.votes_b) == ("a", 4, 3)
    assert result.mean_a == pytest.approx(27 / 7) and result.margin == pytest.approx(abs(27 - 47) / 7)


def test_pairwise_votes_that_tie_are_a_tie():
    vote = voting("pairwise")
    assert vote.aggregate([pv("ab", 6, 5, sample=0), pv("ab", 1, 9, sample=1)]).winner == "tie"
    tied = vote.aggregate([pv("ab", 6, 5, sample=0), pv("ab", 5, 5, sample=1)])  # a and tie share the most votes
    assert tied.winner == "tie" and vote.decide(tied, Filt(require_order_agreement=False)) == (DROPPED, "tie")


def test_single_vote_is_the_most_given_score():
    verdicts = [SINGLE.verdict("ab", (s,), sample=i, attempt=0, seed=0, text="t") for i, s in enumerate((2, 2, 5))]
    assert aggregate_single(verdicts).mean_score == pytest.approx(3.0)
    assert voting("single").aggregate(verdicts).mean_score == 2.0
