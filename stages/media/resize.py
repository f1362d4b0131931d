"""Qwen's resize rule: the bounded shape an image or a video frame is resized to.

A tiny source (a tracking pixel) is resized up to the model's minimum, as Qwen's processors do,
unless `media.min_image_side` drops it; a shape the rule cannot make (a side ratio over 200, a
side rounding to 0) is dropped too: the media was read, the model cannot take it.
"""
from __future__ import annotations

import math

from stages.media.errors import MediaDropped

FACTOR = 28  # Qwen2.5 vision: 14-pixel patches merged 2x2
MAX_ASPECT_RATIO = 200  # qwen-omni-utils' MAX_RATIO


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """qwen-omni-utils' `smart_resize` (v2_5.vision_process), the rule the model was trained with:
    both sides a multiple of `factor`, the area within [min_pixels, max_pixels], the aspect ratio
    kept. Restated here because importing it imports torch and torchvision, which would cost every
    CPU decode worker ~270 MiB and seconds of start-up; tests/unit/test_media.py pins it to the
    original over many shapes."""
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ValueError(f"absolute aspect ratio must be smaller than {MAX_ASPECT_RATIO}")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar



def resized_shape(
    height: int, width: int, min_pixels: int, max_pixels: int, kind: str, min_side: int = 0
) -> tuple[int, int]:
    """(height, width) Qwen resizes a `kind` ("image"/"video") of this size to, or MediaDropped."""
    if max(height, width) < min_side:
        raise MediaDropped(f"{kind}_too_small", f"{width}x{height} is under media.min_image_side={min_side} pixels")
    try:
        if min(height, width) < 1:
            raise ValueError("a side of 0 pixels")
        new_height, new_width = smart_resize(height, width, FACTOR, min_pixels, max_pixels)
    except ValueError as exc:
        raise MediaDropped(f"{kind}_aspect_ratio", f"cannot resize {width}x{height}: {exc}") from exc
    if new_height < 1 or new_width < 1:
        raise MediaDropped(
            f"{kind}_aspect_ratio", f"{width}x{height} is too thin: bounded to {max_pixels} pixels a side rounds to 0"
        )
    return new_height, new_width
