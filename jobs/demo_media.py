"""Small synthetic media files the demo dataset and the benchmarks embed, as bytes.

Deterministic (fixed seeds, no clocks), cheap (milliseconds, kilobytes) and made with the decoding
stack the project already depends on (Pillow, soundfile, PyAV, numpy): images are gradients plus
seeded noise, audio is a tone, video is a moving gradient. The generators of broken and unusual
media the tests use live in tests/synthetic_media.py.
"""
from __future__ import annotations

import io
from fractions import Fraction

import numpy as np
from PIL import Image

SEED = 1234


def _pixels(width: int, height: int, seed: int = SEED) -> np.ndarray:
    """uint8 (height, width, 3): diagonal colour gradients plus a little seeded noise."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    red = 255 * x / max(width - 1, 1)
    green = 255 * y / max(height - 1, 1)
    blue = 127.5 + 127.5 * np.sin((x + y) / 7.0)
    noise = np.random.default_rng(seed).integers(-12, 13, size=(height, width, 3))
    return np.clip(np.stack([red, green, blue], axis=-1) + noise, 0, 255).astype(np.uint8)


def encode_image(image: Image.Image, fmt: str, **params) -> bytes:
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
    return encode_image(image(width, height, mode, seed), "PNG")


def truncated(data: bytes, keep: float = 0.6) -> bytes:
    """The first `keep` fraction of an encoded file (an interrupted download)."""
    return data[: max(1, int(len(data) * keep))]


def truncated_png() -> bytes:
    """A PNG cut mid-IDAT; the header is intact, the pixels are not -> image_undecodable."""
    return truncated(png(96, 96), 0.5)


# --------------------------------------------------------------------------- audio


def tone(seconds: float, sample_rate: int = 16_000, channels: int = 1, frequency: float = 440.0) -> np.ndarray:
    """float32 (frames, channels): a sine at 0.5 amplitude; channel c is shifted by c * 110 Hz."""
    t = np.arange(int(round(seconds * sample_rate)), dtype=np.float64) / sample_rate
    columns = [0.5 * np.sin(2 * np.pi * (frequency + 110.0 * c) * t) for c in range(channels)]
    return np.stack(columns, axis=-1).astype(np.float32) if columns else np.zeros((0, 0), np.float32)


def encode_sound(samples: np.ndarray, sample_rate: int, fmt: str, subtype: str | None = None) -> bytes:
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, samples, sample_rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def wav(seconds: float = 1.0, sample_rate: int = 16_000, channels: int = 1, silent: bool = False) -> bytes:
    """A 16-bit PCM WAV of a tone (or digital silence)."""
    samples = tone(seconds, sample_rate, channels)
    return encode_sound(np.zeros_like(samples) if silent else samples, sample_rate, "WAV", "PCM_16")


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


def encode_video(
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
    return encode_video(list(range(count)), fps, width, height, keyframe_seconds=keyframe_seconds)
