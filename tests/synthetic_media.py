"""Small synthetic media files, good and bad, as bytes, for the tests.

Every generator is deterministic (fixed seeds, no clocks), cheap (milliseconds, kilobytes) and
needs only the decoding stack the project already depends on. The plain ones the demo also embeds
come from jobs/demo_media.py; the rest are unusual or broken media, each exercising one path of
`stages.media`: their docstrings say which reason code they are expected to produce with the
default `MediaConfig`.
"""
from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

from jobs.demo_media import (  # noqa: F401 - re-exported: the tests draw every medium from here
    encode_image,
    encode_sound,
    encode_video,
    image,
    mp4,
    png,
    tone,
    truncated,
    truncated_png,
    video_codec,
    wav,
)

# --------------------------------------------------------------------------- images


def jpeg(
    width: int = 64, height: int = 48, mode: str = "RGB", orientation: int | None = None, quality: int = 90
) -> bytes:
    """A JPEG (mode RGB, L or CMYK); `orientation` (1-8) writes that EXIF Orientation tag."""
    params: dict = {"quality": quality}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        params["exif"] = exif.tobytes()
    return encode_image(image(width, height, mode), "JPEG", **params)


def cmyk_jpeg(width: int = 64, height: int = 48) -> bytes:
    """A CMYK JPEG (as print workflows and some stock photo sites produce)."""
    return jpeg(width, height, mode="CMYK")


def png16(width: int = 64, height: int = 48) -> bytes:
    """A 16-bit grayscale PNG (Pillow mode I;16) spanning the full 0..65535 range."""
    ramp = np.linspace(0, 65535, width * height, dtype=np.float64).reshape(height, width)
    return encode_image(Image.fromarray(ramp.astype(np.uint16)), "PNG")


def gif_animated(width: int = 48, height: int = 32, frames: int = 3) -> bytes:
    """An animated GIF; frame 0 is the reddest, so a decoder that keeps the first frame shows red."""
    images = []
    for index in range(frames):
        level = int(255 * (frames - index) / frames)
        images.append(Image.new("RGB", (width, height), (level, 40, 255 - level)).convert("P"))
    return encode_image(images[0], "GIF", save_all=True, append_images=images[1:], duration=100, loop=0)


def png_1x1() -> bytes:
    """A 1x1 PNG (a tracking pixel / placeholder): resized up and judged, or dropped by media.min_image_side."""
    return encode_image(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG")


def png_extreme_aspect(width: int = 2000, height: int = 4) -> bytes:
    """A 500:1 strip; smart_resize refuses ratios over 200 -> dropped as image_aspect_ratio."""
    return png(width, height)


def truncated_jpeg() -> bytes:
    """A JPEG cut mid-scan -> image_undecodable."""
    return truncated(jpeg(96, 96), 0.5)


def not_an_image() -> bytes:
    """Bytes no image decoder recognises -> image_undecodable (audio_undecodable, video_undecodable)."""
    return b"this is plain text, not a picture, not a sound, not a film.\n" * 8


def zero_bytes() -> bytes:
    """An empty value -> media_empty."""
    return b""


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_bomb(width: int = 50_000, height: int = 50_000, rows: int = 4) -> bytes:
    """A decompression bomb: a PNG whose header declares width x height grayscale pixels.

    The data carries only the first `rows` rows (all black, a few dozen bytes), so the file is
    tiny; a decoder that trusted the header would allocate width * height bytes before noticing.
    The default (2.5 G pixels) also trips Pillow's own DecompressionBombError at open;
    `png_bomb(9_000, 9_000)` (81 M) trips only the project's image_max_source_pixels check.
    """
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit gray, no interlace
    scanlines = b"".join(b"\x00" + bytes(width) for _ in range(rows))
    return b"".join(
        [
            b"\x89PNG\r\n\x1a\n",
            _png_chunk(b"IHDR", header),
            _png_chunk(b"IDAT", zlib.compress(scanlines, 9)),
            _png_chunk(b"IEND", b""),
        ]
    )


# --------------------------------------------------------------------------- audio


def flac(seconds: float = 1.0, sample_rate: int = 16_000, channels: int = 1, silent: bool = False) -> bytes:
    """A 16-bit FLAC of a tone (or digital silence)."""
    samples = tone(seconds, sample_rate, channels)
    return encode_sound(np.zeros_like(samples) if silent else samples, sample_rate, "FLAC", "PCM_16")


# FFmpeg's default layout name for 1-8 channels (PyAV names layouts, it does not count them).
_LAYOUTS = {1: "mono", 2: "stereo", 3: "3.0", 4: "quad", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}


def _pyav_audio(seconds: float, sample_rate: int, codec: str, container: str, channels: int = 1) -> bytes:
    import av

    if channels not in _LAYOUTS:
        raise ValueError(f"{channels} channels: PyAV encoding here supports 1-8")

    samples = tone(seconds, sample_rate, channels)
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as out:
        stream = out.add_stream(codec, rate=sample_rate)
        stream.layout = _LAYOUTS[channels]
        frame_size = stream.codec_context.frame_size or 1024
        for start in range(0, len(samples), frame_size):
            chunk = np.ascontiguousarray(samples[start : start + frame_size].T)
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=stream.layout.name)
            frame.sample_rate, frame.pts = sample_rate, start
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buffer.getvalue()


def mp3(seconds: float = 1.0, sample_rate: int = 16_000, channels: int = 1) -> bytes:
    """An MP3 (libmp3lame via PyAV); MP3 holds mono or stereo only."""
    if channels not in (1, 2):
        raise ValueError(f"MP3 holds 1 or 2 channels, not {channels}")
    return _pyav_audio(seconds, sample_rate, "libmp3lame", "mp3", channels)


def m4a(seconds: float = 1.0, sample_rate: int = 16_000, channels: int = 1) -> bytes:
    """AAC in an MP4 container (1-8 channels): libsndfile cannot read it, so it exercises the PyAV fallback."""
    return _pyav_audio(seconds, sample_rate, "aac", "mp4", channels)


def wav_unusual(seconds: float = 1.0) -> bytes:
    """A 6-channel WAV at 7350 Hz (odd rate, surround layout): downmixed and resampled."""
    return wav(seconds, sample_rate=7350, channels=6)


def wav_zero_seconds() -> bytes:
    """A well-formed WAV holding no samples -> dropped as audio_too_short."""
    return encode_sound(np.zeros((0, 1), np.float32), 16_000, "WAV", "PCM_16")


def wav_truncated(seconds: float = 2.0, keep: float = 0.3) -> bytes:
    """A WAV cut short: the header declares `seconds`, the file holds `keep` of it."""
    return truncated(wav(seconds), keep)


def flac_long(seconds: float = 600.0, tone_seconds: float = 31.0, sample_rate: int = 8_000) -> bytes:
    """A really long FLAC: `tone_seconds` of tone, then silence up to `seconds`.

    Silence compresses to a few bytes per FLAC block, so ten minutes is ~190 KB (almost all of it
    the tone); a decoder must read only the first audio_max_seconds of it.
    """
    import soundfile

    buffer = io.BytesIO()
    block = sample_rate * 10
    with soundfile.SoundFile(buffer, "w", sample_rate, 1, "PCM_16", format="FLAC") as out:
        out.write(tone(min(tone_seconds, seconds), sample_rate))
        remaining = int(seconds * sample_rate) - int(min(tone_seconds, seconds) * sample_rate)
        silence = np.zeros((block, 1), np.float32)
        while remaining > 0:
            out.write(silence[: min(block, remaining)])
            remaining -= block
    return buffer.getvalue()


def flac_declared_hours(hours: float = 10.0, seconds: float = 2.0, sample_rate: int = 16_000) -> bytes:
    """A short FLAC whose STREAMINFO claims `hours` of audio (a lying header).

    A decoder that sized its buffer from the header (soundfile.read() with no frame limit) would
    try to allocate hours of float32; a bounded read returns the real `seconds`.
    """
    data = bytearray(flac(seconds, sample_rate))
    declared = int(hours * 3600 * sample_rate)
    # STREAMINFO is the first metadata block: "fLaC", 4-byte block header, then 34 bytes; the
    # 36-bit total-samples field occupies the low 4 bits of byte 13 and bytes 14..17 of the block.
    offset = 4 + 4 + 13
    data[offset] = (data[offset] & 0xF0) | ((declared >> 32) & 0x0F)
    data[offset + 1 : offset + 5] = struct.pack(">I", declared & 0xFFFFFFFF)
    return bytes(data)


# --------------------------------------------------------------------------- video


def mkv(seconds: float = 2.0, fps: int = 8, width: int = 64, height: int = 48) -> bytes:
    """The same moving gradient in Matroska (which records no frame count, only a duration)."""
    count = max(1, int(round(seconds * fps)))
    return encode_video(list(range(count)), fps, width, height, container="matroska")


def mp4_one_frame(width: int = 64, height: int = 48) -> bytes:
    """A single-frame video (a still exported as a clip): sampled as 2 identical frames."""
    return encode_video([0], 8, width, height)


def video_declared_hours(hours: float = 10.0, fps: int = 30, width: int = 32, height: int = 32) -> bytes:
    """A Matroska file that declares `hours` at `fps` (hours * 3600 * fps frames) but holds 2.

    Its second frame sits `hours` after the first, so the container's duration and frame rate
    promise ~1 M frames at 10 h x 30 fps -> video_too_long, for a 5 KB file.
    """
    last = int(hours * 3600 * fps)
    return encode_video([0, last], fps, width, height, container="matroska")


def video_huge_frame(width: int = 8192, height: int = 8192) -> bytes:
    """One black frame of width x height (default 67 M pixels, over image_max_source_pixels).

    Encoded with libx264's ultrafast preset a black 8192x8192 frame is ~200 KB and ~0.4 s to
    make; rejected as video_too_large from the stream header, before any frame is decoded.
    """
    import av

    codec = "libx264" if "libx264" in av.codecs_available else video_codec()
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="mp4") as out:
        options = {"preset": "ultrafast"} if codec == "libx264" else {}
        stream = out.add_stream(codec, rate=1, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        frame = av.VideoFrame(width, height, "yuv420p")
        for plane, fill in zip(frame.planes, (16, 128, 128)):  # video-range black
            plane.update(bytes([fill]) * plane.buffer_size)
        frame.pts = 0
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buffer.getvalue()


def video_no_frames(width: int = 64, height: int = 48) -> bytes:
    """A Matroska file with a video track that holds no frames (an audio track keeps it valid)."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, "w", format="matroska") as out:
        video = out.add_stream(video_codec(), rate=8)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        audio = out.add_stream("aac", rate=16_000)
        audio.layout = "mono"
        samples = np.ascontiguousarray(tone(0.5).T)
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 16_000, 0
        out.mux(audio.encode(frame))
        out.mux(audio.encode(None))
    return buffer.getvalue()


def truncated_mp4(seconds: float = 2.0) -> bytes:
    """An MP4 cut in half: its index (moov, written last) is gone -> video_undecodable."""
    return truncated(mp4(seconds), 0.5)


# --------------------------------------------------------------------------- catalogue


def good_samples() -> dict[str, tuple[str, bytes]]:
    """name -> (modality, bytes) for media that decode; what the demo dataset embeds."""
    return {
        "png_rgb": ("image", png()),
        "png_rgba": ("image", png(mode="RGBA")),
        "png_palette": ("image", png(mode="P")),
        "png_la": ("image", png(mode="LA")),
        "png16": ("image", png16()),
        "jpeg": ("image", jpeg()),
        "jpeg_rotated": ("image", jpeg(orientation=6)),
        "jpeg_cmyk": ("image", cmyk_jpeg()),
        "gif_animated": ("image", gif_animated()),
        "wav": ("audio", wav()),
        "wav_stereo_44k": ("audio", wav(1.0, 44_100, 2)),
        "wav_unusual": ("audio", wav_unusual()),
        "flac": ("audio", flac()),
        "mp3": ("audio", mp3()),
        "m4a": ("audio", m4a()),
        "flac_long": ("audio", flac_long()),
        "flac_declared_hours": ("audio", flac_declared_hours()),
        "mp4": ("video", mp4()),
        "mkv": ("video", mkv()),
        "mp4_one_frame": ("video", mp4_one_frame()),
    }


def degenerate_samples() -> dict[str, tuple[str, bytes, str | None]]:
    """name -> (modality, bytes, drop reason or None: judged) under the default MediaConfig: readable
    media that is never an error."""
    return {
        "image_1x1": ("image", png_1x1(), None),
        "image_strip": ("image", png_extreme_aspect(), "image_aspect_ratio"),
        "audio_silent": ("audio", wav(1.0, silent=True), None),
        "audio_zero_seconds": ("audio", wav_zero_seconds(), "audio_too_short"),
        "audio_too_short": ("audio", wav(0.05), "audio_too_short"),
    }


def bad_samples() -> dict[str, tuple[str, bytes, str]]:
    """name -> (modality, bytes, expected reason) under the default MediaConfig."""
    return {
        "image_text": ("image", not_an_image(), "image_undecodable"),
        "image_truncated_png": ("image", truncated_png(), "image_undecodable"),
        "image_truncated_jpeg": ("image", truncated_jpeg(), "image_undecodable"),
        "image_empty": ("image", zero_bytes(), "media_empty"),
        "image_bomb": ("image", png_bomb(), "image_too_large"),
        "image_bomb_81m": ("image", png_bomb(9_000, 9_000), "image_too_large"),
        "audio_text": ("audio", not_an_image(), "audio_undecodable"),
        "audio_image": ("audio", png(), "audio_undecodable"),
        "video_text": ("video", not_an_image(), "video_undecodable"),
        "video_truncated": ("video", truncated_mp4(), "video_undecodable"),
        "video_no_frames": ("video", video_no_frames(), "video_no_frames"),
        "video_audio_only": ("video", m4a(), "video_no_frames"),
        "video_wav": ("video", wav(), "video_undecodable"),
        "video_declared_hours": ("video", video_declared_hours(), "video_too_long"),
    }
