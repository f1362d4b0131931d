"""Choice judging (GenAI-Bench): prompts against the authors' templates, the four options, the
swapped order mapped back, rules, vote, the diffusion-DPO preference rows and evaluation."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pytest

from pipelines.config import FilterConfig, load_config
from stages.formats.choice import ChoiceFormat
from stages.formats.evaluation import LabelledRow
from stages.rows import DROPPED, ERRORS, KEPT, RowRejected

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = json.loads((ROOT / "stages" / "formats" / "flexjudge_prompts.json").read_text(encoding="utf-8"))
TEMPLATES, SYSTEM = PROMPTS["user_templates"], PROMPTS["system"]
CHOICE = ChoiceFormat()
VOTING = load_config(overrides=["mode=choice", "judge.aggregate=vote"]).judging_format()
PROMPT = "A {red} fox in snow"
IMAGE_ROW = {"question": PROMPT, "left_image": {"bytes": b"L"}, "right_image": {"bytes": b"R"}}
VIDEO_ROW = {"question": PROMPT, "left_video": {"bytes": b"L"}, "right_video": {"bytes": b"R"}}
EDIT_ROW = {"source_image": {"bytes": b"S"}, "left_image": {"bytes": b"L"}, "right_image": {"bytes": b"R"},
            "source_prompt": "a fox", "target_prompt": "a red fox", "instruct_prompt": "make it red"}
OMNI = {"Image": "<|vision_bos|><|IMAGE|><|vision_eos|>", "Video": "<|vision_bos|><|VIDEO|><|vision_eos|>"}


def chatml(system: str, user: str) -> str:
    return f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


def authors_prompt(template_key: str, input_type: str, family: str, **texts: str) -> str:
    """The authors' template filled as their code does: VL's placeholder, or the Omni family's block."""
    text = TEMPLATES[template_key].replace("{input_type}", input_type)
    if family == "vl":
        text = text.replace("{placeholder}", TEMPLATES["genai_placeholders"][input_type])
    else:
        text = text.replace("<|vision_start|>{placeholder}<|vision_end|>", OMNI[input_type])
    for name, value in texts.items():
        text = text.replace("{" + name + "}", value)
    return text


@pytest.mark.parametrize("family", ["vl", "omni"])
def test_image_and_video_prompts_are_the_authors(family):
    media = {"left_image": "L", "right_image": "R", "left_video": "LV", "right_video": "RV"}
    prompt, data = CHOICE.request(IMAGE_ROW, "ab", media, family, prefill_think=False)
    user = authors_prompt("genai_image_or_video (VL)", "Image", family, prompt=PROMPT)
    assert prompt == chatml(SYSTEM["genai_bench_image"], user) and data == {"image": ["L", "R"]}
    prompt, data = CHOICE.request(VIDEO_ROW, "ba", media, family, prefill_think=False)
    user = authors_prompt("genai_image_or_video (VL)", "Video", family, prompt=PROMPT)
    assert prompt == chatml(SYSTEM["genai_bench_video"], user) and data == {"video": ["RV", "LV"]}  # swapped


@pytest.mark.parametrize("family", ["vl", "omni"])
def test_editing_prompt_keeps_the_typo_and_shows_the_source_first(family):
    media = {"source_image": "S", "left_image": "L", "right_image": "R"}
    prompt, data = CHOICE.request(EDIT_ROW, "ba", media, family, prefill_think=True)
    user = authors_prompt("genai_editing (VL; note 'Assistant Edited B's' typo)", "Image", family,
                          source_prompt="a fox", target_prompt="a red fox", instruct_prompt="make it red")
    assert prompt == chatml(SYSTEM["genai_bench_editing"], user) + "<think>\n"
    assert "[Assistant Edited B's Image]" in prompt and data == {"image": ["S", "R", "L"]}


@pytest.mark.parametrize("text, marks", [
    ("<think>x</think><answer>[[A>B]]</answer>", (1.0, 0.0)),
    ("<think>x</think><answer>[[B>A]]</answer>", (0.0, 1.0)),
    ("<think>x</think>\n<answer>[[A=B=Good]]</answer>", (1.0, 1.0)),
    ("<think>quoting <answer>[[A>B]]</answer></think><answer> [[A=B=Bad]] </answer>", (0.0, 0.0)),
    ("<think>x</think><answer>A>B</answer>", None),
    ("<think>x</think><answer>[[A<B]]</answer>", None),
    ("<think>x</think><answer>[[A>B]]</answer><answer>[[B>A]]</answer>", None),
    ("<think>x</think><answer>[[A>B]] because</answer>", None),
    ("<think>x <answer>[[A>B]]</answer>", None),
])
def test_parsing_the_four_options(text, marks):
    assert CHOICE.parse(text) == marks


def test_regex_allows_exactly_the_four_options():
    rx = CHOICE.verdict_regex(reasoning_max_chars=30, prefill_think=False)
    for option in ("A>B", "B>A", "A=B=Good", "A=B=Bad"):
        text = f"<think>hm</think><answer>[[{option}]]</answer>"
        assert re.fullmatch(rx, text) and CHOICE.parse(text) is not None
    for bad in ("[[A<B]]", "A>B", "[[A=B]]", "[[A>B]] "):
        assert not re.fullmatch(rx, f"<think>hm</think><answer>{bad}</answer>")
    xgr = pytest.importorskip("xgrammar")
    xgr.Grammar.from_regex(rx)


def verdict(order, option, sample=0):
    marks = CHOICE.parse(f"<think></think><answer>[[{option}]]</answer>") if option else None
    return CHOICE.verdict(order, marks, sample=sample, attempt=0, seed=0, text=str(option))


def test_the_swapped_order_maps_back():
    assert verdict("ba", "A>B").original_scores == (0.0, 1.0)  # A was the right medium
    result = CHOICE.aggregate([verdict("ab", "B>A"), verdict("ba", "A>B")])
    assert (result.winner, result.order_agreement) == ("b", True)
    assert CHOICE.decide(result, FilterConfig()) == (KEPT, None)


@pytest.mark.parametrize("options, winner, outcome", [
    (["A=B=Bad", "A=B=Bad"], "both_bad", (DROPPED, "both_bad")),
    (["A=B=Good", "A=B=Good"], "tie", (DROPPED, "tie")),
    (["A>B", "B>A"], "a", (KEPT, None)),
])
def test_rules_in_order(options, winner, outcome):
    result = CHOICE.aggregate([verdict("ab", options[0]), verdict("ba", options[1])])
    assert result.winner == winner and CHOICE.decide(result, FilterConfig()) == outcome


def test_each_order_picking_its_first_medium_is_no_preference():
    result = CHOICE.aggregate([verdict("ab", "A>B"), verdict("ba", "A>B")])  # position bias: left, then right
    assert result.winner == "tie" and not result.order_agreement
    assert CHOICE.decide(result, FilterConfig(require_order_agreement=False)) == (DROPPED, "tie")


def test_disagreement_with_a_winner_is_dropped_unless_agreement_is_off():
    result = CHOICE.aggregate([verdict("ab", "A>B", 0), verdict("ab", "A>B", 1), verdict("ba", "A=B=Good")])
    assert result.winner == "a" and not result.order_agreement
    assert CHOICE.decide(result, FilterConfig()) == (DROPPED, "order_disagreement")
    assert CHOICE.decide(result, FilterConfig(require_order_agreement=False)) == (KEPT, None)


def test_unparsed_is_an_error():
    result = CHOICE.aggregate([verdict("ab", "A>B"), verdict("ba", None)])
    assert CHOICE.decide(result, FilterConfig()) == (ERRORS, "unparsed_verdict")


def test_vote_keeps_the_majority_option_and_ties_tie():
    seven = [verdict("ab", "A=B=Bad", 0), verdict("ab", "A=B=Bad", 1), verdict("ab", "A=B=Bad", 2),
             verdict("ab", "A>B", 3), verdict("ab", "A>B", 4), verdict("ab", "B>A", 5), verdict("ab", "A=B=Good", 6)]
    assert VOTING.aggregate(seven).winner == "both_bad"
    assert CHOICE.aggregate(seven).winner == "a"  # the means: left good in 3 of 7, right in 2 of 7
    assert VOTING.aggregate([verdict("ab", "A>B", 0), verdict("ab", "B>A", 1)]).winner == "tie"
    assert VOTING.aggregate(seven).columns()["votes_both_bad"] == 3


def test_rows_hold_two_images_or_two_videos():
    CHOICE.check_row(IMAGE_ROW)
    CHOICE.check_row(VIDEO_ROW)
    CHOICE.check_row(EDIT_ROW)
    with pytest.raises(RowRejected, match="right_image missing"):
        CHOICE.check_row({"question": "p", "left_image": {"bytes": b"L"}})
    with pytest.raises(RowRejected, match="not both"):
        CHOICE.check_row({**IMAGE_ROW, **VIDEO_ROW})
    assert CHOICE.required_columns({"question": "prompt"}, ["prompt", "left_image", "right_image"]) == [
        "prompt", "left_image", "right_image"]
    assert CHOICE.required_columns({}, ["question", "left_video", "right_video"]) == [
        "question", "left_video", "right_video"]
    assert CHOICE.media_per_prompt() == {"image": 3, "audio": 0, "video": 2}


def test_preference_rows_are_a_diffusion_dpo_layout():
    empty = dict.fromkeys([*CHOICE.columns(), "votes_a", "votes_b"])
    kept = pa.Table.from_pylist([
        {**empty, "id": "i", **IMAGE_ROW, "winner": "b", "votes_b": 2, "judge_model": "m"},
        {**empty, "id": "v", **VIDEO_ROW, "winner": "a", "votes_a": 1, "judge_model": "m"},
        {**empty, "id": "e", **EDIT_ROW, "winner": "a", "votes_a": 2, "judge_model": "m"},
    ])
    rows = {row["id"]: row for row in CHOICE.preference_rows(kept).to_pylist()}
    assert rows["i"]["caption"] == PROMPT and rows["i"]["jpg_0"]["bytes"] == b"R" and rows["i"]["jpg_1"]["bytes"] == b"L"
    assert rows["i"]["label_0"] == 1.0 and rows["i"]["video_0"] is None and rows["i"]["votes"] == 2
    assert rows["v"]["video_0"]["bytes"] == b"L" and rows["v"]["video_1"]["bytes"] == b"R" and rows["v"]["jpg_0"] is None
    assert rows["e"]["caption"] == "make it red" and rows["e"]["source_image"]["bytes"] == b"S"
    assert rows["e"]["jpg_0"]["bytes"] == b"L"
    features = json.loads(CHOICE.preference_schema().metadata[b"huggingface"])["info"]["features"]
    assert features["jpg_0"]["_type"] == "Image" and features["video_0"]["_type"] == "Video"


@pytest.mark.parametrize("raw, label", [("leftvote", "a"), ("rightvote", "b"), ("tievote", "tie"),
                                        ("bothbad_vote", "both_bad"), (" LeftVote ", "a"), ("both_bad", "both_bad")])
def test_genai_bench_votes(raw, label):
    assert CHOICE.canonical_label(raw) == label


def test_evaluation_with_and_without_ties():
    def row(row_id, vote, verdicts, outcome=KEPT, error_reason=None):
        return LabelledRow(row_id, outcome, error_reason, tuple(verdicts), CHOICE.canonical_label(vote), "g")

    rows = [
        row("left-right", "leftvote", [verdict("ab", "A>B"), verdict("ba", "B>A")]),          # correct
        row("right-wrong", "rightvote", [verdict("ab", "A>B"), verdict("ba", "B>A")]),        # wrong
        row("tie-right", "tievote", [verdict("ab", "A=B=Good"), verdict("ba", "A=B=Good")]),  # correct (with ties)
        row("bad-wrong", "bothbad_vote", [verdict("ab", "A>B"), verdict("ba", "B>A")]),       # wrong
        row("unparsed", "leftvote", [verdict("ab", None)], ERRORS, "unparsed_verdict"),      # wrong
    ]
    scores = CHOICE.evaluate(rows, FilterConfig())
    assert scores["n"] == 5 and scores["human_ties"] == 2 and scores["unparsed"] == 1 and scores["not_judged"] == 0
    assert scores["accuracy_with_ties"] == pytest.approx(2 / 5)
    assert scores["accuracy_without_ties"] == pytest.approx(1 / 3)
    assert scores["judge_options"] == {"a": 3, "tie": 1, "none": 1}
    assert scores["by_group"] == {"g": pytest.approx(2 / 5)}
    assert scores["order_agreement"][1] == {"require_order_agreement": True, "keep_rate": 0.6, "kept_accuracy": 1 / 3}


def test_position_bias_rates():
    biased = CHOICE.tally([verdict("ab", "A>B"), verdict("ba", "A>B")])  # the first shown medium wins twice
    agreed = CHOICE.tally([verdict("ab", "B>A"), verdict("ba", "A>B")])  # right wins in both orders
    no_winner = CHOICE.tally([verdict("ab", "A=B=Good"), verdict("ba", "A=B=Bad")])
    assert biased == {"rows_judged_both_orders": 1, "rows_orders_agree": 0, "verdicts_with_winner": 2,
                      "first_position_wins": 2}
    assert agreed == {"rows_judged_both_orders": 1, "rows_orders_agree": 1, "verdicts_with_winner": 2,
                      "first_position_wins": 1}
    assert no_winner == {"rows_judged_both_orders": 1, "rows_orders_agree": 0}
    total = {key: biased.get(key, 0) + agreed.get(key, 0) + no_winner.get(key, 0) for key in biased}
    assert CHOICE.rates(total) == {"order_agreement_rate": 1 / 3, "first_position_win_rate": 3 / 4}
