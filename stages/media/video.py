"""Decode a video into bounded sampled frames (PyAV).

Only the demuxers in VIDEO_DEMUXERS are opened (no playlists or concat lists, which can make
FFmpeg open other files). Frames are sampled by timestamp (the first frame at or after each target
time) every 1/video_fps seconds, spread evenly over the whole clip when that would exceed
video_max_frames; decoding seeks ahead over gaps longer than SEEK_GAP_S (2 s; raised whenever a
seek lands behind the frames already decoded) and stops as soon as the last target is met. The
returned fps is the mean rate of the sampled timestamps (1/step when only one frame was found).
An odd count gets its last frame repeated (Qwen's FRAME_FACTOR = 2).
"""
from __future__ import annotations

import io
import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from stages.media.config import MediaConfig
from stages.media.errors import MediaDropped, MediaError
from stages.media.resize import resized_shape

SEEK_GAP_S = 2.0  # seek when the next sample is further ahead than this (grows when seeks land behind)
VIDEO_DEMUXERS = "mov,matroska,avi,mpegts,mpeg,flv,ogg,asf,gif,m4v,h264,hevc"


def decode_video(data: bytes, cfg: MediaConfig) -> tuple[np.ndarray, float]:
    """uint8 (T, H, W, 3) frames sampled at cfg.video_fps (T even, 2..video_max_frames) and that fps."""
    import av

    try:
        box = av.open(io.BytesIO(data), options={"format_whitelist": VIDEO_DEMUXERS}, metadata_errors="replace")
    except Exception as exc:
        raise MediaError(
            "video_undecodable", f"FFmpeg cannot open it as a video container ({VIDEO_DEMUXERS})", exc
        ) from exc
    with box:
        try:
            frames, times, step = _read_video(box, cfg)
        except (MediaError, MediaDropped):
            raise
        except Exception as exc:
            raise MediaError("video_undecodable", "cannot decode the video stream", exc) from exc
    if not frames:
        raise MediaError("video_no_frames", "the video stream yielded no frames")
    fps = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 1.0 / step
    if len(frames) % 2:
        frames.append(frames[-1])
    return np.stack(frames), float(fps)


def _read_video(box: Any, cfg: MediaConfig) -> tuple[list[np.ndarray], list[float], float]:
    if not box.streams.video:
        raise MediaError("video_no_frames", f"no video stream in the {box.format.name} container")
    stream = box.streams.video[0]
    if stream.codec_context is None:
        raise MediaError("video_undecodable", f"no decoder for the video codec ({stream.codec_tag or '?'})")
    stream.codec_context.thread_count = 1  # the stage reserves one CPU
    _check_video_header(box, stream, cfg)
    return _sample_frames(box, stream, cfg)


def _duration(box: Any, stream: Any) -> float | None:
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if box.duration:
        return box.duration / 1_000_000  # AV_TIME_BASE
    return None


def _frame_rate(stream: Any) -> float | None:
    rate = stream.average_rate or stream.guessed_rate
    return float(rate) if rate else None


def _check_video_header(box: Any, stream: Any, cfg: MediaConfig) -> None:
    width, height = stream.codec_context.width, stream.codec_context.height
    if width * height > cfg.image_max_source_pixels:
        raise MediaError(
            "video_too_large",
            f"frames declare {width}x{height} = {width * height} pixels, over image_max_source_pixels="
            f"{cfg.image_max_source_pixels}",
        )
    declared = stream.frames
    if not declared:
        seconds, rate = _duration(box, stream), _frame_rate(stream)
        declared = int(seconds * rate) if seconds and rate else 0
    if declared > cfg.video_max_source_frames:
        raise MediaError(
            "video_too_long",
            f"declares {declared} frames, over video_max_source_frames={cfg.video_max_source_frames}",
        )


def _targets(duration: float | None, cfg: MediaConfig) -> tuple[list[float], float]:
    """Sampling times (seconds from the first frame) and their spacing."""
    step = 1.0 / cfg.video_fps
    if duration and duration * cfg.video_fps > cfg.video_max_frames:
        step = duration / cfg.video_max_frames
    count = cfg.video_max_frames if not duration else max(1, min(cfg.video_max_frames, math.ceil(duration / step)))
    return [i * step for i in range(count)], step


def _sample_frames(box: Any, stream: Any, cfg: MediaConfig) -> tuple[list[np.ndarray], list[float], float]:
    """The first frame at or after each target time, resized; decodes no further than the last target."""
    targets, step = _targets(_duration(box, stream), cfg)
    rate = _frame_rate(stream) or 25.0
    tolerance = min(0.5 / rate, 0.25 * step)  # half a source frame: timestamps need not be exact
    reader = _FrameReader(box, stream, rate, cfg.video_max_source_frames)
    frames: list[np.ndarray] = []
    times: list[float] = []
    size: tuple[int, int] | None = None
    for target in targets:
        if times and target <= times[-1]:
            continue  # a sparse source: the last frame taken already covers this target
        found = reader.first_at(target - tolerance)
        if found is None:
            break
        frame, moment = found
        if size is None:
            size = resized_shape(
                frame.height, frame.width, cfg.video_min_pixels, cfg.video_max_pixels, "video", cfg.min_image_side
            )
        picture = frame.reformat(width=size[1], height=size[0], format="rgb24", interpolation="BICUBIC")
        frames.append(picture.to_ndarray())
        times.append(moment)
    return frames, times, step


class _FrameReader:
    """Decodes forward through one stream, seeking over long gaps, counting every decoded frame.

    A seek lands on the keyframe at or before the target. When that keyframe lies behind the
    frames already decoded (keyframes sparser than the gap), the seek only re-decoded frames: the
    gap needed before the next seek grows to at least the keyframe-to-target distance just seen.
    """

    def __init__(self, box: Any, stream: Any, rate: float, max_frames: int):
        self.box, self.stream, self.rate, self.max_frames = box, stream, rate, max_frames
        self.decoded, self.start, self.last = 0, None, -math.inf
        self.seek_gap, self.seeked_to = SEEK_GAP_S, None
        self.frames: Iterator[Any] = box.decode(stream)

    def first_at(self, moment: float) -> tuple[Any, float] | None:
        """The next frame at or after `moment` seconds from the first frame, with its time."""
        if self.start is not None and moment - self.last > self.seek_gap:
            self._seek(moment)
        for frame in self.frames:
            self.decoded += 1
            if self.decoded > self.max_frames:
                raise MediaError("video_too_long", f"decoded over video_max_source_frames={self.max_frames} frames")
            absolute = frame.time if frame.time is not None else (self.decoded - 1) / self.rate
            if self.start is None:
                self.start = absolute
            relative = absolute - self.start
            if self.seeked_to is not None and relative <= self.last:
                self.seek_gap = max(2 * self.seek_gap, self.seeked_to - relative)
            self.seeked_to = None
            if relative <= self.last:
                continue  # behind us: a seek landed on an earlier keyframe
            self.last = relative
            if relative >= moment:
                return frame, relative
        return None

    def _seek(self, moment: float) -> None:
        if not self.stream.time_base:
            return
        try:
            self.box.seek(int((self.start + moment) / self.stream.time_base), stream=self.stream, backward=True)
        except Exception:  # an unseekable container: keep decoding forward
            self.seek_gap = math.inf
            return
        self.frames, self.seeked_to = self.box.decode(self.stream), moment

