"""DecodeStage: decode each row's image/audio/video once, on CPU, into bounded arrays.

The arrays travel to the judge as flat Arrow binary columns plus a shape column, so they cross
Ray's object store without pickling; `image_array`, `audio_array`, `video_array` (or
`decoded_media`) rebuild them as numpy views of those buffers (zero-copy, read-only).

A row whose media cannot be fetched or decoded goes to errors/ with error_stage "decode" and an
error text such as `MediaError: [image_too_large] header declares ...`; see stages/media.py for
the reason codes. A table without some media column (a text-only dataset) simply gets nulls.
"""
from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from pipelines.config import InputConfig, MediaConfig
from stages import media as media_ops
from stages.base import RowStage

IMAGE_PIXELS, IMAGE_SHAPE = "_image_pixels", "_image_shape"
AUDIO_SAMPLES = "_audio_samples"
VIDEO_FRAMES, VIDEO_SHAPE, VIDEO_FPS = "_video_frames", "_video_shape", "_video_fps"
AUDIO_DTYPE = np.dtype("<f4")


class DecodeStage(RowStage):
    """Fetch (media roots enforced) and decode the media of each row; CPU only, stateless."""

    name: ClassVar[str] = "decode"
    needs = ("image", "audio", "video")
    adds = {
        IMAGE_PIXELS: pa.binary(),
        IMAGE_SHAPE: pa.list_(pa.int32()),
        AUDIO_SAMPLES: pa.binary(),
        VIDEO_FRAMES: pa.binary(),
        VIDEO_SHAPE: pa.list_(pa.int32()),
        VIDEO_FPS: pa.float64(),
    }
    num_cpus = 1.0

    def __init__(self, media: MediaConfig, input: InputConfig, batch_size: int = 16):  # noqa: A002
        self.media, self.input, self.batch_size = media, input, batch_size

    def setup(self) -> None:
        media_ops.preload()

    def _load(self, row: dict[str, Any], kind: str) -> bytes | None:
        try:
            return media_ops.load_media_bytes(
                row.get(kind),
                media_roots=self.input.media_roots,
                allowed_schemes=self.input.allowed_schemes,
                max_bytes=self.media.max_media_bytes,
            )
        except media_ops.MediaError as exc:  # media_* reasons do not say which column: add it
            raise media_ops.MediaError(exc.reason, f"{kind}: {exc.detail}") from exc.__cause__

    def process_row(self, row: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        image, audio, video = (self._load(row, kind) for kind in ("image", "audio", "video"))
        if image is not None:
            pixels = media_ops.decode_image(image, self.media)
            out[IMAGE_PIXELS], out[IMAGE_SHAPE] = pixels.tobytes(), list(pixels.shape)
        if audio is not None:
            out[AUDIO_SAMPLES] = media_ops.decode_audio(audio, self.media).astype(AUDIO_DTYPE, copy=False).tobytes()
        if video is not None:
            frames, fps = media_ops.decode_video(video, self.media)
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


def audio_array(row: dict[str, Any]) -> np.ndarray | None:
    """float32 mono at media.audio_sample_rate, or None when the row has no audio."""
    if row.get(AUDIO_SAMPLES) is None:
        return None
    return _view(row[AUDIO_SAMPLES], AUDIO_DTYPE)


def video_array(row: dict[str, Any]) -> tuple[np.ndarray, float] | None:
    """(uint8 (T, H, W, 3) frames, sampling fps), or None when the row has no video."""
    if row.get(VIDEO_FRAMES) is None:
        return None
    frames = _view(row[VIDEO_FRAMES], np.uint8, _shape(row[VIDEO_SHAPE]))
    fps = row[VIDEO_FPS]
    return frames, float(fps.as_py() if isinstance(fps, pa.Scalar) else fps)


def decoded_media(row: dict[str, Any]) -> dict[str, Any]:
    """The row's decoded media by kind: any of "image", "audio", "video" and "video_fps"."""
    found: dict[str, Any] = {}
    if (image := image_array(row)) is not None:
        found["image"] = image
    if (audio := audio_array(row)) is not None:
        found["audio"] = audio
    if (video := video_array(row)) is not None:
        found["video"], found["video_fps"] = video
    return found
