"""Decode an image into bounded RGB pixels (Pillow).

- Only IMAGE_FORMATS are opened (no EPS, which would run Ghostscript).
- The header's declared size is checked before any pixel is decoded (decompression-bomb guard).
- Animated images keep their first frame; EXIF orientation is applied; 16-bit/float, CMYK and
  palette images become 8-bit RGB; transparency is composited onto white.
- Pillow's DecompressionBombWarning is turned into an error with `warnings.catch_warnings`, which
  is process-global: fine in Ray's one-task-per-process workers.
"""
from __future__ import annotations

import functools
import io
import warnings
from typing import Any

import numpy as np

from stages.media.config import MediaConfig
from stages.media.errors import MediaDropped, MediaError
from stages.media.resize import resized_shape

IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP", "TIFF", "AVIF", "PPM", "TGA", "ICO", "QOI")  # JPEG covers MPO
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
            new_height, new_width = resized_shape(
                height, width, cfg.image_min_pixels, cfg.image_max_pixels, "image", cfg.min_image_side
            )
            rgb = _to_rgb(_load_oriented(image, orientation, new_width, new_height))
            if rgb.size != (new_width, new_height):
                rgb = rgb.resize((new_width, new_height), Image.Resampling.BICUBIC)
            return np.array(rgb, dtype=np.uint8)
        except (MediaError, MediaDropped):
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

