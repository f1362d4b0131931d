"""Speech MOS judging: the two prompts verbatim, MOS verdicts, the min_mos rule, vote, evaluation
against a human MOS, and the Omni-only config rule."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pipelines.config import ConfigError, FilterConfig, load_config
from stages.formats.evaluation import LabelledRow
from stages.formats.mos import MosFormat
from stages.rows import DROPPED, ERRORS, KEPT, RowRejected

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = json.loads((ROOT / "stages" / "formats" / "flexjudge_prompts.json").read_text(encoding="utf-8"))
MOS = MosFormat()
CLIP = ("samples", 16_000)


def chatml(system: str, user: str) -> str:
    return f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize("prompt_key, template_key", [
    ("audio_mos_nisqa_somos", "audio_mos_nisqa_somos (Omni)"),
    ("audio_mos_bvcc", "audio_mos_bvcc (Omni)"),
])
def test_prompts_verbatim(prompt_key, template_key):
    fmt = load_config(overrides=["mode=mos", f"judge.mos_prompt={prompt_key}"]).judging_format()
    prompt, data = fmt.request({"audio": {"bytes": b"x"}}, "ab", {"audio": CLIP}, "omni", prefill_think=False)
    assert prompt == chatml(PROMPTS["system"][prompt_key], PROMPTS["user_templates"][template_key])
    assert data == {"audio": CLIP} and prompt.count("<|AUDIO|>") == 1


def test_nisqa_somos_is_the_default():
    assert MOS.request({}, "ab", {"audio": CLIP}, "omni", prefill_think=False)[0].startswith(
        f"<|im_start|>system\n{PROMPTS['system']['audio_mos_nisqa_somos']}<|im_end|>")


@pytest.mark.parametrize("text, score", [
    ("<think>clean speech</think><answer>3.8</answer>", (3.8,)),
    ("<think>e.g. <answer>1.0</answer></think>\n<answer>4.5</answer>", (4.5,)),
    ("<think>x</think><answer>5</answer>", (5.0,)),
    ("<think>x</think><answer>5.5</answer>", None),
    ("<think>x</think><answer>0.9</answer>", None),
    ("<think>x</think><answer>3.8</answer><answer>3.8</answer>", None),
    ("<think>x</think><answer>good</answer>", None),
])
def test_parsing_a_mos(text, score):
    assert MOS.parse(text) == score


def test_regex_is_a_score_to_the_first_decimal():
    rx = MOS.verdict_regex(reasoning_max_chars=20, prefill_think=False)
    for good in ("1.0", "3.8", "4.9", "5.0"):
        assert re.fullmatch(rx, f"<think>ok</think><answer>{good}</answer>")
    for bad in ("5.1", "0.9", "4", "3.85", "10.0"):
        assert not re.fullmatch(rx, f"<think>ok</think><answer>{bad}</answer>")
    pytest.importorskip("xgrammar").Grammar.from_regex(rx)


def verdict(score, sample=0):
    return MOS.verdict("ab", None if score is None else (score,), sample=sample, attempt=0, seed=0, text="t")


def test_min_mos_rule_and_the_result_column():
    result = MOS.aggregate([verdict(3.4, 0), verdict(3.8, 1)])
    assert result.columns() == {"mos": pytest.approx(3.6)}
    assert MOS.decide(result, FilterConfig(min_mos=3.6)) == (KEPT, None)
    assert MOS.decide(result, FilterConfig(min_mos=3.7)) == (DROPPED, "mos_below_min")
    assert MOS.decide(MOS.aggregate([verdict(None)]), FilterConfig()) == (ERRORS, "unparsed_verdict")


def test_vote_takes_the_score_bucket_most_samples_gave():
    voting = load_config(overrides=["mode=mos", "judge.aggregate=vote"]).judging_format()
    verdicts = [verdict(3.6, 0), verdict(4.4, 1), verdict(1.0, 2)]
    assert MOS.aggregate(verdicts).columns()["mos"] == pytest.approx(3.0)
    assert voting.aggregate(verdicts).columns()["mos"] == 4.0  # 3.6 and 4.4 both round to 4
    assert voting.aggregate([verdict(2.5, 0), verdict(3.5, 1)]).columns()["mos"] == 3.5  # buckets 3 and 4 tie


def test_a_row_is_one_clip():
    MOS.check_row({"audio": {"bytes": b"x"}})
    with pytest.raises(RowRejected, match="audio"):
        MOS.check_row({"audio": None})
    assert MOS.required_columns({"audio": "wav"}, ["wav"]) == ["wav"]
    assert MOS.judged_texts({}) == ()
    assert MOS.media_per_prompt() == {"image": 0, "audio": 1, "video": 0}


def test_vl_model_with_mos_is_a_config_error_naming_the_fields():
    with pytest.raises(ConfigError, match="mode mos judges audio.*Flex-VL-7B"):
        load_config(overrides=["mode=mos", "judge.engine.model=jongwooko/Flex-VL-7B"])
    cfg = load_config(overrides=["mode=mos"])
    assert cfg.judge.engine.limit_mm_per_prompt == {"image": 0, "audio": 1, "video": 0}  # no encoder memory for unused media
    with pytest.raises(ConfigError, match="limit_mm_per_prompt"):
        load_config(overrides=["mode=choice", "judge.engine.limit_mm_per_prompt={image: 1, video: 1}"])


def test_evaluation_lcc_and_srcc():
    def row(row_id, human, score, outcome=KEPT, error_reason=None):
        return LabelledRow(row_id, outcome, error_reason, (verdict(score),), MOS.canonical_label(human))

    rows = [row("a", 1.5, 2.0), row("b", "3.0", 3.1), row("c", 4.0, 3.9), row("d", 4.5, 4.8),
            row("e", 2.0, None, ERRORS, "unparsed_verdict")]
    scores = MOS.evaluate(rows, FilterConfig())
    assert scores["n"] == 5 and scores["scored"] == 4 and scores["unparsed"] == 1
    assert scores["spearman"] == pytest.approx(1.0) and scores["pearson"] > 0.95
    keep = {entry["min_mos"]: entry["keep_rate"] for entry in scores["thresholds"]}
    assert keep[1.0] == 4 / 5 and keep[4.0] == 1 / 5
    assert MOS.headline_metrics == ("pearson", "spearman")
