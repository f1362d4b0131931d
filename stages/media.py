"""Fetch, decode and bound one media value: pure functions, no Ray, no pipeline state.

`load_media_bytes` turns a column value (embedded bytes, a Hugging Face `{bytes, path}` struct or
a path/URI) into encoded bytes, reading only inside `input.media_roots`. `decode_image`,
`decode_audio` and `decode_video` turn encoded bytes into the bounded arrays the judge sends to
vLLM, applying Qwen's own resize rule (`smart_resize` from qwen-omni-utils) to images and frames.

Every failure is a `MediaError` whose `reason` is one of these codes (`str(err)` starts with
`[reason]`, then says what was wrong and, when another library raised, that exception's type and
message):

    media_empty             the value (or the file it names) holds zero bytes
    media_too_large         the encoded value is over media.max_media_bytes
    media_unsupported       the value is neither bytes, a path string nor a {bytes, path} struct
    media_scheme_forbidden  the path's URI scheme is not in input.allowed_schemes; http(s) is
                            always refused (remote fetching is not supported, even if listed)
    media_path_forbidden    a path while input.media_roots is empty, or one that resolves (after
                            `..` and symlinks) outside every root, or a URI with a query/fragment
    media_not_found         the path is inside a root but no regular file is there
    media_unreadable        the file exists but reading it failed (permissions, network)
    image_undecodable       not an image in an accepted format, or a truncated/corrupt one
    image_too_large         the header declares more than media.image_max_source_pixels pixels,
                            or Pillow flags it as a decompression bomb; rejected before decoding
    image_too_small         both sides are under MIN_SOURCE_SIDE (14) pixels: smaller than one
                            vision patch (1x1 tracking pixels, favicons); see MIN_SOURCE_SIDE
    image_aspect_ratio      smart_resize cannot shape it: longer/shorter side over 200, or a
                            side that would round to zero pixels
    audio_undecodable       neither libsndfile nor FFmpeg can read an audio stream from it, or
                            its header declares an implausible rate/channel count
    audio_too_short         shorter than media.audio_min_seconds (including zero samples)
    audio_silent            peak amplitude below SILENCE_PEAK (1e-4) after downmix
    video_undecodable       FFmpeg cannot open the container or decode its video stream
    video_no_frames         no video stream, or the stream yields no frames
    video_too_long          the stream declares (or turns out to hold) more than
                            media.video_max_source_frames frames; checked before decoding
    video_too_large         a frame declares more than media.image_max_source_pixels pixels
    video_too_small         video frames under MIN_SOURCE_SIDE on both sides
    video_aspect_ratio      smart_resize cannot shape its frames (as image_aspect_ratio)

Decisions worth knowing:
- An empty (or whitespace) path string and a struct whose bytes and path are both null mean "no
  media" (None), the same as a null value; embedded zero-length bytes are media_empty.
- Relative paths are joined to each root in order; the first existing file inside a root wins.
  Object-store URIs (s3://, gs://) are normalised textually (`..` collapsed) and must share the
  root's scheme and bucket and sit under its prefix; the normalised key is what gets read, and the
  filesystem is built from the (trusted) root URI, never from the data's URI.
- Images are decoded with Pillow, restricted to IMAGE_FORMATS (no EPS, which would run
  Ghostscript); PyAV opens only the demuxers in VIDEO_DEMUXERS / AUDIO_DEMUXERS (no playlists or
  concat lists, which can make FFmpeg open other files).
- A 1x1 (or any image under 14x14) is rejected as image_too_small rather than blown up by
  smart_resize to a flat 56x56 square: it is a placeholder, and a verdict on it means nothing.
- Animated images keep their first frame; EXIF orientation is applied; 16-bit/float, CMYK and
  palette images become 8-bit RGB; transparency is composited onto white.
- Audio is read with libsndfile first (at most audio_max_seconds of frames, never the length a
  header claims), FFmpeg (PyAV) as the fallback; channels are averaged, soxr resamples, NaN/inf
  become 0/+-1, values are clipped to [-1, 1]. A decoder error anywhere in the part read is
  audio_undecodable (a FLAC cut mid-frame), but where the library itself stops quietly at the
  end of the data (a WAV shorter than its header says, most cut MP3s) the samples present are kept.
- Video frames are sampled by timestamp (the first frame at or after each target time) every
  1/video_fps seconds, spread evenly over the whole clip when that would exceed video_max_frames;
  decoding seeks ahead over gaps longer than SEEK_GAP_S (2 s; raised whenever a seek lands
  behind the frames already decoded) and stops as soon as the last target is met. The returned
  fps is the mean rate of the sampled timestamps (1/step when only one frame was found). An odd
  count gets its last frame repeated (Qwen's FRAME_FACTOR = 2).
- Pillow's DecompressionBombWarning is turned into an error with `warnings.catch_warnings`, which
  is process-global: fine in Ray's one-task-per-process workers.
"""
from __future__ import annotations

import functools
import io
import math
import os
import posixpath
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import numpy as np

from pipelines.config import MediaConfig

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

FACTOR = 28  # Qwen2.5 vision: 14-pixel patches merged 2x2
MIN_SOURCE_SIDE = 14  # one vision patch; an image smaller on both sides is a placeholder
SILENCE_PEAK = 1e-4
SEEK_GAP_S = 2.0  # seek when the next sample is further ahead than this (grows when seeks land behind)
MAX_SOURCE_RATE = 768_000
MAX_SOURCE_CHANNELS = 64
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF", "AVIF", "PPM", "TGA", "ICO", "QOI")  # JPEG covers MPO
VIDEO_DEMUXERS = "mov,matroska,avi,mpegts,mpeg,flv,ogg,asf,gif,m4v,h264,hevc"
AUDIO_DEMUXERS = "wav,w64,mp3,aac,flac,ogg,mov,matroska,asf,aiff,caf,amr"
_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


class MediaError(ValueError):
    """A media value that cannot become a bounded array; `reason` is a code listed in REASONS."""

    def __init__(self, reason: str, message: str, cause: BaseException | None = None):
        detail = f"{message} ({type(cause).__name__}: {cause})" if cause is not None else message
        super().__init__(f"[{reason}] {detail}")
        self.reason, self.detail = reason, detail

    def __reduce__(self) -> tuple[Any, ...]:  # survives pickling (Ray ships exceptions between processes)
        return (_rebuild_media_error, (self.reason, self.detail))


def _rebuild_media_error(reason: str, detail: str) -> MediaError:
    return MediaError(reason, detail)


# --------------------------------------------------------------------------- loading


def load_media_bytes(
    value: Any, *, media_roots: list[str], allowed_schemes: list[str], max_bytes: int
) -> bytes | None:
    """Encoded bytes for one column value, or None when the row has no such media."""
    if value is None:
        return None
    if isinstance(value, dict):
        embedded, path = value.get("bytes"), value.get("path")
        if embedded is not None and not isinstance(embedded, (bytes, bytearray, memoryview)):
            raise MediaError("media_unsupported", f"struct field 'bytes' holds {type(embedded).__name__}")
        value = embedded if embedded is not None else path
        if value is None:
            return None
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _bounded(bytes(value), max_bytes, "embedded bytes")
    if isinstance(value, str):
        if not value.strip():
            return None
        return _read_path(value.strip(), media_roots, [s.lower() for s in allowed_schemes], max_bytes)
    raise MediaError(
        "media_unsupported",
        f"expected bytes, a path string or a {{bytes, path}} struct, got {type(value).__name__}",
    )


def _bounded(data: bytes, max_bytes: int, what: str) -> bytes:
    if not data:
        raise MediaError("media_empty", f"{what}: zero bytes")
    if len(data) > max_bytes:
        raise MediaError("media_too_large", f"{what}: {len(data)} bytes, over max_media_bytes={max_bytes}")
    return data


@dataclass(frozen=True)
class _Place:
    """A normalised location: local (`scheme` file, absolute real path) or an object-store URI."""

    scheme: str
    bucket: str
    path: str
    root: str = ""  # the media root it was checked against (its filesystem reads it)

    def inside(self, other: "_Place") -> bool:
        if (self.scheme, self.bucket) != (other.scheme, other.bucket):
            return False
        base = other.path.rstrip("/") + "/"
        return self.path == other.path or self.path.startswith(base)

    def text(self) -> str:
        return self.path if self.scheme == "file" else f"{self.scheme}://{self.bucket}{self.path}"


def _place(text: str, trusted: bool = False) -> _Place:
    """Parse and normalise a path or URI; local paths are resolved (`..`, symlinks).

    Only a trusted text (a configured media root) may carry a query string (`?region=...`).
    """
    if "\x00" in text:
        raise MediaError("media_path_forbidden", f"NUL byte in path {text!r}")
    match = _URI.match(text)
    if not match:
        return _Place("file", "", os.path.realpath(text))
    parts = urlsplit(text)
    if not trusted and (parts.query or parts.fragment):
        raise MediaError("media_path_forbidden", f"query strings and fragments are not accepted: {text!r}")
    scheme, path = match.group(1).lower(), unquote(parts.path)
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise MediaError("media_path_forbidden", f"file URI with a host: {text!r}")
        return _Place("file", "", os.path.realpath(path))
    return _Place(scheme, parts.netloc, posixpath.normpath("/" + path.lstrip("/")))


_REMOTE = ("http", "https")


def _read_path(text: str, roots: list[str], schemes: list[str], max_bytes: int) -> bytes:
    match = _URI.match(text)
    scheme = match.group(1).lower() if match else ("file" if os.path.isabs(text) else None)
    if scheme in _REMOTE:
        raise MediaError(
            "media_scheme_forbidden",
            f"remote http(s) fetching is not supported (download the media or embed its bytes): {text!r}",
        )
    if scheme is not None and scheme not in schemes:
        raise MediaError("media_scheme_forbidden", f"{text!r}: scheme {scheme!r} is not in allowed_schemes {schemes}")
    if not roots:
        raise MediaError(
            "media_path_forbidden",
            f"input.media_roots is empty, so media must be embedded bytes; refusing to read {text!r}",
        )
    candidates = _candidates(text, [_place(root, trusted=True) for root in roots], roots)
    if not candidates:
        raise MediaError("media_path_forbidden", f"{text!r} resolves outside every media root {roots}")
    permitted = [c for c in candidates if c.scheme in schemes and c.scheme not in _REMOTE]
    if not permitted:
        raise MediaError(
            "media_scheme_forbidden", f"{text!r}: scheme {candidates[0].scheme!r} is not in allowed_schemes {schemes}"
        )
    for place in permitted:
        data = _read_file(place, max_bytes)
        if data is not None:
            return data
    raise MediaError("media_not_found", f"no file at {text!r} under media roots {roots}")


def _candidates(text: str, roots: list[_Place], raw_roots: list[str]) -> list[_Place]:
    """Normalised locations `text` may denote, each inside a root (relative paths: one per root)."""
    relative = not _URI.match(text) and not os.path.isabs(text)
    found = []
    for root, raw in zip(roots, raw_roots):
        if relative:
            joined = os.path.join(root.path, text) if root.scheme == "file" else posixpath.join(root.path, text)
            place = _place(joined if root.scheme == "file" else f"{root.scheme}://{root.bucket}{joined}")
        else:
            place = _place(text)
        if place.inside(root):
            found.append(_Place(place.scheme, place.bucket, place.path, raw))
    return found


@functools.lru_cache(maxsize=32)
def _root_filesystem(root: str) -> tuple[Any, str]:
    """(pyarrow filesystem, base path) for a media root; built once per worker."""
    from pyarrow import fs

    if not _URI.match(root) or root.lower().startswith("file://"):
        return fs.LocalFileSystem(), ""
    filesystem, base = fs.FileSystem.from_uri(root)
    return filesystem, base


def _read_file(place: _Place, max_bytes: int) -> bytes | None:
    """The file's bytes, or None when nothing is there."""
    from pyarrow import fs

    try:
        filesystem, base = _root_filesystem(place.root)
        if place.scheme == "file":
            path = place.path
        else:
            rest = place.path[len(_place(place.root, trusted=True).path.rstrip("/")) :]
            path = base.rstrip("/") + "/" + rest.lstrip("/")
        info = filesystem.get_file_info(path)
        if info.type != fs.FileType.File:
            return None
        if info.size is not None and info.size > max_bytes:
            raise MediaError("media_too_large", f"{place.text()}: {info.size} bytes, over max_media_bytes={max_bytes}")
        with filesystem.open_input_file(path) as handle:
            data = handle.read(max_bytes + 1)
    except MediaError:
        raise
    except Exception as exc:
        raise MediaError("media_unreadable", f"cannot read {place.text()}", exc) from exc
    return _bounded(data, max_bytes, place.text())


# --------------------------------------------------------------------------- Qwen's resize rule


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


def preload() -> None:
    """Import the decoders now rather than on a worker's first row."""
    import av  # noqa: F401
    import soundfile  # noqa: F401
    from PIL import Image

    Image.init()


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


# --------------------------------------------------------------------------- images

_ALPHA_MODES = ("RGBA", "LA", "La", "RGBa", "PA")
_ORIENTATION_TAG = 0x0112


def decode_image(data: bytes, cfg: MediaConfig) -> np.ndarray:
    """uint8 (H, W, 3) RGB, first frame, EXIF-oriented, resized by smart_resize to cfg's bounds."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = _open_image(data, cfg.image_max_source_pixels)
        try:
            orientation = _orientation(image)
            width, height = image.size[::-1] if orientation in (5, 6, 7, 8) else image.size
            new_height, new_width = resized_shape(height, width, cfg.image_min_pixels, cfg.image_max_pixels, "image")
            rgb = _to_rgb(_load_oriented(image, orientation, new_width, new_height))
            if rgb.size != (new_width, new_height):
                rgb = rgb.resize((new_width, new_height), Image.Resampling.BICUBIC)
            return np.array(rgb, dtype=np.uint8)
        except MediaError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise MediaError("image_too_large", "Pillow flagged a decompression bomb", exc) from exc
        except Exception as exc:
            raise MediaError("image_undecodable", "cannot decode the image", exc) from exc
        finally:
            image.close()


@functools.cache
def _image_formats() -> tuple[str, ...]:
    """IMAGE_FORMATS this Pillow build has plugins for (AVIF, for one, is optional)."""
    from PIL import Image

    Image.init()
    return tuple(name for name in IMAGE_FORMATS if name in Image.OPEN)


def _open_image(data: bytes, max_source_pixels: int) -> Any:
    """Pillow's lazy open (header only), with the declared-size guard."""
    from PIL import Image

    formats = _image_formats()
    try:
        image = Image.open(io.BytesIO(data), formats=formats)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise MediaError("image_too_large", "Pillow flagged a decompression bomb", exc) from exc
    except Exception as exc:
        raise MediaError("image_undecodable", f"not an image in {'/'.join(formats)}", exc) from exc
    width, height = image.size
    if width * height > max_source_pixels:
        image.close()
        raise MediaError(
            "image_too_large",
            f"header declares {width}x{height} = {width * height} pixels, "
            f"over image_max_source_pixels={max_source_pixels}",
        )
    return image


def _orientation(image: Any) -> int:
    """The EXIF Orientation tag (1 = as stored); a corrupt EXIF block counts as 1."""
    try:
        value = image.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:
        return 1
    return value if value in range(1, 9) else 1


def _load_oriented(image: Any, orientation: int, width: int, height: int) -> Any:
    """Decode (JPEG at a reduced DCT scale when far larger than needed) and apply EXIF orientation."""
    from PIL import ImageOps

    if image.format in ("JPEG", "MPO"):
        wanted = (height, width) if orientation in (5, 6, 7, 8) else (width, height)
        image.draft(None, (2 * wanted[0], 2 * wanted[1]))  # like Image.thumbnail's reducing_gap=2
    if orientation != 1:
        return ImageOps.exif_transpose(image)
    image.load()
    return image


def _to_rgb(image: Any) -> Any:
    """8-bit RGB: high-depth scaled down, CMYK/palette converted, transparency composited on white."""
    from PIL import Image

    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        image = _high_depth_to_gray(image)
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


def _high_depth_to_gray(image: Any) -> Any:
    """16-bit / 32-bit integer or float grayscale -> 8-bit L, scaled rather than clipped."""
    from PIL import Image

    values = np.asarray(image, dtype=np.float64)
    peak = float(values.max(initial=0.0))
    if image.mode.startswith("I;16") or (image.mode == "I" and peak > 255):
        values = values / 257.0
    elif image.mode == "F" and peak <= 1.0:
        values = values * 255.0
    return Image.fromarray(np.clip(np.rint(np.nan_to_num(values)), 0, 255).astype(np.uint8), "L")


# --------------------------------------------------------------------------- audio


def decode_audio(data: bytes, cfg: MediaConfig) -> np.ndarray:
    """float32 mono in [-1, 1] at cfg.audio_sample_rate, at most cfg.audio_max_seconds long."""
    import soxr

    samples, rate = _read_audio(data, cfg.audio_max_seconds)
    seconds = samples.shape[0] / rate
    if seconds < cfg.audio_min_seconds or samples.shape[0] == 0:
        raise MediaError("audio_too_short", f"{seconds:.3f} s, under audio_min_seconds={cfg.audio_min_seconds}")
    mono = samples.mean(axis=1, dtype=np.float64) if samples.shape[1] > 1 else samples[:, 0].astype(np.float64)
    mono = np.nan_to_num(mono, nan=0.0, posinf=1.0, neginf=-1.0)
    if rate != cfg.audio_sample_rate:
        mono = soxr.resample(mono, rate, cfg.audio_sample_rate)
    mono = np.clip(mono[: int(round(cfg.audio_max_seconds * cfg.audio_sample_rate))], -1.0, 1.0)
    peak = float(np.abs(mono).max(initial=0.0))
    if peak < SILENCE_PEAK:
        raise MediaError("audio_silent", f"peak amplitude {peak:.2e} is under {SILENCE_PEAK:g}")
    return np.ascontiguousarray(mono, dtype=np.float32)


def _read_audio(data: bytes, max_seconds: float) -> tuple[np.ndarray, int]:
    """float32 (frames, channels) and its sample rate, at most max_seconds (plus a frame) long."""
    try:
        return _read_soundfile(data, max_seconds)
    except MediaError:
        raise
    except Exception as sf_exc:
        first = f"libsndfile: {type(sf_exc).__name__}: {sf_exc}"
    try:
        return _read_pyav_audio(data, max_seconds)
    except MediaError:
        raise
    except Exception as exc:
        raise MediaError("audio_undecodable", f"no readable audio ({first}; then FFmpeg)", exc) from exc


def _check_audio_header(rate: int, channels: int) -> None:
    if not 0 < rate <= MAX_SOURCE_RATE or not 0 < channels <= MAX_SOURCE_CHANNELS:
        raise MediaError("audio_undecodable", f"implausible header: {rate} Hz, {channels} channels")


def _read_soundfile(data: bytes, max_seconds: float) -> tuple[np.ndarray, int]:
    import soundfile

    with soundfile.SoundFile(io.BytesIO(data)) as handle:
        _check_audio_header(handle.samplerate, handle.channels)
        limit = math.ceil(max_seconds * handle.samplerate)
        frames = min(limit, handle.frames) if handle.frames > 0 else 0
        return handle.read(frames=frames, dtype="float32", always_2d=True), handle.samplerate


def _read_pyav_audio(data: bytes, max_seconds: float) -> tuple[np.ndarray, int]:
    import av

    with av.open(io.BytesIO(data), options={"format_whitelist": AUDIO_DEMUXERS}, metadata_errors="replace") as box:
        if not box.streams.audio:
            raise ValueError(f"no audio stream in the {box.format.name} container")
        stream = box.streams.audio[0]
        _check_audio_header(stream.codec_context.sample_rate, stream.codec_context.channels)
        stream.codec_context.thread_count = 1
        resampler = av.AudioResampler(format="fltp")  # sample format only: layout and rate kept
        chunks: list[np.ndarray] = []
        rate, total = stream.codec_context.sample_rate, 0
        for frame in box.decode(stream):
            for out in resampler.resample(frame):
                rate = out.sample_rate
                chunks.append(out.to_ndarray().reshape(len(out.layout.channels), -1))
                total += chunks[-1].shape[1]
            if total >= max_seconds * rate:
                break
    if not chunks:
        return np.zeros((0, 1), np.float32), rate
    samples = np.concatenate(chunks, axis=1).T
    return samples[: math.ceil(max_seconds * rate)], rate


# --------------------------------------------------------------------------- video


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
        except MediaError:
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
            size = resized_shape(frame.height, frame.width, cfg.video_min_pixels, cfg.video_max_pixels, "video")
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
