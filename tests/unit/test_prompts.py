"""Prompt rendering of the judging formats against strings assembled from prompts.json and SPEC.md's templates."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stages.engines.families import PLACEHOLDERS
from stages.formats.pairwise import PairwiseFormat
from stages.formats.preferences import trl_user_message
from stages.formats.prompts import SpecialTokenInText, chat_prompt
from stages.formats.registry import judging_format
from stages.formats.single import SingleFormat

ROOT = Path(__file__).resolve().parents[2]
VENDORED = json.loads((ROOT / "stages" / "formats" / "flexjudge_prompts.json").read_text(encoding="utf-8"))
PAIRWISE, SINGLE = PairwiseFormat(), SingleFormat()
SYSTEM = VENDORED["system"]
PAIR_SYS = SYSTEM["train_pairwise_1_10__judgelrm_generation"]
SINGLE_SYS = SYSTEM["mllm_judge_score_1_5"]

OMNI_IMG = "<|vision_bos|><|IMAGE|><|vision_eos|>"
OMNI_VID = "<|vision_bos|><|VIDEO|><|vision_eos|>"
OMNI_AUD = "<|audio_bos|><|AUDIO|><|audio_eos|>"
VL_IMG = "<|vision_start|><|image_pad|><|vision_end|>"
VL_VID = "<|vision_start|><|video_pad|><|vision_end|>"

Q, A1, A2 = "What is shown?", "A cat.", "A dog on a mat."


def render_pairwise(question, a1, a2, media, family):
    return PAIRWISE.user_message(question, [a1, a2], media, family)


def render_single(question, answer, media, family):
    return SINGLE.user_message(question, [answer], media, family)


def build(fmt, family, answers, media, prefill=False, order="ab", question=Q):
    row = {"question": question, **dict(zip(fmt.answer_columns, answers))}
    decoded = {modality: object() for modality in media}  # the prompt depends on which media, not their data
    return fmt.request(row, order, decoded, family, prefill_think=prefill)[0]


def verdict_regex(mode, *, reasoning_max_chars, prefill_think):
    return judging_format(mode).verdict_regex(reasoning_max_chars=reasoning_max_chars, prefill_think=prefill_think)


def chatml(system: str, user: str, prefill: bool = False) -> str:
    text = f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    return text + ("<think>\n" if prefill else "")


def test_vendored_json_matches_shared_copy():
    shared = Path("/work/shared/flexjudge/prompts.json")
    if not shared.exists():
        pytest.skip("shared spec not present")
    assert json.loads(shared.read_text(encoding="utf-8")) == VENDORED


def test_system_prompts_verbatim():
    assert build(PAIRWISE, "omni", [A1, A2], []).startswith(f"<|im_start|>system\n{PAIR_SYS}<|im_end|>")
    assert build(SINGLE, "vl", [A1], []).startswith(f"<|im_start|>system\n{SINGLE_SYS}<|im_end|>")
    # the typos and quirks the model saw stay in place
    assert "judge the performance of an AI assistants" in build(SINGLE, "omni", [A1], [])
    assert "for example,<answer>3</answer><answer>5</answer>" in build(PAIRWISE, "vl", [A1, A2], [])


def test_pairwise_vl_image_matches_authors_template():
    template = VENDORED["user_templates"]["image_pair_answers (VL: mllm_judge pair, vl_rewardbench)"]
    expected = template.replace("{q}", Q).replace("{a1}", A1).replace("{a2}", A2)
    assert render_pairwise(Q, A1, A2, ["image"], "vl") == expected


def test_single_vl_image_matches_authors_template():
    template = VENDORED["user_templates"]["image_single_answer (VL: mllm_judge score)"]
    expected = template.replace("{q}", Q).replace("{a1}", A1)
    assert render_single(Q, A1, ["image"], "vl") == expected


def test_text_only_pairwise_matches_training_template():
    template = VENDORED["user_templates"]["text_pair (judgelm, training)"]
    expected = template.replace("{question}", Q).replace("{answer_1}", A1).replace("{answer_2}", A2)
    for family in ("omni", "vl"):
        rendered = render_pairwise(Q, A1, A2, [], family)
        assert rendered == expected
        assert rendered.startswith("[Question]\n")


def test_text_only_single_has_no_media_block():
    assert render_single(Q, A1, (), "omni") == f"[Question]\n{Q}\n\n[Assistant's Answer]\n{A1}"


@pytest.mark.parametrize(
    "family,media,block",
    [
        ("omni", ["image"], OMNI_IMG),
        ("omni", ["video"], OMNI_VID),
        ("omni", ["audio"], OMNI_AUD),
        ("omni", ["image", "audio"], OMNI_IMG + OMNI_AUD),
        ("omni", ["audio", "image", "video"], OMNI_AUD + OMNI_IMG + OMNI_VID),
        ("vl", ["image"], VL_IMG),
        ("vl", ["video"], VL_VID),
        ("vl", ["video", "image"], VL_VID + VL_IMG),
        ("vl", ["image", "image"], VL_IMG + VL_IMG),
    ],
)
def test_media_block_per_family(family, media, block):
    pair = f"{block}\n\n[Question]\n{Q}\n\n[Assistant 1's Answer]\n{A1}\n\n[Assistant 2's Answer]\n{A2}"
    single = f"{block}\n\n[Question]\n{Q}\n\n[Assistant's Answer]\n{A1}"
    assert render_pairwise(Q, A1, A2, media, family) == pair
    assert render_single(Q, A1, media, family) == single


def test_vl_audio_is_a_clear_error():
    with pytest.raises(ValueError, match="audio"):
        render_pairwise(Q, A1, A2, ["image", "audio"], "vl")
    with pytest.raises(ValueError, match="audio"):
        build(SINGLE, "vl", [A1], ["audio"])


def test_unknown_modality_family_mode():
    with pytest.raises(ValueError):
        render_single(Q, A1, ["pointcloud"], "omni")
    with pytest.raises(ValueError):
        render_single(Q, A1, ["image"], "llava")
    with pytest.raises(ValueError):
        judging_format("batch")
    with pytest.raises(TypeError):
        render_single(Q, A1, "image", "omni")


def test_braces_and_format_fields_survive():
    q = "Fill {answer_1} and {} and {q} {{x}} %s {0}"
    a = "def f(): return {'k': 1}"
    rendered = render_pairwise(q, a, "{a2}", ["image"], "omni")
    assert rendered == f"{OMNI_IMG}\n\n[Question]\n{q}\n\n[Assistant 1's Answer]\n{a}\n\n[Assistant 2's Answer]\n{{a2}}"
    assert q in build(SINGLE, "omni", [a], [], question=q)


@pytest.mark.parametrize("bad", ["<|im_end|>", "<|IMAGE|>", "<|image_pad|>", "x<|im_start|>assistant"])
def test_special_token_literals_in_user_text_rejected(bad):
    with pytest.raises(SpecialTokenInText):
        render_pairwise(Q, A1 + bad, A2, [], "omni")
    with pytest.raises(ValueError):
        render_single(bad, A1, ["image"], "vl")


def test_think_and_answer_tags_in_user_text_are_allowed():
    # not special tokens in Qwen2.5; an answer may legitimately discuss them
    a = "use <think> and <answer>10</answer>"
    assert a in render_single(Q, a, [], "omni")


@pytest.mark.parametrize("prefill", [False, True])
def test_chat_prompt(prefill):
    assert chat_prompt("SYS", "USER", prefill_think=prefill) == chatml("SYS", "USER", prefill)
    wrapper = VENDORED["full_prompt_wrappers"]["omni_manual (mj_bench omni, nisqa, bvcc, somos, voxsim)"]
    base = wrapper.replace("{SYSTEM_PROMPT}", "SYS").replace("{text}", "USER")
    assert chat_prompt("SYS", "USER", prefill_think=prefill) == base + ("<think>\n" if prefill else "")


@pytest.mark.parametrize("prefill", [False, True])
@pytest.mark.parametrize("family", ["omni", "vl"])
def test_full_prompts(family, prefill):
    img = OMNI_IMG if family == "omni" else VL_IMG
    user = f"{img}\n\n[Question]\n{Q}\n\n[Assistant 1's Answer]\n{A1}\n\n[Assistant 2's Answer]\n{A2}"
    assert build(PAIRWISE, family, [A1, A2], ["image"], prefill) == chatml(PAIR_SYS, user, prefill)
    swapped = f"{img}\n\n[Question]\n{Q}\n\n[Assistant 1's Answer]\n{A2}\n\n[Assistant 2's Answer]\n{A1}"
    assert build(PAIRWISE, family, [A1, A2], ["image"], prefill, order="ba") == chatml(PAIR_SYS, swapped, prefill)
    user = f"[Question]\n{Q}\n\n[Assistant's Answer]\n{A1}"
    assert build(SINGLE, family, [A1], [], prefill) == chatml(SINGLE_SYS, user, prefill)


def test_answer_count_checked():
    with pytest.raises(ValueError):
        PAIRWISE.user_message(Q, [A1], [], "omni")
    with pytest.raises(ValueError):
        SINGLE.user_message(Q, [A1, A2], [], "omni")
    with pytest.raises(ValueError):
        build(PAIRWISE, "omni", [A1, A2], [], order="xy")
    with pytest.raises(ValueError):
        build(SINGLE, "omni", [A1], [], order="ba")


def test_trl_user_message():
    msg = trl_user_message("Q {x}?", ["image", "audio"])
    assert msg == {
        "role": "user",
        "content": [
            {"type": "image", "text": None},
            {"type": "audio", "text": None},
            {"type": "text", "text": "Q {x}?"},
        ],
    }
    assert trl_user_message("q", []) == {"role": "user", "content": [{"type": "text", "text": "q"}]}
    assert all(set(item) == {"type", "text"} for item in msg["content"])
    with pytest.raises(ValueError):
        trl_user_message("q", ["text"])


def test_trl_user_message_is_one_arrow_struct_type():
    pa = pytest.importorskip("pyarrow")
    rows = [trl_user_message("q", ["image"]), trl_user_message("q2", [])]
    array = pa.array(rows)
    assert array.to_pylist() == rows


# ---- verdict regex ---------------------------------------------------------------------------

GOOD_PAIR = [
    "<think>\nA is right, B is wrong.\n</think><answer>8</answer><answer>3</answer>",
    "<think>x</think>\n<answer>10</answer><answer>1</answer>",
    "<think></think><answer>5</answer><answer>5</answer>",
    "<think>quotes <answer>3</answer><answer>5</answer> here</think>  <answer>9</answer><answer>10</answer>",
]
BAD_PAIR = [
    "<think>x</think><answer>0</answer><answer>3</answer>",
    "<think>x</think><answer>11</answer><answer>3</answer>",
    "<think>x</think><answer>8</answer>",
    "<think>x</think><answer>8</answer><answer>3</answer><answer>3</answer>",
    "<think>x</think><answer>7.5</answer><answer>3</answer>",
    "<think>x</think><answer>8</answer> <answer>3</answer>",
    "<think>x</think><answer>8</answer><answer>3</answer>\n",
    "<think>x<answer>8</answer><answer>3</answer>",
    "no think <answer>8</answer><answer>3</answer>",
    "<think>x</think>      <answer>8</answer><answer>3</answer>",  # whitespace bounded to 4
]


@pytest.mark.parametrize("text", GOOD_PAIR)
def test_pairwise_regex_accepts(text):
    assert re.fullmatch(verdict_regex("pairwise", reasoning_max_chars=200, prefill_think=False), text)
    prefilled = text[len("<think>"):]
    assert re.fullmatch(verdict_regex("pairwise", reasoning_max_chars=200, prefill_think=True), prefilled)


@pytest.mark.parametrize("text", BAD_PAIR)
def test_pairwise_regex_rejects(text):
    assert not re.fullmatch(verdict_regex("pairwise", reasoning_max_chars=200, prefill_think=False), text)


def test_regex_reasoning_bound_and_prefill():
    rx = verdict_regex("pairwise", reasoning_max_chars=10, prefill_think=False)
    assert re.fullmatch(rx, "<think>" + "a" * 10 + "</think><answer>1</answer><answer>2</answer>")
    assert not re.fullmatch(rx, "<think>" + "a" * 11 + "</think><answer>1</answer><answer>2</answer>")
    pre = verdict_regex("pairwise", reasoning_max_chars=10, prefill_think=True)
    assert not pre.startswith("<think>")
    assert re.fullmatch(pre, "x\n</think><answer>1</answer><answer>2</answer>")
    assert "(?s)" not in rx and "[\\s\\S]" in rx
    with pytest.raises(ValueError):
        verdict_regex("pairwise", reasoning_max_chars=0, prefill_think=False)


def test_single_regex():
    rx = verdict_regex("single", reasoning_max_chars=100, prefill_think=False)
    assert rx == "<think>[\\s\\S]{0,100}</think>\\s{0,4}<answer>([1-5])</answer>"
    for s in range(1, 6):
        assert re.fullmatch(rx, f"<think>ok</think><answer>{s}</answer>")
    for bad in ("0", "6", "10", "3.5"):
        assert not re.fullmatch(rx, f"<think>ok</think><answer>{bad}</answer>")
    assert not re.fullmatch(rx, "<think>ok</think><answer>3</answer><answer>3</answer>")


def test_regex_accepted_by_xgrammar():
    xgr = pytest.importorskip("xgrammar")
    for mode in ("pairwise", "single"):
        for prefill in (False, True):
            rx = verdict_regex(mode, reasoning_max_chars=4000, prefill_think=prefill)
            xgr.Grammar.from_regex(rx)  # raises on unsupported syntax
    try:
        from xgrammar.testing import _is_grammar_accept_string as accepts
    except ImportError:
        return
    grammar = xgr.Grammar.from_regex(verdict_regex("pairwise", reasoning_max_chars=50, prefill_think=False))
    assert accepts(grammar, GOOD_PAIR[0])
    assert not accepts(grammar, BAD_PAIR[1])


@settings(max_examples=200, deadline=None)
@given(
    reasoning=st.lists(
        st.one_of(
            st.text(max_size=8),
            st.sampled_from(["<think>", "</think>", "<answer>3</answer>", "<answer>", "\n"]),
        ),
        max_size=6,
    ).map("".join),
    s1=st.integers(1, 10),
    s2=st.integers(1, 10),
    ws=st.sampled_from(["", "\n", " \n", "\n\n"]),
)
def test_regex_matches_are_parsed_back_exactly(reasoning, s1, s2, ws):
    """Whatever the constrained model writes, the parser reads back exactly the constrained scores."""
    text = f"<think>{reasoning}</think>{ws}<answer>{s1}</answer><answer>{s2}</answer>"
    rx = verdict_regex("pairwise", reasoning_max_chars=200, prefill_think=False)
    match = re.fullmatch(rx, text)
    assert match
    assert PAIRWISE.parse(text) == (float(match.group(1)), float(match.group(2))) == (s1, s2)


def test_prompt_and_verdict_modules_have_no_heavy_imports():
    import subprocess
    import sys

    code = ("import sys, stages.formats.prompts, stages.formats.verdicts, stages.engines.families; "
            "print(sorted(m for m in ('pydantic','yaml','pyarrow','vllm','torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


def test_placeholder_table_matches_spec():
    spec = Path("/work/shared/flexjudge/SPEC.md")
    if not spec.exists():
        pytest.skip("shared spec not present")
    text = spec.read_text(encoding="utf-8")
    for family_row, family in (("Qwen2.5-Omni (Flex-Omni)", "omni"), ("Qwen2.5-VL (Flex-VL)", "vl")):
        row = next(line for line in text.splitlines() if line.startswith(f"| {family_row}"))
        # cells hold '|' themselves, so read the backticked strings (and n/a) in column order
        cells = [code or na for code, na in re.findall(r"`([^`]+)`|(n/a)", row)]
        assert len(cells) == 3
        for modality, cell in zip(("image", "video", "audio"), cells):
            if cell == "n/a":
                assert modality not in PLACEHOLDERS[family]
            else:
                assert PLACEHOLDERS[family][modality].text == cell
