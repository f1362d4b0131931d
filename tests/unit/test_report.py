"""What report.json and report.html say about a run: the keep-rate curve, the throughput timeline,
the page's numbers, and data shown as text, never as markup."""
from __future__ import annotations

import re

import pytest

from pipelines.report import keep_rate_curve, throughput
from pipelines.report_html import SampleRow, histogram_bins, render, varied
from stages.formats.pairwise import PairwiseFormat
from stages.formats.single import SingleFormat
from stages.media.config import MediaConfig


def test_keep_rate_curve_is_the_runs_keep_rate_at_its_own_threshold():
    rule = PairwiseFormat.threshold_rule
    # margins of kept rows (>= 1) and of rows the margin rule dropped (< 1); 10 rows labelled in all
    values = {"0": 1, "0.5": 2, "1": 3, "2.5": 1}
    curve = keep_rate_curve(rule, 1.0, values, labelled=10)
    points = dict((t, rate) for t, rate in curve["points"])
    assert curve["rule"] == "filter.min_margin" and curve["current"] == 1.0
    assert points == {0.0: 0.7, 0.5: 0.6, 1.0: 0.4, 2.5: 0.1}
    assert keep_rate_curve(rule, 1.0, {}, labelled=0) is None


def test_single_mode_sweeps_min_score():
    curve = keep_rate_curve(SingleFormat.threshold_rule, 3.0, {"2.5": 1, "4": 1}, labelled=2)
    assert curve["rule"] == "filter.min_score" and dict(map(tuple, curve["points"]))[3.0] == 0.5


def test_throughput_buckets_rows_per_second_of_each_stage():
    timeline = {"judge": {100: 10, 101: 10, 160: 30}, "decode": {100: 50}}
    flow = throughput(timeline, started=100.0, finished=220.0)
    assert flow["bucket_seconds"] == 2  # 120 s in at most 60 buckets
    assert len(flow["rows_per_second"]["judge"]) == 60
    assert flow["rows_per_second"]["judge"][0] == 10.0 and flow["rows_per_second"]["judge"][30] == 15.0
    assert sum(flow["rows_per_second"]["decode"]) * 2 == 50


def test_histogram_bins_fill_the_gaps_between_filled_bins():
    assert histogram_bins({"2": 1, "5": 3}, 1.0) == [("2", 1), ("3", 0), ("4", 0), ("5", 3)]
    assert histogram_bins({"1.5": 2, "2.5": 1}, 0.5) == [("1.5", 2), ("2", 0), ("2.5", 1)]


def test_samples_show_each_media_kind_first():
    rows = [{"id": "t1"}, {"id": "t2"}, {"id": "a", "audio": {"bytes": b"x"}}, {"id": "i", "image": {"bytes": b"x"}}]
    assert [r["id"] for r in varied(rows, 3)] == ["t1", "a", "i"]


REPORT = {
    "status": "succeeded", "input_rows": 3, "input_shards": 1, "counts": {"kept": 1, "dropped": 1, "errors": 1},
    "drop_reasons": {"tie": 1}, "error_reasons": {"image_undecodable": 1}, "histograms": {"margin": {"3": 1}},
    "keep_rate_by_threshold": {"rule": "filter.min_margin", "column": "margin", "current": 1.0, "labelled_rows": 2,
                               "points": [[0.0, 0.5], [3.0, 0.5]]},
    "judge": {"model": "m", "requests": 4, "output_tokens": 40},
    "timings": {"wall_seconds": 2.0, "stages": {"judge": {"rows": 3, "busy_seconds": 1.0, "errors": 0}},
                "throughput": {"bucket_seconds": 1, "rows_per_second": {"judge": [1.0, 2.0]}}},
}
HOSTILE = '<script>alert("x")</script>'


def page(report, samples=()):
    return render(report, samples, PairwiseFormat(), MediaConfig(), read_media=lambda value: value.get("bytes"))


@pytest.mark.parametrize("present", [True, False])
def test_order_agreement_and_first_position_win_rate_are_shown_when_the_report_has_them(present):
    report = {**REPORT, **({"order_agreement_rate": 0.8125, "first_position_win_rate": 0.625} if present else {})}
    shown = page(report)
    assert ('data-rate="order agreement"' in shown and "81.2%" in shown) is present
    assert ('data-rate="first-position win rate"' in shown and "62.5%" in shown) is present


def test_data_is_shown_as_text_never_as_markup():
    sample = SampleRow("kept", {"id": HOSTILE, "question": HOSTILE, "response_a": HOSTILE, "response_b": "b",
                                "chosen": HOSTILE, "score_a": 9.0, "score_b": 2.0},
                       verdicts=[{"order": "ab", "sample": 0, "attempt": 0, "text": HOSTILE, "original_scores": [9.0, 2.0]}])
    shown = page({**REPORT, "drop_reasons": {HOSTILE: 1}}, [sample])
    assert "<script" not in shown and shown.count("&lt;script&gt;") >= 5


def test_media_that_cannot_be_shown_leave_the_row_card_with_the_reason():
    sample = SampleRow("dropped", {"id": "r", "question": "q", "response_a": "a", "response_b": "b",
                                   "drop_reason": "tie", "image": {"bytes": b"not an image", "path": None}})
    shown = page(REPORT, [sample])
    assert re.search(r"image not shown: MediaError: \[image_undecodable\]", shown)
    assert '<span class="reason">tie</span>' in shown
