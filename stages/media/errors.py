"""Why a media value could not become a bounded array: `MediaError` and its reason codes.

Every failure in fetching or decoding is a `MediaError` whose `reason` is one of REASONS (its
`error_reason` in errors/); `str(err)` starts with `[reason]`, then says what was wrong and, when
another library raised, that exception's type and message.
"""
from __future__ import annotations

from stages.rows import RowError

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
    "image_too_small": "both sides under 14 pixels (one vision patch): placeholders, tracking pixels",
    "image_aspect_ratio": "smart_resize cannot shape it (side ratio over 200, or a side rounding to 0)",
    "audio_undecodable": "neither libsndfile nor FFmpeg can read an audio stream from it",
    "audio_too_short": "shorter than audio_min_seconds (including zero samples)",
    "audio_silent": "peak amplitude below 1e-4 after downmix",
    "video_undecodable": "FFmpeg cannot open the container or decode its video stream",
    "video_no_frames": "no video stream, or the stream yields no frames",
    "video_too_long": "declares (or holds) more than video_max_source_frames frames",
    "video_too_large": "frames declare more than image_max_source_pixels pixels",
    "video_too_small": "frames under 14 pixels on both sides",
    "video_aspect_ratio": "smart_resize cannot shape its frames",
}


class MediaError(RowError):
    """A media value that cannot become a bounded array; `reason` is a code listed in REASONS."""

    def __init__(self, reason: str, message: str, cause: BaseException | None = None):
        detail = f"{message} ({type(cause).__name__}: {cause})" if cause is not None else message
        super().__init__(reason, detail)
