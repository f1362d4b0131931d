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

from typing import Any, ClassVar

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
from stages.rows import MODALITIES

IMAGE_PIXELS, IMAGE_SHAPE = "_image_pixels", "_image_shape"
AUDIO_SAMPLES, AUDIO_RATE = "_audio_samples", "_audio_rate"
VIDEO_FRAMES, VIDEO_SHAPE, VIDEO_FPS = "_video_frames", "_video_shape", "_video_fps"
AUDIO_DTYPE = np.dtype("<f4")


class DecodeStage(RowStage):
    """Fetch (media roots enforced) and decode the media of each row; CPU only, stateless."""

    name: ClassVar[str] = "decode"
    needs = MODALITIES
    adds = {
        IMAGE_PIXELS: pa.binary(),
        IMAGE_SHAPE: pa.list_(pa.int32()),
        AUDIO_SAMPLES: pa.binary(),
        AUDIO_RATE: pa.int32(),
        VIDEO_FRAMES: pa.binary(),
        VIDEO_SHAPE: pa.list_(pa.int32()),
        VIDEO_FPS: pa.float64(),
    }
    num_cpus = 1.0

    def __init__(self, media: MediaConfig, source: MediaSourceConfig, batch_size: int = 16):
        self.media, self.source, self.batch_size = media, source, batch_size

    def setup(self) -> None:
        preload()

    def _load(self, row: dict[str, Any], kind: str) -> bytes | None:
        try:
            return load_media_bytes(
                row.get(kind),
                media_roots=self.source.media_roots,
                allowed_schemes=self.source.allowed_schemes,
                max_bytes=self.media.max_media_bytes,
            )
        except MediaError as exc:  # media_* reasons do not say which column: add it
            raise MediaError(exc.reason, f"{kind}: {exc.detail}") from exc.__cause__

    def process_row(self, row: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        image, audio, video = (self._load(row, kind) for kind in MODALITIES)
        if image is not None:
            pixels = decode_image(image, self.media)
            out[IMAGE_PIXELS], out[IMAGE_SHAPE] = pixels.tobytes(), list(pixels.shape)
        if audio is not None:
            samples = decode_audio(audio, self.media).astype(AUDIO_DTYPE, copy=False)
            out[AUDIO_SAMPLES], out[AUDIO_RATE] = samples.tobytes(), self.media.audio_sample_rate
        if video is not None:
            frames, fps = decode_video(video, self.media)
            out[VIDEO_FRAMES], out[VIDEO_SHAPE], out[VIDEO_FPS] = frames.tobytes(), list(frames.shape), fps
        return out


def _view(value: Any, dtype: np.dtype | type, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """A read-only numpy view of a binary cell (bytes, memoryview or pyarrow BinaryScalar), no copy.

    Arrow buffers are shared (other rows, other consumers): the view is never writeable.
    """
    array = np.frombuffer(value.as_buffer() if isinstance(value, pa.Scalar) else value, dtype=dtype)
    array.flags.writeable = False
    return array if shape is None else array.reshape(shape)


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(int(x) for x in (value.as_py() if isinstance(value, pa.Scalar) else value))


def image_array(row: dict[str, Any]) -> np.ndarray | None:
    """uint8 (H, W, 3) from the decode columns of one row, or None when it has no image."""
    if row.get(IMAGE_PIXELS) is None:
        return None
    return _view(row[IMAGE_PIXELS], np.uint8, _shape(row[IMAGE_SHAPE]))


def audio_array(row: dict[str, Any]) -> tuple[np.ndarray, int] | None:
    """(float32 mono samples, their sample rate), or None when the row has no audio."""
    if row.get(AUDIO_SAMPLES) is None:
        return None
    rate = row[AUDIO_RATE]
    return _view(row[AUDIO_SAMPLES], AUDIO_DTYPE), int(rate.as_py() if isinstance(rate, pa.Scalar) else rate)


def video_array(row: dict[str, Any]) -> tuple[np.ndarray, float] | None:
    """(uint8 (T, H, W, 3) frames, sampling fps), or None when the row has no video."""
    if row.get(VIDEO_FRAMES) is None:
        return None
    frames = _view(row[VIDEO_FRAMES], np.uint8, _shape(row[VIDEO_SHAPE]))
    fps = row[VIDEO_FPS]
    return frames, float(fps.as_py() if isinstance(fps, pa.Scalar) else fps)


def decoded_media(row: dict[str, Any]) -> dict[str, Any]:
    """The row's decoded media in the engine's form (`JudgeRequest.multi_modal_data`):
    "image" -> pixels, "audio" -> (samples, rate), "video" -> (frames, {"fps": fps})."""
    found: dict[str, Any] = {}
    if (image := image_array(row)) is not None:
        found["image"] = image
    if (audio := audio_array(row)) is not None:
        found["audio"] = audio
    if (video := video_array(row)) is not None:
        frames, fps = video
        found["video"] = (frames, {"fps": fps})
    return found
