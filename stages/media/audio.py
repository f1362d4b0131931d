"""Decode an audio clip into bounded mono float32 samples (libsndfile, FFmpeg as the fallback).

Read with libsndfile first (at most audio_max_seconds of frames, never the length a header claims),
FFmpeg (PyAV, only the demuxers in AUDIO_DEMUXERS) as the fallback; channels are averaged, soxr
resamples to media.audio_sample_rate, NaN/inf become 0/+-1, values are clipped to [-1, 1]. Silence
is judged like any clip (`media.drop_silent_audio` drops it); a clip under `media.audio_min_seconds`
is dropped (MediaDropped: dropped/, not errors/). A
decoder error anywhere in the part read is audio_undecodable (a FLAC cut mid-frame), but where the
library itself stops quietly at the end of the data (a WAV shorter than its header says, most cut
MP3s) the samples present are kept.
"""
from __future__ import annotations

import io
import math

import numpy as np

from stages.media.config import MediaConfig
from stages.media.errors import MediaDropped, MediaError

SILENCE_PEAK = 1e-4
MAX_SOURCE_RATE = 768_000
MAX_SOURCE_CHANNELS = 64
AUDIO_DEMUXERS = "wav,w64,mp3,aac,flac,ogg,mov,matroska,asf,aiff,caf,amr"


def decode_audio(data: bytes, cfg: MediaConfig) -> np.ndarray:
    """float32 mono in [-1, 1] at cfg.audio_sample_rate, at most cfg.audio_max_seconds long."""
    import soxr

    samples, rate = _read_audio(data, cfg.audio_max_seconds)
    seconds = samples.shape[0] / rate
    if seconds < cfg.audio_min_seconds or samples.shape[0] == 0:
        raise MediaDropped("audio_too_short", f"{seconds:.3f} s, under audio_min_seconds={cfg.audio_min_seconds}")
    mono = samples.mean(axis=1, dtype=np.float64) if samples.shape[1] > 1 else samples[:, 0].astype(np.float64)
    mono = np.nan_to_num(mono, nan=0.0, posinf=1.0, neginf=-1.0)
    if rate != cfg.audio_sample_rate:
        mono = soxr.resample(mono, rate, cfg.audio_sample_rate)
    mono = np.clip(mono[: int(round(cfg.audio_max_seconds * cfg.audio_sample_rate))], -1.0, 1.0)
    peak = float(np.abs(mono).max(initial=0.0))
    if cfg.drop_silent_audio and peak < SILENCE_PEAK:
        raise MediaDropped("audio_silent", f"peak amplitude {peak:.2e} is under {SILENCE_PEAK:g}")
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

