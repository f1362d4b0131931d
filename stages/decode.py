"""DecodeStage: decode each row's image/audio/video once, on CPU, into bounded arrays.

The arrays travel to the judge as flat Arrow binary columns plus a shape column, so they cross
Ray's object store without pickling; `image_array`, `audio_array`, `video_array` (or
`decoded_media`) rebuild them as numpy views of those buffers (zero-copy, read-only).

Decoded audio carries the rate it was resampled to (`media.audio_sample_rate`) and video the
rate its frames were sampled at, so the engine is told what the data holds, never a constant.

A row whose media cannot be fetched or decoded goes to errors/ with error_stage "decode", its
reason code in error_reason and an error text such as `MediaError: [image_too_large] header
declares ...`; see stages/media/errors.py for the codes. Degenerate but readable media that a stated
rule keeps from judging (a side ratio over 200, a clip under audio_min_seconds, and what the
`media` section's rules drop) goes to dropped/ with its drop_reason instead. A table without some
media column (a text-only dataset) simply gets nulls.
"""
from __future__ import annotations

from typing import Any, ClassVar, Mapping

import numpy as np
import pyarrow as pa

from stages.base import RowStage
from stages.media import preload
from stages.media.audio import decode_audio
from stages.media.config import MediaConfig
from stages.media.errors import MediaError
from stages.media.fetch import MediaSourceConfig, load_media_bytes
from stages.media.image import decode_image
from stages.media.video import decode_video
from stages.rows import DEFAULT_MEDIA

AUDIO_DTYPE = np.dtype("<f4")
# Per modality, the columns a decoded medium travels in, by suffix: `_{column}{suffix}`.
DECODED: dict[str, dict[str, pa.DataType]] = {
    "image": {"_pixels": pa.binary(), "_shape": pa.list_(pa.int32())},
    "audio": {"_samples": pa.binary(), "_rate": pa.int32()},
    "video": {"_frames": pa.binary(), "_shape": pa.list_(pa.int32()), "_fps": pa.float64()},
}


def decoded_columns(media: Mapping[str, str]) -> dict[str, pa.DataType]:
    """The columns decoded media travel in, for media columns (column -> modality)."""
    return {f"_{column}{suffix}": kind for column, modality in media.items() for suffix, kind in DECODED[modality].items()}


class DecodeStage(RowStage):
    """Fetch (media roots enforced) and decode the media of each row; CPU only, stateless. `media`:
    the judging format's media columns and their modalities (default: image, audio, video)."""

    name: ClassVar[str] = "decode"
    num_cpus = 1.0
    # The data's bytes go to C decoders (libjpeg, libsndfile, FFmpeg): a file that crashes one, or
    # that it exhausts memory on, kills the task's process, which Ray Data retries without end.
    quarantine_after = 2

    def __init__(
        self,
        media: MediaConfig,
        source: MediaSourceConfig,
        batch_size: int = 16,
        columns: Mapping[str, str] = DEFAULT_MEDIA,
    ):
        self.media, self.source, self.batch_size = media, source, batch_size
        self.columns = dict(columns)
        self.needs = tuple(self.columns)
        self.adds = decoded_columns(self.columns)

    def setup(self) -> None:
        preload()

    def _load(self, row: dict[str, Any], column: str) -> bytes | None:
        try:
            return load_media_bytes(
                row.get(column),
                media_roots=self.source.media_roots,
                allowed_schemes=self.source.allowed_schemes,
                max_bytes=self.media.max_media_bytes,
            )
        except MediaError as exc:  # media_* reasons do not say which column: add it
            raise MediaError(exc.reason, f"{column}: {exc.detail}") from exc.__cause__

    def process_row(self, row: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for column, modality in self.columns.items():
            data = self._load(row, column)
            if data is None:
                continue
            if modality == "image":
                pixels = decode_image(data, self.media)
                out[f"_{column}_pixels"], out[f"_{column}_shape"] = pixels.tobytes(), list(pixels.shape)
            elif modality == "audio":
                samples = decode_audio(data, self.media).astype(AUDIO_DTYPE, copy=False)
                out[f"_{column}_samples"], out[f"_{column}_rate"] = samples.tobytes(), self.media.audio_sample_rate
            else:
                frames, fps = decode_video(data, self.media)
                out[f"_{column}_frames"], out[f"_{column}_shape"], out[f"_{column}_fps"] = (
                    frames.tobytes(), list(frames.shape), fps
                )
        return out


def _view(value: Any, dtype: np.dtype | type, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """A read-only numpy view of a binary cell (bytes, memoryview or pyarrow BinaryScalar), no copy.

    Arrow buffers are shared (other rows, other consumers): the view is never writeable.
    """
    array = np.frombuffer(value.as_buffer() if isinstance(value, pa.Scalar) else value, dtype=dtype)
    array.flags.writeable = False
    return array if shape is None else array.reshape(shape)


def _plain(value: Any) -> Any:
    return value.as_py() if isinstance(value, pa.Scalar) else value


def image_array(row: dict[str, Any], column: str = "image") -> np.ndarray | None:
    """uint8 (H, W, 3) from the decode columns of one row, or None when it has no such image."""
    if row.get(f"_{column}_pixels") is None:
        return None
    return _view(row[f"_{column}_pixels"], np.uint8, tuple(int(x) for x in _plain(row[f"_{column}_shape"])))


def audio_array(row: dict[str, Any], column: str = "audio") -> tuple[np.ndarray, int] | None:
    """(float32 mono samples, their sample rate), or None when the row has no such audio."""
    if row.get(f"_{column}_samples") is None:
        return None
    return _view(row[f"_{column}_samples"], AUDIO_DTYPE), int(_plain(row[f"_{column}_rate"]))


def video_array(row: dict[str, Any], column: str = "video") -> tuple[np.ndarray, float] | None:
    """(uint8 (T, H, W, 3) frames, sampling fps), or None when the row has no such video."""
    if row.get(f"_{column}_frames") is None:
        return None
    frames = _view(row[f"_{column}_frames"], np.uint8, tuple(int(x) for x in _plain(row[f"_{column}_shape"])))
    return frames, float(_plain(row[f"_{column}_fps"]))


def decoded_media(row: dict[str, Any], columns: Mapping[str, str] = DEFAULT_MEDIA) -> dict[str, Any]:
    """The row's decoded media by column, each in the engine's form (`JudgeRequest.multi_modal_data`):
    an image -> pixels, an audio clip -> (samples, rate), a video -> (frames, {"fps": fps})."""
    found: dict[str, Any] = {}
    for column, modality in columns.items():
        if modality == "image" and (image := image_array(row, column)) is not None:
            found[column] = image
        elif modality == "audio" and (audio := audio_array(row, column)) is not None:
            found[column] = audio
        elif modality == "video" and (video := video_array(row, column)) is not None:
            frames, fps = video
            found[column] = (frames, {"fps": fps})
    return found
