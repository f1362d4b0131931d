"""Media: fetch a value's bytes (fetch.py), decode it (image.py, audio.py, video.py) into arrays
bounded by Qwen's resize rule (resize.py) and `MediaConfig` (config.py); every failure is a
`MediaError` with a reason code (errors.py). Pure functions: no Ray, no pipeline state.
"""
from __future__ import annotations


def preload() -> None:
    """Import the decoders now rather than on a worker's first row."""
    import av  # noqa: F401
    import soundfile  # noqa: F401
    from PIL import Image

    Image.init()

