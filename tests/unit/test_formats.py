"""What every judging format promises the stages that ask it, checked for each registered format."""
from __future__ import annotations

import re
import typing
from pathlib import Path

import pyarrow as pa
import pytest

from pipelines.config import FilterConfig, RunConfig, load_config
from stages.engines.api import JudgeRequest
from stages.engines.factory import EngineFactory
from stages.formats.base import JudgingFormat
from stages.formats.registry import FORMATS, judging_format
from stages.judge import JudgeConfig, JudgeStage
from stages.label import LabelStage
from stages.rows import ERRORS

MODES = sorted(FORMATS)


def row_for(fmt: JudgingFormat, index: int) -> dict:
    answers = {column: f"answer {column} {index}" for column in fmt.answer_columns}
    return {"id": f"r{index}", "question": f"question {index}?", "image": None, "audio": None, "video": None,
            "error_stage": None, "error_reason": None, "error": None, "drop_reason": None, **answers}


def test_the_config_offers_exactly_the_registered_modes():
    assert set(typing.get_args(RunConfig.model_fields["mode"].annotation)) == set(FORMATS)
    with pytest.raises(ValueError, match="unknown judging mode"):
        judging_format("ranking-of-nothing")


@pytest.mark.parametrize("mode", MODES)
def test_the_filter_section_holds_every_rule_of_the_format(mode):
    rules = judging_format(mode).rules
    assert set(rules.model_fields) <= set(FilterConfig.model_fields)
    assert isinstance(FilterConfig(), rules)  # the run's filter section is usable as the format's rules
    for name, field in rules.model_fields.items():
        assert field.description, f"{mode} rule {name} has no description"


@pytest.mark.parametrize("mode", MODES)
def test_simulated_verdicts_have_the_format_shape(mode):
    """A dry run's engine answers what the format's parser and its structured-output regex accept."""
    fmt = judging_format(mode)
    regex = re.compile(fmt.verdict_regex(reasoning_max_chars=100, prefill_think=False))
    for seed in range(200):
        text = fmt.simulated_verdict(JudgeRequest("r", "p", seed=seed))
        scores = fmt.parse(text)
        assert scores is not None and len(scores) == fmt.n_scores, text
        assert all(fmt.scale[0] <= s <= fmt.scale[1] for s in scores)
        assert regex.fullmatch(text), text
    assert fmt.simulated_verdict(JudgeRequest("r", "p", seed=7)) == fmt.simulated_verdict(JudgeRequest("x", "q", seed=7))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("swap_order", [True, False])
def test_orders_flip_back_to_the_row_own_order(mode, swap_order):
    fmt = judging_format(mode)
    orders = fmt.orders(swap_order)
    assert orders[0] == "ab" and len(set(orders)) == len(orders)
    shown = tuple(float(s) for s in range(1, fmt.n_scores + 1))
    for order in orders:
        original = fmt.to_original(shown, order)
        assert sorted(original) == sorted(shown)
        assert fmt.to_original(original, order) == shown  # flipping back twice is the identity
        assert len(fmt.shown_answers(row_for(fmt, 0), order)) == len(fmt.answer_columns)


@pytest.mark.parametrize("mode", MODES)
def test_dry_run_judges_and_labels_every_row_in_the_format_shape(mode):
    """`judge.engine.backend: simulated` in each mode: every row judged, parsed and labelled."""
    cfg = load_config(overrides=[f"mode={mode}", "judge.engine.backend=simulated", "judge.engine.device=cpu",
                                 "judge.samples=2"])
    fmt = cfg.judging_format()
    judge = JudgeStage(fmt, cfg.judge)
    assert isinstance(judge.engine_factory, EngineFactory)
    try:
        judged = judge.process(pa.Table.from_pylist([row_for(fmt, i) for i in range(12)]))
    finally:
        judge.close()
    assert judged.column("error_stage").to_pylist() == [None] * 12
    for row in judged.to_pylist():
        assert len(row["judgments"]) == len(fmt.orders(cfg.judge.swap_order)) * 2
        assert all(j["parsed"] for j in row["judgments"])
    labelled = LabelStage(fmt, cfg.filter).process(judged).to_pylist()
    assert {r["error_stage"] for r in labelled} == {None}
    assert {r["drop_reason"] for r in labelled} <= {None, *fmt.drop_reasons}


@pytest.mark.parametrize("mode", MODES)
def test_nothing_parsed_is_an_error_never_a_label(mode):
    fmt = judging_format(mode)
    nothing = fmt.aggregate([])
    assert fmt.decide(nothing, FilterConfig()) == (ERRORS, "unparsed_verdict")
    error = fmt.unparsed_error(nothing, attempts=3)
    assert error is not None and error.reason == "unparsed_verdict"
    unparsed = fmt.read("<think>no verdict", sample=0, attempt=0, seed=1)
    assert fmt.unparsed_error(fmt.aggregate([unparsed]), attempts=1) is not None


@pytest.mark.parametrize("mode", MODES)
def test_result_and_label_columns_are_what_the_stages_add(mode):
    fmt = judging_format(mode)
    judge = JudgeStage(fmt, JudgeConfig())
    assert set(fmt.result_columns) <= set(judge.adds)
    assert set(LabelStage(fmt, FilterConfig()).adds) == {"drop_reason", *fmt.label_columns}
    assert set(fmt.histograms) <= {*fmt.result_columns, *fmt.label_columns}
    verdicts = [fmt.read(fmt.simulated_verdict(JudgeRequest("r", "p", seed=s)), order=o, sample=s, attempt=0, seed=s)
                for o in fmt.orders(swap_order=True) for s in range(3)]
    assert set(fmt.aggregate(verdicts).columns()) == set(fmt.result_columns)


@pytest.mark.parametrize("mode", MODES)
def test_every_drop_reason_is_documented_in_the_readme(mode):
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    for reason in judging_format(mode).drop_reasons:
        assert f"| `{reason}` |" in readme
