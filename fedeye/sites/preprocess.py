"""Fundus preprocessing: find the field of view, crop to it, square, resize, CLAHE.

Pure functions over uint8 ``HxWx3`` arrays, used by
:class:`fedeye.sites.dataset.SiteDataset` so that training and evaluation
preprocess the same way (``preprocess`` in ``site.toml``).

The field of view (FOV) is the bright disc of a fundus photograph on its black
surround. :func:`find_fov` smooths the maximum over the colour channels on a
copy at most :data:`DETECT_SIDE` pixels wide, thresholds it at a fraction of
its 99th percentile, keeps the largest connected component and returns the
circle bounding it (centre at the box centre, radius half the longer side, so
a FOV clipped at the top and bottom still gets its full circle).

>>> from skimage import data  # doctest: +SKIP
>>> preprocess_fundus(data.retina(), mode="fov-crop+clahe", size=224).shape  # doctest: +SKIP
(224, 224, 3)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage.exposure import equalize_adapthist

PreprocessMode = Literal["none", "fov-crop", "fov-crop+clahe"]
DETECT_SIDE = 256  # FOV detection runs on a copy at most this wide
THRESHOLD = 0.15  # fraction of the 99th-percentile intensity that counts as inside the FOV


@dataclass(frozen=True)
class Circle:
    """A circle in pixel coordinates of the full-resolution image."""

    cy: float
    cx: float
    radius: float


def to_rgb(pixels: np.ndarray) -> np.ndarray:
    """Return uint8 ``HxWx3``; gray ``HxW`` (OCT) is repeated to three channels."""
    if pixels.ndim == 2:
        return np.repeat(pixels[..., None], 3, axis=2)
    if pixels.ndim == 3 and pixels.shape[2] == 3:
        return pixels
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        return np.repeat(pixels, 3, axis=2)
    raise ValueError(f"expected HxW or HxWx3 pixels, got shape {pixels.shape}")


def find_fov(rgb: np.ndarray, *, threshold: float = THRESHOLD) -> Circle:
    """Circle bounding the field of view; the whole image when no FOV stands out."""
    height, width = rgb.shape[:2]
    step = max(1, int(np.ceil(max(height, width) / DETECT_SIDE)))
    small = rgb[::step, ::step].max(axis=2).astype(np.float32)
    smooth = ndimage.gaussian_filter(small, sigma=2.0)
    mask = smooth > threshold * max(float(np.percentile(smooth, 99)), 1.0)
    labels, count = ndimage.label(mask)
    if count == 0:
        return Circle(height / 2, width / 2, max(height, width) / 2)
    largest = 1 + int(np.argmax(ndimage.sum_labels(mask, labels, range(1, count + 1))))
    rows, cols = ndimage.find_objects((labels == largest).astype(np.int32))[0]
    top, bottom = rows.start * step, min(height, rows.stop * step)
    left, right = cols.start * step, min(width, cols.stop * step)
    return Circle((top + bottom) / 2, (left + right) / 2, max(bottom - top, right - left) / 2)


def crop_to_circle(rgb: np.ndarray, circle: Circle) -> np.ndarray:
    """Square crop centred on ``circle`` with side ``2 * radius``; black outside the image."""
    side = max(1, int(round(2 * circle.radius)))
    top, left = int(round(circle.cy - side / 2)), int(round(circle.cx - side / 2))
    out = np.zeros((side, side, 3), np.uint8)
    src_top, src_left = max(top, 0), max(left, 0)
    src_bottom, src_right = min(top + side, rgb.shape[0]), min(left + side, rgb.shape[1])
    out[src_top - top : src_bottom - top, src_left - left : src_right - left] = rgb[
        src_top:src_bottom, src_left:src_right
    ]
    return out


def pad_square_resize(rgb: np.ndarray, size: int) -> np.ndarray:
    """Pad to a square with black, then resize to ``size x size`` (bilinear)."""
    height, width = rgb.shape[:2]
    side = max(height, width)
    canvas = np.zeros((side, side, 3), np.uint8)
    top, left = (side - height) // 2, (side - width) // 2
    canvas[top : top + height, left : left + width] = rgb
    if side == size:
        return canvas
    return np.asarray(Image.fromarray(canvas).resize((size, size), Image.Resampling.BILINEAR))


def clahe(rgb: np.ndarray, *, clip_limit: float = 0.01) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation (skimage, on the HSV value)."""
    return np.asarray(np.rint(equalize_adapthist(rgb, clip_limit=clip_limit) * 255).astype(np.uint8))


def mask_outside(rgb: np.ndarray, *, fraction: float = 1.0) -> np.ndarray:
    """Set pixels outside the centred inscribed circle (scaled by ``fraction``) to black."""
    side = rgb.shape[0]
    yy, xx = np.ogrid[:side, :side]
    centre, radius = (side - 1) / 2, fraction * side / 2
    out = rgb.copy()
    out[(yy - centre) ** 2 + (xx - centre) ** 2 > radius**2] = 0
    return out


def preprocess_fundus(rgb: np.ndarray, *, mode: PreprocessMode, size: int) -> np.ndarray:
    """Apply ``mode`` and return uint8 ``size x size x 3``.

    ``"none"`` pads and resizes; ``"fov-crop"`` crops to the detected FOV
    first; ``"fov-crop+clahe"`` also equalises contrast (after resizing, so
    the cost does not grow with the source resolution) and re-blackens the
    outside of the FOV that CLAHE lifted.
    """
    if mode == "none":
        return pad_square_resize(rgb, size)
    square = pad_square_resize(crop_to_circle(rgb, find_fov(rgb)), size)
    if mode == "fov-crop+clahe":
        return mask_outside(clahe(square))
    return square
