import pyarrow as pa
import pytest

from pipelines.config import InputConfig
from pipelines.shard_ids import row_hashes
from stages.formats.registry import judging_format
from stages.normalize import ROW_HASH, NormalizeStage, derived_ids, given_ids, row_ids
from stages.rows import MEDIA_TYPE


def with_row_hash(table, shard="/data/shard-0.parquet"):
    """The table as the pipeline reads it when some rows lack an id: with Ray Data's row hash."""
    return table.append_column(ROW_HASH, pa.array(row_hashes(shard, table.num_rows), pa.uint64()))


def run(table, mode="pairwise", **input_kwargs):
    stage = NormalizeStage(judging_format(mode), InputConfig(**input_kwargs), row_hash=True)
    return stage.process(with_row_hash(table)).to_pylist()


def test_canonical_columns_and_passthrough():
    table = pa.table({"id": [7], "question": ["q"], "response_a": ["a"], "response_b": ["b"], "lang": ["en"]})
    [row] = run(table)
    assert row["id"] == "7"
    assert row["lang"] == "en"
    assert row["image"] is None and row["error_stage"] is None and row["drop_reason"] is None


def test_rows_without_an_id_are_known_by_shard_and_position():
    """Identical rows stay distinct (a resume that committed one copy still does the other), and the
    same shard read again gives the same ids."""
    table = pa.table({"id": ["given", None, "  "], "question": ["q"] * 3, "response_a": ["a"] * 3, "response_b": ["b"] * 3})
    rows = run(table)
    derived = derived_ids(pa.array(row_hashes("/data/shard-0.parquet", 3), pa.uint64())).to_pylist()
    assert [r["id"] for r in rows] == ["given", derived[1], derived[2]]
    assert len({r["id"] for r in rows}) == 3 and [r["id"] for r in run(table)] == [r["id"] for r in rows]
    assert ROW_HASH not in rows[0]  # consumed, not passed through
    other_shard = NormalizeStage(judging_format("pairwise"), InputConfig(), row_hash=True).process(
        with_row_hash(table, "/data/shard-1.parquet")).column("id").to_pylist()
    assert other_shard[0] == "given" and not set(other_shard[1:]) & set(derived)


def test_a_user_row_hash_column_passes_through_when_every_row_has_an_id():
    table = pa.table({"id": ["x"], "question": ["q"], "response_a": ["a"], "response_b": ["b"], ROW_HASH: ["mine"]})
    [row] = NormalizeStage(judging_format("pairwise"), InputConfig()).process(table).to_pylist()
    assert row["id"] == "x" and row[ROW_HASH] == "mine"
    with pytest.raises(ValueError, match="row_hash"):
        row_ids(given_ids(pa.array([None], pa.string())), None)


@pytest.mark.parametrize("column, expected", [
    (pa.array([7, None, 12], pa.int64()), ["7", None, "12"]),
    (pa.array(["a", " ", None], pa.string()), ["a", None, None]),
    (pa.array([b"ok", b"\xc3\x28", b""], pa.binary()), ["ok", "\\xc3(", None]),
    (pa.array([1.5, None], pa.float64()), ["1.5", None]),
])
def test_given_ids_are_spelled_as_text(column, expected):
    assert given_ids(column).to_pylist() == expected


def test_media_forms_become_one_struct_type():
    hf = {"bytes": b"\x89PNG", "path": "x.png"}
    for value, expected in [(hf, hf), (b"raw", {"bytes": b"raw", "path": None}), ("s3://b/k.png", {"bytes": None, "path": "s3://b/k.png"})]:
        table = pa.table({"question": ["q"], "response_a": ["a"], "response_b": ["b"], "image": [value]})
        out = NormalizeStage(judging_format("pairwise"), InputConfig(), row_hash=True).process(with_row_hash(table))
        assert out.schema.field("image").type == MEDIA_TYPE
        assert out.to_pylist()[0]["image"] == expected


def test_renamed_columns_and_response_list():
    table = pa.table({"query": ["q"], "response": [["first", "second"]], "human_ranking": [[0, 1]]})
    [row] = run(table, preset="vl_rewardbench")
    assert (row["question"], row["response_a"], row["response_b"]) == ("q", "first", "second")
    assert "query" not in row and row["human_ranking"] == [0, 1]
    assert "response" not in row  # the list column was consumed, not left behind as an answer


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
    assert row["id"] and row["id"].isdigit()


def test_single_mode_needs_response():
    table = pa.table({"question": ["q", "q"], "response": ["fine", None]})
    rows = run(table, mode="single")
    assert rows[0]["error_stage"] is None
    assert rows[1]["error_stage"] == "normalize" and "[empty_response]" in rows[1]["error"]


def test_text_with_control_characters_is_judged_or_dropped_by_the_rule():
    table = pa.table({"id": ["nul", "bell", "plain"], "question": ["what\x00is", "q\x07", "line\tone\r\ntwo"],
                      "response_a": ["a"] * 3, "response_b": ["b"] * 3})
    judged = {r["id"]: r for r in run(table)}
    assert all(r["error_stage"] is None and r["drop_reason"] is None for r in judged.values())
    assert judged["nul"]["question"] == "what\x00is"  # kept as given
    strict = {r["id"]: r for r in run(table, drop_control_characters=True)}
    assert strict["nul"]["drop_reason"] == strict["bell"]["drop_reason"] == "control_characters"
    assert strict["plain"]["drop_reason"] is None and strict["nul"]["error_stage"] is None
