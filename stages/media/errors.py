"""Why a media value did not become a bounded array: `MediaError` (it could not be read) and
`MediaDropped` (it was read, and a stated rule keeps it from judging), with their reason codes.

Every failure in fetching or decoding is a `MediaError` whose `reason` is one of REASONS (its
`error_reason` in errors/); `str(err)` starts with `[reason]`, then says what was wrong and, when
another library raised, that exception's type and message. Degenerate but readable media (a tiny
image, a silent clip) is judged, or dropped by a rule of DROP_REASONS: dropped/, never errors/.
"""
from __future__ import annotations

from stages.rows import RowDropped, RowError

REASONS: dict[str, str] = {
    "media_empty": "the value (or the file it names) holds zero bytes",
    "media_too_large": "the encoded value is over media.max_media_bytes",
    "media_unsupported": "the value is neither bytes, a path string nor a {bytes, path} struct",
    "media_scheme_forbidden": "URI scheme not in input.allowed_schemes; http(s) is never fetched",
    "media_path_forbidden": "a path with no media_roots configured, or one resolving outside every root",
    "media_not_found": "the path is inside a root but no regular file is there",
    "media_unreadable": "the file exists but reading it failed (permissions, network)",
    "image_undecodable": "not an image in an accepted format, or a truncated/corrupt one",
    "image_too_large": "header declares more than image_max_source_pixels (decompression bomb guard)",
    "audio_undecodable": "neither libsndfile nor FFmpeg can read an audio stream from it",
    "video_undecodable": "FFmpeg cannot open the container or decode its video stream",
    "video_no_frames": "no video stream, or the stream yields no frames",
    "video_too_long": "declares (or holds) more than video_max_source_frames frames",
    "video_too_large": "frames declare more than image_max_source_pixels pixels",
}


class MediaError(RowError):
    """A media value that cannot become a bounded array; `reason` is a code listed in REASONS."""

    def __init__(self, reason: str, message: str, cause: BaseException | None = None):
        detail = f"{message} ({type(cause).__name__}: {cause})" if cause is not None else message
        super().__init__(reason, detail)


DROP_REASONS: dict[str, str] = {
    "image_too_small": "longer side under media.min_image_side pixels (off by default: tiny images are resized up "
    "to the model's minimum, as Qwen's processors do)",
    "image_aspect_ratio": "sides in a ratio over 200 (Qwen's processors refuse it), or a side that bounding to "
    "media.image_max_pixels rounds to 0",
    "video_too_small": "frames' longer side under media.min_image_side pixels (off by default)",
    "video_aspect_ratio": "frames in a ratio over 200, or a side rounding to 0",
    "audio_too_short": "shorter than media.audio_min_seconds, or no samples at all",
    "audio_silent": "peak amplitude below 1e-4 after downmix, with media.drop_silent_audio (off by default: "
    "silence is judged)",
}


class MediaDropped(RowDropped):
    """Readable media a stated rule keeps from judging; `reason` is a code listed in DROP_REASONS."""
