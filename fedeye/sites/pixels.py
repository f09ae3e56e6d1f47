"""Pixel checks and scaling shared by the site formats (pure functions over arrays).

Every format hands FedEye uint8 pixels. Other types are scaled, never clipped:

* integers (8 to 16 bit, e.g. a 12-bit camera image in a 16-bit PNG) are
  divided by the largest value of the smallest bit depth in
  :data:`BIT_DEPTHS` that holds the image's maximum (0..4095 -> 12 bit);
* floats in 0..1 are multiplied by 255; floats that are whole numbers in
  0..255 are kept; other floats, NaN, infinities, negative numbers and
  values above 16 bits are refused with :class:`ImageDataError`.

:func:`check_pixel_count` bounds memory: formats call it with the size read
from a file's header, before decoding.

>>> integer_to_uint8(np.array([0, 4095], np.uint16)).tolist()
[0, 255]
>>> float_to_uint8(np.array([0.0, 0.5, 1.0])).tolist()
[0, 128, 255]
"""

from __future__ import annotations

import numpy as np

from fedeye.errors import ImageDataError

MAX_IMAGE_PIXELS = 40_000_000  # 40 megapixels (e.g. 8000 x 5000): above any fundus camera or OCT B-scan
BIT_DEPTHS = (8, 10, 12, 14, 16)


def check_pixel_count(width: int, height: int) -> None:
    """Refuse an image whose header gives an empty or oversized frame, before it is decoded."""
    if width < 1 or height < 1:
        raise ImageDataError(f"image is {width}x{height} pixels; expected at least 1x1")
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageDataError(
            f"image is {width}x{height} = {width * height:,} pixels, above FedEye's limit of "
            f"{MAX_IMAGE_PIXELS:,}; downscale it (fundus and OCT models use a few hundred pixels)"
        )


def integer_to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Scale unsigned or signed integer pixels to uint8 by their bit depth (see module docstring)."""
    if pixels.dtype == np.uint8 or pixels.size == 0:
        return pixels.astype(np.uint8)
    low, high = int(pixels.min()), int(pixels.max())
    if low < 0:
        raise ImageDataError(f"pixel values go down to {low}; expected values of 0 or more")
    bits = next((b for b in BIT_DEPTHS if high < 2**b), None)
    if bits is None:
        raise ImageDataError(f"pixel values go up to {high}, more than 16 bits; re-export as 8- or 16-bit")
    if bits == 8:
        return pixels.astype(np.uint8)
    scaled: np.ndarray = np.rint(pixels.astype(np.float64) * (255.0 / (2**bits - 1)))
    return scaled.astype(np.uint8)


def float_to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Scale float pixels in 0..1 to 0..255; keep whole numbers in 0..255; refuse anything else."""
    if pixels.size == 0:
        return pixels.astype(np.uint8)
    if not np.isfinite(pixels).all():
        raise ImageDataError("pixel values include NaN or infinity; expected finite values")
    low, high = float(pixels.min()), float(pixels.max())
    if 0.0 <= low and high <= 1.0:
        return np.rint(pixels.astype(np.float64) * 255.0).astype(np.uint8)
    if 0.0 <= low and high <= 255.0 and bool(np.all(pixels == np.round(pixels))):
        return pixels.astype(np.uint8)
    raise ImageDataError(
        f"float pixel values range over {low:g}..{high:g}; expected 0..1 (or whole numbers 0..255): "
        "rescale them, or save the images as uint8"
    )


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Return ``pixels`` as uint8 with values scaled, never clipped; raise :class:`ImageDataError`."""
    kind = pixels.dtype.kind
    if kind == "b":
        return pixels.astype(np.uint8) * np.uint8(255)
    if kind in "ui":
        return integer_to_uint8(pixels)
    if kind == "f":
        return float_to_uint8(pixels)
    raise ImageDataError(f"pixels are of type {pixels.dtype}; expected integers or floats")
