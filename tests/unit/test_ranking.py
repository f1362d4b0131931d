"""Ranking judging: prompts against SPEC's batch template, verdicts of N scores, flip-back, rules,
preference pairs and evaluation against a human ranking."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pipelines.config import FilterConfig, load_config
from stages.formats.evaluation import LabelledRow
from stages.formats.ranking import RankingFormat
from stages.rows import DROPPED, ERRORS, KEPT, RowRejected

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = json.loads((ROOT / "stages" / "formats" / "flexjudge_prompts.json").read_text(encoding="utf-8"))
BATCH = PROMPTS["user_templates"]["image_batch (VL: mllm_judge batch)"]
SYSTEM = PROMPTS["system"]["mllm_judge_batch_1_10"]
RANKING = RankingFormat()
Q = "Which caption fits?"
ANSWERS = ["A red bus.", "A cat.", "Two dogs {q} on a mat."]
ROW = {"question": Q, "responses": ANSWERS}
VL_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
OMNI_IMAGE = "<|vision_bos|><|IMAGE|><|vision_eos|>"


def chatml(system: str, user: str) -> str:
    return f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


def authors_batch(question: str, answers: list[str], placeholder: str) -> str:
    """SPEC's batch prompt assembled as the authors' code does: header, one block per answer, stripped."""
    text = BATCH["header"].replace(VL_IMAGE, placeholder).replace("{q}", question)
    for i, answer in enumerate(answers, start=1):
        text += BATCH["per_answer_block (i = 1..N, appended in order)"].replace("{i}", str(i)).replace("{answer_i}", answer)
    return text.strip()


def verdict(order, *scores, sample=0, attempt=0):
    return RANKING.verdict(order, scores or None, row=ROW, sample=sample, attempt=attempt, seed=attempt, text="t")


@pytest.mark.parametrize("family, placeholder", [("vl", VL_IMAGE), ("omni", OMNI_IMAGE)])
def test_prompt_is_the_batch_template_per_family(family, placeholder):
    prompt, media = RANKING.request(ROW, "ab", {"image": "pixels"}, family, prefill_think=False)
    assert prompt == chatml(SYSTEM, authors_batch(Q, ANSWERS, placeholder))
    assert media == {"image": "pixels"}
    reversed_prompt, _ = RANKING.request(ROW, "ba", {"image": "pixels"}, family, prefill_think=False)
    assert reversed_prompt == chatml(SYSTEM, authors_batch(Q, ANSWERS[::-1], placeholder))


def test_text_only_prompt_has_no_media_block_and_ends_stripped():
    prompt, media = RANKING.request({"question": Q, "responses": ["x", "y", "z", "w"]}, "ab", {}, "omni",
                                    prefill_think=True)
    user = "[Question]\n" + Q + "\n\n" + "\n\n".join(f"[Assistant {i}'s Answer]\n{a}" for i, a in enumerate("xyzw", 1))
    assert prompt == chatml(SYSTEM, user) + "<think>\n" and media == {}


def test_the_prompt_keeps_the_training_typos_and_forbids_equal_scores():
    assert "DO NOT assign the same score to multiple assistants" in SYSTEM
    assert SYSTEM in RANKING.request(ROW, "ab", {}, "vl", prefill_think=False)[0]


@pytest.mark.parametrize("text, expected", [
    ("<think>ok</think><answer>7</answer><answer>3</answer><answer>10</answer>", (7.0, 3.0, 10.0)),
    ("<think>quoting <answer>1</answer> here</think>\n<answer>2</answer><answer>9</answer><answer>5</answer>", (2.0, 9.0, 5.0)),
    ("<think>a</think><answer>7</answer><answer>3</answer>", None),  # too few: never padded
    ("<think>a</think><answer>7</answer><answer>3</answer><answer>4</answer><answer>4</answer>", None),  # too many
    ("<think>a</think><answer>7</answer><answer>3</answer><answer>11</answer>", None),  # off the scale
    ("<think>a</think><answer>7</answer><answer>three</answer><answer>1</answer>", None),
    ("<think>still thinking <answer>7</answer><answer>3</answer><answer>1</answer>", None),
])
def test_parsing_reads_exactly_n_scores(text, expected):
    assert RANKING.parse(text, row=ROW) == expected


def test_a_verdict_is_read_against_its_row():
    with pytest.raises(ValueError, match="against its row"):
        RANKING.parse("<think></think><answer>1</answer><answer>2</answer>")
    with pytest.raises(ValueError, match="3 score"):
        RANKING.verdict("ab", (1, 2), row=ROW, sample=0, attempt=0, seed=0, text="")


@pytest.mark.parametrize("count", [2, 3, 5])
def test_regex_wants_one_score_per_answer(count):
    row = {"question": Q, "responses": [f"answer {i}" for i in range(count)]}
    rx = RANKING.verdict_regex(row, reasoning_max_chars=50, prefill_think=False)
    tags = "".join(f"<answer>{i + 1}</answer>" for i in range(count))
    assert re.fullmatch(rx, f"<think>why</think>{tags}")
    assert not re.fullmatch(rx, f"<think>why</think>{tags}<answer>1</answer>")
    assert not re.fullmatch(rx, f"<think>why</think>{tags[len('<answer>1</answer>'):]}")
    assert RANKING.parse(f"<think>why</think>{tags}", row=row) == tuple(float(i + 1) for i in range(count))


def test_reversed_order_flips_back():
    result = RANKING.aggregate([verdict("ab", 9, 5, 1), verdict("ba", 1, 6, 8)])
    assert result.scores == (8.5, 5.5, 1.0) and result.ranking == (0, 1, 2)
    assert (result.best, result.worst, result.margin, result.order_agreement) == (0, 2, 7.5, True)


def test_best_answers_that_differ_between_orders_disagree():
    result = RANKING.aggregate([verdict("ab", 9, 5, 1), verdict("ba", 9, 5, 1)])  # position bias: first wins
    assert result.scores == (5.0, 5.0, 5.0) and result.best is None  # a three-way tie on the means
    assert not result.order_agreement
    assert RANKING.decide(result, FilterConfig()) == (DROPPED, "tie")
    biased = RANKING.aggregate([verdict("ab", 9, 5, 1), verdict("ba", 2, 9, 8)])
    assert biased.best == 0 and not biased.order_agreement
    assert RANKING.decide(biased, FilterConfig()) == (DROPPED, "order_disagreement")


@pytest.mark.parametrize("rules, outcome", [
    ({}, (KEPT, None)),
    ({"min_margin": 8.5}, (DROPPED, "margin_below_min")),
    ({"min_chosen_score": 9}, (DROPPED, "chosen_score_below_min")),
])
def test_rules_in_order(rules, outcome):
    result = RANKING.aggregate([verdict("ab", 9, 5, 1), verdict("ba", 1, 5, 8)])
    assert RANKING.decide(result, FilterConfig(**rules)) == outcome


def test_an_unparsed_slot_is_an_error():
    result = RANKING.aggregate([verdict("ab", 9, 5, 1), verdict("ba")])
    assert RANKING.decide(result, FilterConfig()) == (ERRORS, "unparsed_verdict")
    assert RANKING.unparsed_error(result, attempts=3) is not None


def test_labels_best_vs_worst_or_every_pair_above_the_margin():
    result = RANKING.aggregate([verdict("ab", 9, 5, 1)])
    assert RANKING.labels(ROW, result, FilterConfig()) == {
        "chosen": ANSWERS[0], "rejected": ANSWERS[2], "score_chosen": 9.0, "score_rejected": 1.0,
        "preference_pairs": [[0, 2]],
    }
    every = RANKING.labels(ROW, result, FilterConfig(pairs="all_above_margin", min_margin=4))
    assert every["preference_pairs"] == [[0, 1], [0, 2], [1, 2]]
    assert RANKING.labels(ROW, result, FilterConfig(pairs="all_above_margin", min_margin=5))["preference_pairs"] == [
        [0, 2]]  # 9 - 5 and 5 - 1 are below 5


def test_tied_worst_answers_reject_the_later_one():
    result = RANKING.aggregate([verdict("ab", 9, 2, 2)])
    assert (result.best, result.worst) == (0, 2)


def test_response_lists_are_bounded_by_max_responses():
    fmt = load_config(overrides=["mode=ranking", "judge.max_responses=3"]).judging_format()
    get = {"responses": ["a", "b", "c", "d"]}.get
    with pytest.raises(RowRejected, match="2 to 3 responses"):
        fmt.answers(get, {})
    for bad in (["only one"], "not a list", None):
        with pytest.raises(RowRejected):
            fmt.answers({"responses": bad}.get, {})
    assert fmt.answers({"responses": ("a", "b", "c")}.get, {}) == {"responses": ["a", "b", "c"]}
    assert fmt.drop_before_judging({"responses": ["same", " same "]}) == "identical_responses"
    assert fmt.drop_before_judging({"responses": ["same", "other", "same"]}) is None


def test_vote_picks_the_answer_most_verdicts_rank_first():
    voting = load_config(overrides=["mode=ranking", "judge.aggregate=vote"]).judging_format()
    verdicts = [verdict("ab", 6, 5, 1, sample=0), verdict("ab", 6, 5, 1, sample=1), verdict("ab", 1, 10, 1, sample=2)]
    assert RANKING.aggregate(verdicts).best == 1  # means 4.33 vs 6.67: answer 1
    assert voting.aggregate(verdicts).best == 0  # two of three verdicts rank answer 0 first
    split = [verdict("ab", 6, 5, 1, sample=0), verdict("ab", 1, 10, 1, sample=1)]
    assert voting.aggregate(split).best is None  # a tie among votes is a tie
    assert voting.decide(voting.aggregate(split), FilterConfig(require_order_agreement=False)) == (DROPPED, "tie")


def labelled(row_id, ranks, verdicts, outcome=KEPT, group=None, error_reason=None):
    return LabelledRow(row_id, outcome, error_reason, tuple(verdicts), RANKING.canonical_label(ranks), group)


def test_evaluation_top1_and_kendall_tau():
    rows = [
        labelled("right", [0, 1, 2], [verdict("ab", 9, 5, 1)], group="g1"),          # top-1 right, tau 1
        labelled("reversed", [2, 1, 0], [verdict("ab", 9, 5, 1)], group="g1"),       # top-1 wrong, tau -1
        labelled("tied-best", [0, 1, 2], [verdict("ab", 9, 9, 1)], group="g2"),      # judge tie: wrong, tau defined
        labelled("unparsed", [0, 1, 2], [verdict("ab")], ERRORS, "g2", "unparsed_verdict"),
        labelled("undecodable", [0, 1, 2], [], ERRORS, "g2", "image_undecodable"),
    ]
    scores = RANKING.evaluate(rows, FilterConfig())
    assert scores["n"] == 5 and scores["unparsed"] == 1 and scores["not_judged"] == 1
    assert scores["top1_accuracy"] == pytest.approx(1 / 5)
    assert scores["kendall_tau_rows"] == 3
    tied_tau = (2 - 0) / (3 * 2) ** 0.5  # tau-b of (9, 9, 1) against (2, 1, 0): 2 concordant, 0 discordant, 1 tie
    assert scores["kendall_tau"] == pytest.approx((1 - 1 + tied_tau) / 3)
    assert scores["by_group"] == {"g1": 0.5, "g2": 0.0} and scores["macro_accuracy"] == 0.25
    first = scores["thresholds"][0]
    assert first == {"min_margin": 0.0, "require_order_agreement": False, "keep_rate": 2 / 5, "kept_top1_accuracy": 0.5}
    assert RANKING.headline_metrics == ("top1_accuracy", "kendall_tau")


@pytest.mark.parametrize("raw", [[0], "first", None, ["a", "b"]])
def test_a_ranking_label_is_each_answer_rank(raw):
    with pytest.raises(ValueError):
        RANKING.canonical_label(raw)


def test_order_agreement_rate_counts_rows_whose_orders_rank_the_same_answer_first():
    agree = [verdict("ab", 9, 5, 1), verdict("ba", 1, 5, 9)]
    biased = [verdict("ab", 9, 5, 1), verdict("ba", 9, 5, 1)]  # each order ranks its first shown answer first
    one_order = [verdict("ab", 9, 5, 1)]
    assert RANKING.tally(agree) == {"rows_judged_both_orders": 1, "rows_orders_agree": 1}
    assert RANKING.tally(biased) == {"rows_judged_both_orders": 1, "rows_orders_agree": 0}
    assert RANKING.tally(one_order) == {}
    assert RANKING.rates({"rows_judged_both_orders": 4, "rows_orders_agree": 3}) == {"order_agreement_rate": 0.75}
