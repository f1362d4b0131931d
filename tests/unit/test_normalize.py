import pyarrow as pa

from pipelines.config import InputConfig
from stages.formats.registry import judging_format
from stages.normalize import NormalizeStage, content_id
from stages.rows import MEDIA_TYPE


def run(table, mode="pairwise", **input_kwargs):
    return NormalizeStage(judging_format(mode), InputConfig(**input_kwargs)).process(table).to_pylist()


def test_canonical_columns_and_passthrough():
    table = pa.table({"id": [7], "question": ["q"], "response_a": ["a"], "response_b": ["b"], "lang": ["en"]})
    [row] = run(table)
    assert row["id"] == "7"
    assert row["lang"] == "en"
    assert row["image"] is None and row["error_stage"] is None and row["drop_reason"] is None


def test_content_id_is_stable_and_content_sensitive():
    table = pa.table({"question": ["q", "q", "q2"], "response_a": ["a"] * 3, "response_b": ["b"] * 3})
    rows = run(table)
    assert rows[0]["id"] == rows[1]["id"] != rows[2]["id"]
    assert rows[0]["id"] == run(table)[0]["id"]


def test_media_forms_become_one_struct_type():
    hf = {"bytes": b"\x89PNG", "path": "x.png"}
    for value, expected in [(hf, hf), (b"raw", {"bytes": b"raw", "path": None}), ("s3://b/k.png", {"bytes": None, "path": "s3://b/k.png"})]:
        table = pa.table({"question": ["q"], "response_a": ["a"], "response_b": ["b"], "image": [value]})
        out = NormalizeStage(judging_format("pairwise"), InputConfig()).process(table)
        assert out.schema.field("image").type == MEDIA_TYPE
        assert out.to_pylist()[0]["image"] == expected


def test_renamed_columns_and_response_list():
    table = pa.table({"query": ["q"], "response": [["first", "second"]], "human_ranking": [[0, 1]]})
    [row] = run(table, preset="vl_rewardbench")
    assert (row["question"], row["response_a"], row["response_b"]) == ("q", "first", "second")
    assert "query" not in row and row["human_ranking"] == [0, 1]
    assert row["response"] is None  # the list column was consumed, not left as the single answer


def test_bad_text_goes_to_errors_and_identical_answers_to_dropped():
    table = pa.table(
        {
            "id": ["ok", "empty", "null", "same", "short"],
            "question": ["q", "  ", None, "q", "q"],
            "response_a": ["a", "a", "a", "same", "a"],
            "response_b": ["b", "b", "b", " same ", "b"],
        }
    )
    rows = {r["id"]: r for r in run(table)}
    assert rows["ok"]["error_stage"] is None and rows["ok"]["drop_reason"] is None
    assert rows["empty"]["error_stage"] == "normalize" and "[empty_question]" in rows["empty"]["error"]
    assert rows["empty"]["error_reason"] == "empty_question" and rows["ok"]["error_reason"] is None
    assert rows["null"]["error_stage"] == "normalize" and rows["null"]["error"].startswith("RowRejected:")
    assert rows["same"]["drop_reason"] == "identical_responses" and rows["same"]["error_stage"] is None


def test_wrong_list_length_is_a_row_error_with_id():
    table = pa.table({"query": ["q"], "response": [["only one"]]})
    [row] = run(table, preset="vl_rewardbench")
    assert row["error_stage"] == "normalize" and "[invalid_responses]" in row["error"]
    assert row["error_reason"] == "invalid_responses"
    assert row["id"] == content_id(row)


def test_single_mode_needs_response():
    table = pa.table({"question": ["q", "q"], "response": ["fine", None]})
    rows = run(table, mode="single")
    assert rows[0]["error_stage"] is None
    assert rows[1]["error_stage"] == "normalize" and "[empty_response]" in rows[1]["error"]
