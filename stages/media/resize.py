"""Qwen's resize rule: the bounded shape an image or a video frame is resized to.

A source under MIN_SOURCE_SIDE (14) pixels on both sides is rejected as `{kind}_too_small` rather
than blown up by smart_resize to a flat 56x56 square: it is a placeholder (a tracking pixel, a
favicon), and a verdict on it means nothing.
"""
from __future__ import annotations

import math

from stages.media.errors import MediaError

FACTOR = 28  # Qwen2.5 vision: 14-pixel patches merged 2x2
MIN_SOURCE_SIDE = 14  # one vision patch; an image smaller on both sides is a placeholder
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



def resized_shape(height: int, width: int, min_pixels: int, max_pixels: int, kind: str) -> tuple[int, int]:
    """(height, width) Qwen resizes a `kind` ("image"/"video") of this size to, or MediaError."""
    if min(height, width) < 1 or max(height, width) < MIN_SOURCE_SIDE:
        raise MediaError(f"{kind}_too_small", f"{width}x{height} is under {MIN_SOURCE_SIDE} pixels on both sides")
    try:
        new_height, new_width = smart_resize(height, width, FACTOR, min_pixels, max_pixels)
    except ValueError as exc:
        raise MediaError(f"{kind}_aspect_ratio", f"cannot resize {width}x{height}", exc) from exc
    if new_height < 1 or new_width < 1:
        raise MediaError(
            f"{kind}_aspect_ratio", f"{width}x{height} is too thin: bounded to {max_pixels} pixels a side rounds to 0"
        )
    return new_height, new_width

