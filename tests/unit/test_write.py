import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stages.formats.base import JUDGMENT_TYPE
from stages.formats.preferences import preference_schema
from stages.formats.registry import judging_format
from stages.rows import MEDIA_TYPE
from stages.write import WriteStage


def judged_rows():
    judgment = {"order": "ab", "sample": 0, "attempt": 0, "seed": 1, "text": "t", "scores": [9.0, 2.0],
                "original_scores": [9.0, 2.0], "prompt_tokens": 10, "output_tokens": 5, "finish_reason": "stop", "parsed": True}
    image = {"bytes": b"img", "path": None}
    common = {"question": "Q", "response_a": "A", "response_b": "B", "image": image, "judge_model": "m",
              "_image_pixels": b"\x00", "judgments": [judgment, {**judgment, "order": "ba"}]}
    return [
        {**common, "id": "k", "error_stage": None, "error_reason": None, "error": None, "drop_reason": None,
         "chosen": "A", "rejected": "B", "score_chosen": 9.0, "score_rejected": 2.0, "margin": 7.0},
        {**common, "id": "d", "error_stage": None, "error_reason": None, "error": None, "drop_reason": "tie",
         "chosen": None, "rejected": None, "score_chosen": None, "score_rejected": None, "margin": 0.0},
        {**common, "id": "e", "error_stage": "decode", "error_reason": "image_undecodable",
         "error": "MediaError: [image_undecodable] bad", "drop_reason": None, "chosen": None, "rejected": None,
         "score_chosen": None, "score_rejected": None, "margin": None, "judgments": None},
    ]


def as_table(rows):
    schema = pa.schema([("image", MEDIA_TYPE), ("judgments", pa.list_(JUDGMENT_TYPE))])
    table = pa.Table.from_pylist(rows)
    table = table.set_column(table.schema.get_field_index("image"), "image", pa.array([r["image"] for r in rows], schema.field("image").type))
    return table.set_column(table.schema.get_field_index("judgments"), "judgments", pa.array([r["judgments"] for r in rows], schema.field("judgments").type))


@pytest.fixture
def written(tmp_path):
    stage = WriteStage(str(tmp_path), judging_format("pairwise"))
    stats = json.loads(stage.process(as_table(judged_rows())).column("stats")[0].as_py())
    return tmp_path, stats


def read(root, name):
    return pq.read_table(root / name).to_pylist()


def test_every_row_lands_in_exactly_one_outcome(written):
    root, stats = written
    assert [r["id"] for r in read(root, "kept")] == ["k"]
    assert [r["id"] for r in read(root, "dropped")] == ["d"]
    assert [r["id"] for r in read(root, "errors")] == ["e"]
    assert stats["outcomes"] == {"kept": 1, "dropped": 1, "errors": 1}
    assert stats["error_reasons"] == {"image_undecodable": 1} and stats["drop_reasons"] == {"tie": 1}


def test_a_batch_written_again_keeps_its_first_commit_and_leaves_no_row_in_two_outcomes(written):
    # Ray runs a write task again when its node was lost after it wrote (lineage reconstruction), and
    # its rows may have been judged again on the way: the same rows make the same batch.
    root, first_stats = written
    manifest = next((root / "_manifests").glob("*.json"))
    first = manifest.stat().st_mtime_ns
    rejudged = judged_rows()
    rejudged[0].update(drop_reason="low_margin", chosen=None, rejected=None)  # kept the first time, dropped now
    stats = json.loads(WriteStage(str(root), judging_format("pairwise")).process(as_table(rejudged)).column("stats")[0].as_py())
    assert stats == first_stats and manifest.stat().st_mtime_ns == first
    assert [r["id"] for r in read(root, "kept")] == ["k"] and [r["id"] for r in read(root, "dropped")] == ["d"]
    assert len(list((root / "_manifests").glob("*.json"))) == 1 and len(read(root, "judgments")) == 4
    WriteStage(str(root), judging_format("pairwise")).process(as_table(judged_rows()[:2]))
    assert len(list((root / "_manifests").glob("*.json"))) == 2  # other rows: another batch


def test_outputs_hide_internal_columns_and_keep_reasons(written):
    root, _ = written
    kept, dropped, errors = read(root, "kept")[0], read(root, "dropped")[0], read(root, "errors")[0]
    assert not any(c.startswith("_") for c in kept) and "judgments" not in kept
    assert "drop_reason" not in kept and "error" not in kept and "error_reason" not in kept
    assert dropped["drop_reason"] == "tie" and "error_stage" not in dropped and "error_reason" not in dropped
    assert errors["error_stage"] == "decode" and errors["image"] == {"bytes": b"img", "path": None}
    assert errors["error_reason"] == "image_undecodable" and "drop_reason" not in errors


def test_preferences_are_trl_conversational_rows(written):
    root, _ = written
    table = pq.read_table(root / "preferences")
    assert table.schema.equals(preference_schema(), check_metadata=False)
    [row] = table.to_pylist()
    assert row["prompt"] == [{"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": "Q"}]}]
    assert row["chosen"] == [{"role": "assistant", "content": [{"type": "text", "text": "A"}]}]
    assert row["rejected"][0]["content"][0]["text"] == "B"
    assert row["images"] == [{"bytes": b"img", "path": None}] and row["margin"] == 7.0


def test_judgments_hold_every_raw_verdict_by_id(written):
    root, stats = written
    rows = read(root, "judgments")
    assert sorted((r["id"], r["order"]) for r in rows) == [("d", "ab"), ("d", "ba"), ("k", "ab"), ("k", "ba")]
    assert stats["requests"] == 4 and stats["output_tokens"] == 20


def test_no_partial_files_are_left(written):
    root, _ = written
    assert not [p for p in root.rglob("*") if p.name.startswith(".")]


def test_outputs_declare_their_media_as_datasets_features(written):
    from datasets import Audio, Features, Image, List, Video

    root, _ = written
    for name in ("kept", "dropped", "errors"):
        features = Features.from_arrow_schema(pq.read_schema(next((root / name).glob("*.parquet"))))
        assert isinstance(features["image"], Image), name
        assert features["id"].dtype == "string"
    features = Features.from_arrow_schema(pq.read_schema(next((root / "preferences").glob("*.parquet"))))
    assert features["images"] == List(Image()) and features["audios"] == List(Audio()) and features["videos"] == List(Video())


def by_path_rows():
    rows = judged_rows()[:1]
    rows[0]["image"] = {"bytes": None, "path": "pictures/cat.png"}
    return as_table(rows)


def test_preference_media_given_by_path_are_embedded_and_keep_their_path(tmp_path):
    reads = []
    stage = WriteStage(str(tmp_path), judging_format("pairwise"), embed_media=lambda v: reads.append(v) or b"PNG-bytes")
    stage.process(by_path_rows())
    assert read(tmp_path, "preferences")[0]["images"] == [{"bytes": b"PNG-bytes", "path": "pictures/cat.png"}]
    assert reads == [{"bytes": None, "path": "pictures/cat.png"}]
    assert read(tmp_path, "kept")[0]["image"] == {"bytes": None, "path": "pictures/cat.png"}  # kept/ as given


def test_without_embedding_or_when_the_file_is_gone_the_pair_keeps_the_path(tmp_path):
    WriteStage(str(tmp_path / "off"), judging_format("pairwise")).process(by_path_rows())
    assert read(tmp_path / "off", "preferences")[0]["images"] == [{"bytes": None, "path": "pictures/cat.png"}]

    def gone(value):
        raise FileNotFoundError(value["path"])

    WriteStage(str(tmp_path / "gone"), judging_format("pairwise"), embed_media=gone).process(by_path_rows())
    assert read(tmp_path / "gone", "preferences")[0]["images"] == [{"bytes": None, "path": "pictures/cat.png"}]
    assert [r["id"] for r in read(tmp_path / "gone", "kept")] == ["k"]
