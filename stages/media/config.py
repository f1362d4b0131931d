"""The bounds every decoded media value is held to (the run config's `media` section)."""
from __future__ import annotations

from pydantic import Field, model_validator

from stages.config import ConfigSection


class MediaConfig(ConfigSection):
    image_min_pixels: int = Field(default=4 * 28 * 28, gt=0, description="Qwen smart_resize lower bound.")
    image_max_pixels: int = Field(
        default=448 * 448, gt=0, description="Qwen smart_resize upper bound; the paper judged at 448x448."
    )
    image_max_source_pixels: int = Field(
        default=64_000_000,
        gt=0,
        description="Images whose header declares more pixels are rejected before decoding "
        "(decompression-bomb guard).",
    )
    min_image_side: int = Field(
        default=0,
        ge=0,
        description="Images and video frames whose longer side is under this many pixels (tracking pixels, "
        "spacers) are dropped as image_too_small / video_too_small. 0: every readable image is judged, a tiny one "
        "resized up to image_min_pixels as Qwen's processors do.",
    )
    max_media_bytes: int = Field(
        default=256 * 1024 * 1024, gt=0, description="Largest encoded media value accepted, in bytes."
    )
    audio_sample_rate: int = Field(default=16_000, gt=0, description="Qwen's audio encoders expect 16 kHz.")
    audio_max_seconds: float = Field(default=30.0, gt=0, description="Longer clips are cut to this length.")
    audio_min_seconds: float = Field(
        default=0.1, ge=0, description="Shorter clips (and clips with no samples) are dropped as audio_too_short."
    )
    drop_silent_audio: bool = Field(
        default=False,
        description="Drop clips whose peak amplitude stays under 1e-4 (audio_silent); false: silence is judged.",
    )
    video_fps: float = Field(default=1.0, gt=0, description="Frames sampled per second of video.")
    video_max_frames: int = Field(default=16, ge=2, description="Most frames kept from one video.")
    video_min_pixels: int = Field(default=4 * 28 * 28, gt=0, description="Per-frame smart_resize lower bound.")
    video_max_pixels: int = Field(default=224 * 224, gt=0, description="Per-frame smart_resize upper bound.")
    video_max_source_frames: int = Field(
        default=200_000, gt=0, description="Videos declaring more frames than this are rejected unread."
    )

    @model_validator(mode="after")
    def _ordered(self) -> "MediaConfig":
        if self.image_min_pixels > self.image_max_pixels:
            raise ValueError("image_min_pixels must not exceed image_max_pixels")
        if self.video_min_pixels > self.video_max_pixels:
            raise ValueError("video_min_pixels must not exceed video_max_pixels")
        if self.audio_min_seconds >= self.audio_max_seconds:
            raise ValueError("audio_min_seconds must be below audio_max_seconds")
        return self
