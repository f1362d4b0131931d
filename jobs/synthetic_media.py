"""Small synthetic media files, good and bad, as bytes.

The unit tests and the demo dataset both draw their media from here, so every generator is
deterministic (fixed seeds, no clocks), cheap (milliseconds, kilobytes) and needs only the
decoding stack the project already depends on (Pillow, soundfile, PyAV, numpy).

Good media have content: images are gradients plus seeded noise, audio is a tone, video is a
moving gradient. Bad media each exercise one rejection path of `stages.media`; their docstrings
say which reason code they are expected to produce with the default `MediaConfig`.
"""
from __future__ import annotations

import io
import struct
import zlib
from fractions import Fraction

import numpy as np
from PIL import Image

SEED = 1234


# --------------------------------------------------------------------------- images


def _pixels(width: int, height: int, seed: int = SEED) -> np.ndarray:
    """uint8 (height, width, 3): diagonal colour gradients plus a little seeded noise."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    red = 255 * x / max(width - 1, 1)
    green = 255 * y / max(height - 1, 1)
    blue = 127.5 + 127.5 * np.sin((x + y) / 7.0)
    noise = np.random.default_rng(seed).integers(-12, 13, size=(height, width, 3))
    return np.clip(np.stack([red, green, blue], axis=-1) + noise, 0, 255).astype(np.uint8)


def _save(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def image(width: int = 64, height: int = 48, mode: str = "RGB", seed: int = SEED) -> Image.Image:
    """A PIL image with content in any mode Pillow converts RGB to (RGB, RGBA, L, LA, P, CMYK)."""
    rgb = Image.fromarray(_pixels(width, height, seed), "RGB")
    if mode in ("RGBA", "LA"):
        alpha = np.tile(np.linspace(0, 255, width, dtype=np.uint8), (height, 1))
        rgba = rgb.convert("RGBA")
        rgba.putalpha(Image.fromarray(alpha, "L"))
        return rgba.convert(mode)
    return rgb.convert(mode)


def png(width: int = 64, height: int = 48, mode: str = "RGB", seed: int = SEED) -> bytes:
    """A PNG; `mode` RGBA/LA has a horizontal alpha ramp, P is a 256-colour palette image."""
    return _save(image(width, height, mode, seed), "PNG")


def jpeg(
    width: int = 64, height: int = 48, mode: str = "RGB", orientation: int | None = None, quality: int = 90
) -> bytes:
    """A JPEG (mode RGB, L or CMYK); `orientation` (1-8) writes that EXIF Orientation tag."""
    params: dict = {"quality": quality}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        params["exif"] = exif.tobytes()
    return _save(image(width, height, mode), "JPEG", **params)


def cmyk_jpeg(width: int = 64, height: int = 48) -> bytes:
    """A CMYK JPEG (as print workflows and some stock photo sites produce)."""
    return jpeg(width, height, mode="CMYK")


def png16(width: int = 64, height: int = 48) -> bytes:
    """A 16-bit grayscale PNG (Pillow mode I;16) spanning the full 0..65535 range."""
    ramp = np.linspace(0, 65535, width * height, dtype=np.float64).reshape(height, width)
    return _save(Image.fromarray(ramp.astype(np.uint16)), "PNG")


def gif_animated(width: int = 48, height: int = 32, frames: int = 3) -> bytes:
    """An animated GIF; frame 0 is the reddest, so a decoder that keeps the first frame shows red."""
    images = []
    for index in range(frames):
        level = int(255 * (frames - index) / frames)
        images.append(Image.new("RGB", (width, height), (level, 40, 255 - level)).convert("P"))
    return _save(images[0], "GIF", save_all=True, append_images=images[1:], duration=100, loop=0)


def png_1x1() -> bytes:
    """A 1x1 PNG (a tracking pixel / placeholder); rejected as image_too_small."""
    return _save(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG")


def png_extreme_aspect(width: int = 2000, height: int = 4) -> bytes:
    """A 500:1 strip; smart_resize refuses ratios over 200 -> image_aspect_ratio."""
    return png(width, height)


def truncated(data: bytes, keep: float = 0.6) -> bytes:
    """The first `keep` fraction of an encoded file (an interrupted download)."""
    return data[: max(1, int(len(data) * keep))]


def truncated_png() -> bytes:
    """A PNG cut mid-IDAT; the header is intact, the pixels are not -> image_undecodable."""
    return truncated(png(96, 96), 0.5)


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


def tone(seconds: float, sample_rate: int = 16_000, channels: int = 1, frequency: float = 440.0) -> np.ndarray:
    """float32 (frames, channels): a sine at 0.5 amplitude; channel c is shifted by c * 110 Hz."""
    t = np.arange(int(round(seconds * sample_rate)), dtype=np.float64) / sample_rate
    columns = [0.5 * np.sin(2 * np.pi * (frequency + 110.0 * c) * t) for c in range(channels)]
    return np.stack(columns, axis=-1).astype(np.float32) if columns else np.zeros((0, 0), np.float32)


def _soundfile(samples: np.ndarray, sample_rate: int, fmt: str, subtype: str | None = None) -> bytes:
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, samples, sample_rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def wav(seconds: float = 1.0, sample_rate: int = 16_000, channels: int = 1, silent: bool = False) -> bytes:
    """A 16-bit PCM WAV of a tone (or digital silence)."""
    samples = tone(seconds, sample_rate, channels)
    return _soundfile(np.zeros_like(samples) if silent else samples, sample_rate, "WAV", "PCM_16")


def flac(seconds: float = 1.0, sample_rate: int = 16_000, channels: int = 1, silent: bool = False) -> bytes:
    """A 16-bit FLAC of a tone (or digital silence)."""
    samples = tone(seconds, sample_rate, channels)
    return _soundfile(np.zeros_like(samples) if silent else samples, sample_rate, "FLAC", "PCM_16")


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
    """A well-formed WAV holding no samples -> audio_too_short."""
    return _soundfile(np.zeros((0, 1), np.float32), 16_000, "WAV", "PCM_16")


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


def video_codec() -> str:
    """The encoder the PyAV build offers: FFmpeg's native mpeg4 (always built in), else libx264."""
    import av

    for codec in ("mpeg4", "libx264"):
        if codec in av.codecs_available:
            return codec
    raise RuntimeError("this PyAV build has neither an mpeg4 nor a libx264 encoder")


def _frame_pixels(base: np.ndarray, index: int) -> np.ndarray:
    """`base` slid right by 4 px a frame, with a frame-number-dependent blue level."""
    pixels = np.roll(base, 4 * index, axis=1)
    pixels[..., 2] = np.uint8((index * 17) % 256)
    return pixels


def _encode_video(
    pts: list[int],
    fps: int,
    width: int,
    height: int,
    container: str = "mp4",
    codec: str | None = None,
    keyframe_seconds: float = 1.0,
) -> bytes:
    import av

    if width % 2 or height % 2:
        raise ValueError("yuv420p video needs even width and height")
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container) as out:
        stream = out.add_stream(codec or video_codec(), rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = max(1, int(fps * keyframe_seconds))
        stream.codec_context.time_base = Fraction(1, fps)
        base = _pixels(width, height)
        for index, value in enumerate(pts):
            frame = av.VideoFrame.from_ndarray(_frame_pixels(base, index), format="rgb24")
            frame.pts, frame.time_base = value, Fraction(1, fps)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buffer.getvalue()


def mp4(
    seconds: float = 2.0, fps: int = 8, width: int = 64, height: int = 48, keyframe_seconds: float = 1.0
) -> bytes:
    """An MP4 of a moving gradient, `seconds` long at `fps`, a keyframe every `keyframe_seconds`."""
    count = max(1, int(round(seconds * fps)))
    return _encode_video(list(range(count)), fps, width, height, keyframe_seconds=keyframe_seconds)


def mkv(seconds: float = 2.0, fps: int = 8, width: int = 64, height: int = 48) -> bytes:
    """The same moving gradient in Matroska (which records no frame count, only a duration)."""
    count = max(1, int(round(seconds * fps)))
    return _encode_video(list(range(count)), fps, width, height, container="matroska")


def mp4_one_frame(width: int = 64, height: int = 48) -> bytes:
    """A single-frame video (a still exported as a clip): sampled as 2 identical frames."""
    return _encode_video([0], 8, width, height)


def video_declared_hours(hours: float = 10.0, fps: int = 30, width: int = 32, height: int = 32) -> bytes:
    """A Matroska file that declares `hours` at `fps` (hours * 3600 * fps frames) but holds 2.

    Its second frame sits `hours` after the first, so the container's duration and frame rate
    promise ~1 M frames at 10 h x 30 fps -> video_too_long, for a 5 KB file.
    """
    last = int(hours * 3600 * fps)
    return _encode_video([0, last], fps, width, height, container="matroska")


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


def bad_samples() -> dict[str, tuple[str, bytes, str]]:
    """name -> (modality, bytes, expected reason) under the default MediaConfig."""
    return {
        "image_text": ("image", not_an_image(), "image_undecodable"),
        "image_truncated_png": ("image", truncated_png(), "image_undecodable"),
        "image_truncated_jpeg": ("image", truncated_jpeg(), "image_undecodable"),
        "image_empty": ("image", zero_bytes(), "media_empty"),
        "image_bomb": ("image", png_bomb(), "image_too_large"),
        "image_bomb_81m": ("image", png_bomb(9_000, 9_000), "image_too_large"),
        "image_1x1": ("image", png_1x1(), "image_too_small"),
        "image_strip": ("image", png_extreme_aspect(), "image_aspect_ratio"),
        "audio_text": ("audio", not_an_image(), "audio_undecodable"),
        "audio_image": ("audio", png(), "audio_undecodable"),
        "audio_silent": ("audio", wav(1.0, silent=True), "audio_silent"),
        "audio_zero_seconds": ("audio", wav_zero_seconds(), "audio_too_short"),
        "audio_too_short": ("audio", wav(0.05), "audio_too_short"),
        "video_text": ("video", not_an_image(), "video_undecodable"),
        "video_truncated": ("video", truncated_mp4(), "video_undecodable"),
        "video_no_frames": ("video", video_no_frames(), "video_no_frames"),
        "video_audio_only": ("video", m4a(), "video_no_frames"),
        "video_wav": ("video", wav(), "video_undecodable"),
        "video_declared_hours": ("video", video_declared_hours(), "video_too_long"),
    }
