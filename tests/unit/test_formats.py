"""What every judging format promises the stages that ask it, checked for each registered format on
its own demo rows (normalized and decoded by the pipeline's stages)."""
from __future__ import annotations

import functools
import re
import typing
from pathlib import Path

import pyarrow as pa
import pytest

from jobs.demo import DEMO_ROWS
from pipelines.config import FilterConfig, RunConfig, load_config
from stages.decode import DecodeStage, decoded_media
from stages.engines.api import JudgeRequest
from stages.engines.factory import EngineFactory
from stages.formats.registry import FORMATS, judging_format
from stages.judge import JudgeConfig, JudgeStage
from stages.label import LabelStage
from stages.normalize import NormalizeStage
from stages.rows import ERRORS

MODES = sorted(FORMATS)
ROWS = 12


def dry_run_config(mode: str):
    return load_config(overrides=[f"mode={mode}", "judge.engine.backend=simulated", "judge.engine.device=cpu",
                                  "judge.samples=2", "filter.require_order_agreement=false"])


@functools.cache
def decoded(mode: str) -> pa.Table:
    """The mode's demo rows as they reach the judge stage (the broken ones settled as errors)."""
    cfg = dry_run_config(mode)
    fmt = cfg.judging_format()
    table = pa.Table.from_pylist(DEMO_ROWS[mode](ROWS))
    normalized = NormalizeStage(fmt, cfg.input).process(table)
    decode = DecodeStage(cfg.media, cfg.input, columns=fmt.media)
    decode.setup()
    return decode.process(normalized)


def judgeable(mode: str) -> list[dict]:
    return [row for row in decoded(mode).to_pylist() if row["error_stage"] is None and row["drop_reason"] is None]


def simulated_request(fmt, row: dict, order: str, seed: int) -> JudgeRequest:
    """The request the judge stage would make for `row`, as a dry run's engine receives it."""
    prompt, media = fmt.request(row, order, decoded_media(row, fmt.media), "omni", prefill_think=False)
    return JudgeRequest(f"{row['id']}:{order}", prompt, media, seed=seed)


def test_the_config_offers_exactly_the_registered_modes():
    assert set(typing.get_args(RunConfig.model_fields["mode"].annotation)) == set(FORMATS)
    with pytest.raises(ValueError, match="unknown judging mode"):
        judging_format("ranking-of-nothing")


@pytest.mark.parametrize("mode", MODES)
def test_the_filter_and_judge_sections_hold_the_format_settings(mode):
    fmt = judging_format(mode)
    assert set(fmt.rules.model_fields) <= set(FilterConfig.model_fields)
    assert isinstance(FilterConfig(), fmt.rules)  # the run's filter section is usable as the format's rules
    sections = [fmt.rules] + ([fmt.options] if fmt.options else [])
    for section in sections:
        for name, field in section.model_fields.items():
            assert field.description, f"{mode} setting {name} has no description"
    if fmt.options:
        assert isinstance(JudgeConfig(), fmt.options)


@pytest.mark.parametrize("mode", MODES)
def test_simulated_verdicts_have_the_format_shape(mode):
    """A dry run's engine answers what the format's parser and its structured-output regex accept."""
    cfg = dry_run_config(mode)
    fmt = cfg.judging_format()
    rows = judgeable(mode)
    assert len(rows) >= ROWS // 2
    for row in rows:
        regex = re.compile(fmt.verdict_regex(row, reasoning_max_chars=100, prefill_think=False))
        for seed in range(20):
            text = fmt.simulated_verdict(simulated_request(fmt, row, "ab", seed))
            scores = fmt.parse(text, row=row)
            assert scores is not None, text
            assert all(fmt.scale[0] <= s <= fmt.scale[1] for s in scores)
            assert regex.fullmatch(text), text


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("swap_order", [True, False])
def test_orders_flip_back_to_the_row_own_order(mode, swap_order):
    fmt = judging_format(mode)
    row = judgeable(mode)[0]
    orders = fmt.orders(swap_order)
    assert orders[0] == "ab" and len(set(orders)) == len(orders)
    count = fmt.score_count(row)
    shown = tuple(float(s) for s in range(count)) if mode != "choice" else (1.0, 0.0)
    for order in orders:
        original = fmt.to_original(shown, order)
        assert sorted(original) == sorted(shown)
        assert fmt.to_original(original, order) == shown  # flipping back twice is the identity


@pytest.mark.parametrize("mode", MODES)
def test_dry_run_judges_and_labels_every_row_in_the_format_shape(mode):
    """`judge.engine.backend: simulated` in each mode: every judgeable row judged, parsed and labelled."""
    cfg = dry_run_config(mode)
    fmt = cfg.judging_format()
    judge = JudgeStage(fmt, cfg.judge)
    assert isinstance(judge.engine_factory, EngineFactory)
    table = decoded(mode)
    settled = {r["id"] for r in table.to_pylist() if r["error_stage"] or r["drop_reason"]}
    try:
        judged = judge.process(table)
    finally:
        judge.close()
    for row in judged.to_pylist():
        if row["id"] in settled:
            assert row["judgments"] is None
            continue
        assert row["error_stage"] is None, row["error"]
        assert len(row["judgments"]) == len(fmt.orders(cfg.judge.swap_order)) * 2
        assert all(j["parsed"] for j in row["judgments"])
    labelled = LabelStage(fmt, cfg.filter).process(judged).to_pylist()
    assert {r["error_stage"] for r in labelled if r["id"] not in settled} == {None}
    assert {r["drop_reason"] for r in labelled if r["id"] not in settled} <= {None, *fmt.drop_reasons}


@pytest.mark.parametrize("mode", MODES)
def test_nothing_parsed_is_an_error_never_a_label(mode):
    fmt = judging_format(mode)
    nothing = fmt.aggregate([])
    assert fmt.decide(nothing, FilterConfig()) == (ERRORS, "unparsed_verdict")
    error = fmt.unparsed_error(nothing, attempts=3)
    assert error is not None and error.reason == "unparsed_verdict"
    row = judgeable(mode)[0]
    unparsed = fmt.read("<think>no verdict", row=row, sample=0, attempt=0, seed=1)
    assert fmt.unparsed_error(fmt.aggregate([unparsed]), attempts=1) is not None


@pytest.mark.parametrize("mode", MODES)
def test_result_and_label_columns_are_what_the_stages_add(mode):
    fmt = judging_format(mode)
    judge = JudgeStage(fmt, JudgeConfig())
    assert set(fmt.result_columns) <= set(judge.adds)
    assert set(LabelStage(fmt, FilterConfig()).adds) == {"drop_reason", *fmt.label_columns}
    assert set(fmt.histograms) <= {*fmt.result_columns, *fmt.label_columns}
    row = judgeable(mode)[0]
    verdicts = [fmt.read(fmt.simulated_verdict(simulated_request(fmt, row, order, seed)), row=row, order=order,
                         sample=seed, attempt=0, seed=seed)
                for order in fmt.orders(swap_order=True) for seed in range(3)]
    assert set(fmt.aggregate(verdicts).columns()) == set(fmt.result_columns)


@pytest.mark.parametrize("mode", MODES)
def test_every_drop_reason_is_documented_in_the_readme(mode):
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    for reason in judging_format(mode).drop_reasons:
        assert f"| `{reason}` |" in readme
