"""stages/decode.py: DecodeStage routes bad rows to errors and its helpers rebuild the arrays."""
from __future__ import annotations

import pickle

import numpy as np
import pyarrow as pa
import pytest

from pipelines.config import InputConfig
from stages import decode
from stages.media.audio import decode_audio
from stages.media.config import MediaConfig
from stages.media.image import decode_image
from stages.media.video import decode_video
from stages.rows import DROP_REASON, ERROR, ERROR_REASON, ERROR_STAGE
from tests import synthetic_media as sm

CFG = MediaConfig()
ADDS = decode.decoded_columns(decode.DEFAULT_MEDIA)  # what a stage with the default media columns adds
IMAGE, AUDIO, VIDEO = sm.png(96, 64), sm.wav(1.0, 22_050, 2), sm.mp4(seconds=3, fps=8)


def stage(**input_fields) -> decode.DecodeStage:
    return decode.DecodeStage(CFG, InputConfig(**input_fields))


def table(rows: list[dict]) -> pa.Table:
    schema = pa.schema(
        [("id", pa.string()), ("image", pa.binary()), ("audio", pa.binary()), ("video", pa.binary()),
         (ERROR_STAGE, pa.string()), (ERROR_REASON, pa.string()), (ERROR, pa.string())]
    )
    full = [{"image": None, "audio": None, "video": None, ERROR_STAGE: None, ERROR_REASON: None, ERROR: None, **row}
            for row in rows]
    return pa.Table.from_pylist(full, schema=schema)


@pytest.fixture(scope="module")
def processed() -> pa.Table:
    rows = [
        {"id": "good", "image": IMAGE, "audio": AUDIO, "video": VIDEO},
        {"id": "text_only"},
        {"id": "bomb", "image": sm.png_bomb(9_000, 9_000), "audio": AUDIO},
        {"id": "truncated", "image": sm.truncated_png()},
        {"id": "silent", "audio": sm.wav(1.0, silent=True)},
        {"id": "strip", "image": sm.png_extreme_aspect(), "audio": AUDIO},
        {"id": "pixel", "image": sm.png_1x1()},
        {"id": "not_video", "video": sm.not_an_image()},
        {"id": "earlier", "image": sm.not_an_image(), ERROR_STAGE: "normalize", ERROR_REASON: "KeyError",
         ERROR: "KeyError: 'question'"},
    ]
    return stage().process(table(rows))


def by_id(result: pa.Table) -> dict[str, dict]:
    return {row["id"]: row for row in result.to_pylist()}


def test_stage_contract():
    s = stage()
    assert s.name == "decode" and s.needs == ("image", "audio", "video")
    assert s.num_cpus == 1 and s.num_gpus == 0 and s.batch_size == 16
    assert decode.DecodeStage(CFG, InputConfig(), batch_size=4).batch_size == 4
    assert decode.DecodeStage(media=CFG, source=InputConfig()).media == CFG
    assert pickle.loads(pickle.dumps(s)).media == CFG  # Ray ships stages to workers


def test_columns_have_declared_types(processed):
    for column, kind in ADDS.items():
        assert processed.schema.field(column).type == kind
    assert processed.num_rows == 9


def test_good_row_gets_arrays_equal_to_direct_decode(processed):
    row = by_id(processed)["good"]
    assert row[ERROR_STAGE] is None and row[ERROR] is None
    assert np.array_equal(decode.image_array(row), decode_image(IMAGE, CFG))
    samples, rate = decode.audio_array(row)
    assert np.array_equal(samples, decode_audio(AUDIO, CFG)) and rate == CFG.audio_sample_rate
    frames, fps = decode.video_array(row)
    direct_frames, direct_fps = decode_video(VIDEO, CFG)
    assert np.array_equal(frames, direct_frames) and fps == direct_fps
    everything = decode.decoded_media(row)  # in the engine's form (JudgeRequest.multi_modal_data)
    assert set(everything) == {"image", "audio", "video"}
    assert everything["audio"][0].dtype == np.float32 and everything["audio"][1] == CFG.audio_sample_rate
    assert everything["image"].shape == tuple(row["_image_shape"])
    assert np.array_equal(everything["video"][0], direct_frames) and everything["video"][1] == {"fps": direct_fps}


def test_audio_carries_the_configured_rate():
    cfg = MediaConfig(audio_sample_rate=24_000)
    row = decode.DecodeStage(cfg, InputConfig()).process(table([{"id": "a", "audio": AUDIO}])).to_pylist()[0]
    samples, rate = decode.audio_array(row)
    assert rate == 24_000 and len(samples) == 24_000  # one second, resampled to the configured rate


def test_helpers_are_zero_copy_on_arrow_scalars(processed):
    row = {column: processed.column(column)[0] for column in ADDS}
    image = decode.image_array(row)
    assert not image.flags.owndata and not image.flags.writeable
    assert np.array_equal(image, decode.image_array(by_id(processed)["good"]))
    frames, fps = decode.video_array(row)
    assert frames.ndim == 4 and isinstance(fps, float)


def test_text_only_row_gets_nulls_and_no_error(processed):
    row = by_id(processed)["text_only"]
    assert all(row[column] is None for column in ADDS)
    assert row[ERROR_STAGE] is None and decode.decoded_media(row) == {}


@pytest.mark.parametrize(
    "row_id, reason, original",
    [("bomb", "image_too_large", None), ("truncated", "image_undecodable", "OSError"),
     ("not_video", "video_undecodable", "InvalidDataError")],
)
def test_bad_rows_go_to_errors_with_reason(processed, row_id, reason, original):
    row = by_id(processed)[row_id]
    assert row[ERROR_STAGE] == "decode" and row[ERROR_REASON] == reason
    assert row[ERROR].startswith(f"MediaError: [{reason}]")
    if original:
        assert original in row[ERROR]
    assert all(row[column] is None for column in ADDS)  # no half-decoded row


def test_degenerate_media_is_decoded_or_dropped_never_an_error(processed):
    rows = by_id(processed)
    assert rows["silent"][ERROR_STAGE] is None and decode.audio_array(rows["silent"])[0].size
    assert rows["pixel"][ERROR_STAGE] is None and decode.image_array(rows["pixel"]).shape == (56, 56, 3)
    strip = rows["strip"]
    assert (strip[ERROR_STAGE], strip[DROP_REASON]) == (None, "image_aspect_ratio")
    assert all(strip[column] is None for column in ADDS)
    assert {row[DROP_REASON] for row in rows.values()} == {None, "image_aspect_ratio"}


def test_rows_errored_earlier_pass_untouched(processed):
    row = by_id(processed)["earlier"]
    assert (row[ERROR_STAGE], row[ERROR_REASON], row[ERROR]) == ("normalize", "KeyError", "KeyError: 'question'")
    assert row["_image_pixels"] is None


def test_table_without_media_columns():
    plain = pa.table({"id": ["a", "b"], "question": ["q1", "q2"]})
    result = stage().process(plain)
    assert result.column(ERROR_STAGE).to_pylist() == [None, None]
    assert result.column("_image_pixels").to_pylist() == [None, None]


def test_hf_struct_column_and_paths_under_media_roots(tmp_path):
    (tmp_path / "img.png").write_bytes(IMAGE)
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    images = pa.array(
        [{"bytes": IMAGE, "path": "ignored.png"}, {"bytes": None, "path": "img.png"},
         {"bytes": None, "path": "../escape.png"}, {"bytes": None, "path": None}],
        type=struct,
    )
    result = stage(media_roots=[str(tmp_path)]).process(pa.table({"id": list("abcd"), "image": images}))
    rows = result.to_pylist()
    expected = decode_image(IMAGE, CFG)
    assert np.array_equal(decode.image_array(rows[0]), expected)
    assert np.array_equal(decode.image_array(rows[1]), expected)
    assert rows[2][ERROR_STAGE] == "decode" and "[media_path_forbidden] image: " in rows[2][ERROR]
    assert rows[3][ERROR_STAGE] is None and rows[3]["_image_pixels"] is None


def test_paths_are_refused_without_media_roots(tmp_path):
    (tmp_path / "img.png").write_bytes(IMAGE)
    result = stage().process(pa.table({"id": ["a"], "image": [str(tmp_path / "img.png")]}))
    assert "[media_path_forbidden]" in result.column(ERROR)[0].as_py()
