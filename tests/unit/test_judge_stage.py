"""The judge stage on a scripted engine: fan-out, order flipping, retries, rejections."""
import re
from concurrent.futures import Future

import pyarrow as pa
import pytest

from pipelines.config import FilterConfig, load_config
from stages.decode import DecodeStage
from stages.engines.api import Completion, JudgeRequest
from stages.engines.simulated import SimulatedEngine
from stages.engines.vllm_engine import to_vllm_prompt
from stages.formats.registry import judging_format
from stages.formats.verdicts import verdict_text
from stages.judge import JudgeConfig, JudgeStage, request_seed
from stages.label import LabelStage
from stages.normalize import NormalizeStage
from tests import synthetic_media as sm

FIRST = re.compile(r"\[Assistant 1's Answer\]\n(.*?)\n\n\[Assistant 2's Answer\]", re.S)


def fair_judge(request: JudgeRequest) -> str:
    """Scores the answer 'GOOD' 9 and anything else 2, wherever it is shown."""
    match = FIRST.search(request.prompt)
    return verdict_text(9, 2) if match and match.group(1) == "GOOD" else verdict_text(2, 9)


def first_position_judge(request: JudgeRequest) -> str:
    return verdict_text(9, 2)


def flaky_judge(request: JudgeRequest) -> str:
    attempt = int(request.request_id.split(":")[3])
    return "I cannot decide." if attempt == 0 else fair_judge(request)


def never_parses(request: JudgeRequest) -> str:
    return "<think>hmm</think> both fine"


def single_judge(request: JudgeRequest) -> str:
    return verdict_text(4)


def table(rows):
    base = {"id": None, "question": "Q?", "response_a": None, "response_b": None, "response": None,
            "image": None, "audio": None, "video": None, "error_stage": None, "error_reason": None, "error": None,
            "drop_reason": None}
    return pa.Table.from_pylist([{**base, **row} for row in rows])


def judge(script, rows, mode="pairwise", **judge_kwargs):
    engine = SimulatedEngine(script, max_prompt_chars=4000)
    stage = JudgeStage(judging_format(mode), JudgeConfig(**judge_kwargs), engine_factory=lambda: engine)
    try:
        return stage.process(table(rows))
    finally:
        stage.close()


def test_both_orders_are_judged_and_flipped_back():
    out = judge(fair_judge, [{"id": "r1", "response_a": "BAD", "response_b": "GOOD"}]).to_pylist()[0]
    assert (out["score_a"], out["score_b"]) == (2.0, 9.0)
    assert out["winner"] == "b" and out["order_agreement"] is True and out["margin"] == 7.0
    assert sorted(j["order"] for j in out["judgments"]) == ["ab", "ba"]
    for j in out["judgments"]:
        assert j["original_scores"] == [2.0, 9.0]
    assert out["error_stage"] is None


def test_position_bias_cancels_out_and_is_reported():
    out = judge(first_position_judge, [{"id": "r1", "response_a": "x", "response_b": "y"}]).to_pylist()[0]
    assert out["order_agreement"] is False and out["winner"] == "tie"
    assert out["votes_a"] == 1 and out["votes_b"] == 1


def test_samples_multiply_requests_with_distinct_seeds():
    out = judge(fair_judge, [{"id": "r1", "response_a": "GOOD", "response_b": "b"}], samples=3).to_pylist()[0]
    assert len(out["judgments"]) == 6
    assert len({j["seed"] for j in out["judgments"]}) == 6
    assert out["votes_a"] == 6


def test_a_rows_requests_share_a_group_and_rows_do_not():
    """Both orders x samples of a row (and its retries) carry the row's id as their group: an engine
    that processes media apart processes a row's media once, in one place."""
    recorder = Recorder()
    stage = JudgeStage(judging_format("pairwise"), JudgeConfig(samples=2), engine_factory=lambda: recorder)
    stage.process(table([{"id": "r1", "response_a": "a", "response_b": "b"},
                         {"id": "r2", "response_a": "c", "response_b": "d"}]))
    groups = [request.group for request in recorder.requests]
    assert groups == ["r1"] * 4 + ["r2"] * 4


def test_unparsed_verdict_is_retried_with_a_new_seed():
    out = judge(flaky_judge, [{"id": "r1", "response_a": "GOOD", "response_b": "b"}], max_retries=1).to_pylist()[0]
    assert out["error_stage"] is None and out["winner"] == "a"
    attempts = sorted((j["order"], j["attempt"], j["parsed"]) for j in out["judgments"])
    assert attempts == [("ab", 0, False), ("ab", 1, True), ("ba", 0, False), ("ba", 1, True)]
    assert len({j["seed"] for j in out["judgments"]}) == 4


def test_unparsed_after_retries_is_an_error_never_a_tie():
    out = judge(never_parses, [{"id": "r1", "response_a": "a", "response_b": "b"}], max_retries=2).to_pylist()[0]
    assert out["error_stage"] == "judge" and "[unparsed_verdict]" in out["error"]
    assert out["error_reason"] == "unparsed_verdict"
    assert out["winner"] is None
    assert len(out["judgments"]) == 6 and {j["text"] for j in out["judgments"]} == {never_parses(None)}


def test_rejected_prompt_fails_only_its_row():
    rows = [{"id": "long", "response_a": "x" * 5000, "response_b": "y"}, {"id": "ok", "response_a": "GOOD", "response_b": "b"}]
    out = {r["id"]: r for r in judge(fair_judge, rows).to_pylist()}
    assert out["long"]["error_stage"] == "judge" and out["long"]["error"].startswith("RequestRejected:")
    assert out["long"]["error_reason"] == "RequestRejected"
    assert out["ok"]["error_stage"] is None and out["ok"]["winner"] == "a"


def test_settled_rows_pass_untouched_and_cost_no_requests():
    rows = [
        {"id": "dropped", "response_a": "same", "response_b": "same", "drop_reason": "identical_responses"},
        {"id": "failed", "response_a": "a", "response_b": "b", "error_stage": "decode", "error_reason": "x",
         "error": "MediaError: [x]"},
    ]
    out = judge(fair_judge, rows).to_pylist()
    assert [r["judgments"] for r in out] == [None, None]
    assert out[0]["drop_reason"] == "identical_responses"
    assert (out[1]["error_stage"], out[1]["error_reason"], out[1]["error"]) == ("decode", "x", "MediaError: [x]")


def test_special_tokens_in_data_fail_the_row_not_the_prompt():
    rows = [{"id": "inject", "response_a": "a<|im_end|>", "response_b": "b"}]
    [out] = judge(fair_judge, rows).to_pylist()
    assert out["error_stage"] == "judge" and "SpecialTokenInText" in out["error"]
    assert out["error_reason"] == "SpecialTokenInText"


def test_single_mode_scores_one_answer():
    out = judge(single_judge, [{"id": "s", "response": "fine"}], mode="single", samples=2).to_pylist()[0]
    assert out["score"] == 4.0 and len(out["judgments"]) == 2
    assert {j["order"] for j in out["judgments"]} == {"ab"}


def test_seeds_are_reproducible():
    assert request_seed(0, "r", "ab", 0, 0) == request_seed(0, "r", "ab", 0, 0)
    assert request_seed(0, "r", "ab", 0, 0) != request_seed(0, "r", "ab", 0, 1)
    assert request_seed(0, "r", "ab", 0, 0) != request_seed(1, "r", "ab", 0, 0)


@pytest.mark.parametrize(
    "script, rules, expected",
    [
        (fair_judge, FilterConfig(), (None, "GOOD", 9.0)),
        (first_position_judge, FilterConfig(require_order_agreement=False), ("tie", None, None)),
        (fair_judge, FilterConfig(min_margin=8), ("margin_below_min", None, None)),
        (fair_judge, FilterConfig(min_chosen_score=9.5), ("chosen_score_below_min", None, None)),
    ],
)
def test_label_keeps_or_drops_with_reason(script, rules, expected):
    judged = judge(script, [{"id": "r", "response_a": "GOOD", "response_b": "meh"}])
    [row] = LabelStage(judging_format("pairwise"), rules).process(judged).to_pylist()
    assert (row["drop_reason"], row["chosen"], row["score_chosen"]) == expected
    if row["chosen"]:
        assert row["rejected"] == "meh" and row["score_rejected"] == 2.0


def test_label_drops_single_below_min_score():
    judged = judge(single_judge, [{"id": "s", "response": "fine"}], mode="single")
    [row] = LabelStage(judging_format("single"), FilterConfig(min_score=4.5)).process(judged).to_pylist()
    assert row["drop_reason"] == "score_below_min"


def test_replica_holds_enough_batches_to_keep_its_engine_slots_full():
    pairwise, single = judging_format("pairwise"), judging_format("single")
    gpu_defaults = JudgeStage(pairwise, JudgeConfig())  # 256 slots, 32 rows x 2 orders a batch
    assert gpu_defaults.batches_in_flight * 32 * 2 >= 8 * 256
    one_order = JudgeStage(single, JudgeConfig())  # one request a row: twice the batches
    assert one_order.batches_in_flight == 2 * gpu_defaults.batches_in_flight
    small = JudgeStage(pairwise, JudgeConfig.model_validate({"engine": {"max_num_seqs": 4}, "batch_size": 64}))
    assert small.batches_in_flight == 2  # never a single batch: the next one is always in hand
    explicit = JudgeStage(pairwise, JudgeConfig(batches_in_flight=3))
    assert explicit.batches_in_flight == 3


class Recorder:
    """An engine that keeps every request and answers each at once."""

    slots = 64
    prefetch = 0

    def __init__(self) -> None:
        self.requests: list[JudgeRequest] = []

    def submit(self, request: JudgeRequest) -> Future:
        self.requests.append(request)
        future: Future = Future()
        future.set_result(Completion(verdict_text(8, 3), 10, 5, "stop"))
        return future

    def shutdown(self) -> None:
        pass


@pytest.mark.parametrize("rate", [16_000, 24_000])
def test_audio_reaches_the_engine_at_the_configured_sample_rate(rate):
    """media.audio_sample_rate is the one source: decode resamples to it and vLLM is told it."""
    cfg = load_config(overrides=[f"media.audio_sample_rate={rate}"])
    fmt = cfg.judging_format()
    shard = pa.table({"id": ["a"], "question": ["What is heard?"], "response_a": ["a tone"], "response_b": ["a bird"],
                      "audio": [sm.wav(1.0, 44_100)]})
    recorder = Recorder()
    decoded = DecodeStage(cfg.media, cfg.input).process(NormalizeStage(fmt, cfg.input).process(shard))
    judged = JudgeStage(fmt, cfg.judge, engine_factory=lambda: recorder).process(decoded)
    assert judged.column("error_stage").to_pylist() == [None]
    assert len(recorder.requests) == 2  # both answer orders
    for request in recorder.requests:
        samples, sent_rate = request.multi_modal_data["audio"]
        assert sent_rate == rate and len(samples) == rate  # one second of audio at that rate
        assert to_vllm_prompt(request)["multi_modal_data"]["audio"][1] == rate
