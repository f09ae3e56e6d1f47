"""Pixel scaling: every numeric array is scaled exactly or refused with a FedEye error."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedeye.errors import ImageDataError
from fedeye.sites.pixels import (
    BIT_DEPTHS,
    MAX_IMAGE_PIXELS,
    check_pixel_count,
    float_to_uint8,
    integer_to_uint8,
    to_uint8,
)

SHAPES = hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=8)


@given(hnp.arrays(st.sampled_from([np.uint8, np.uint16, np.int32, np.int64, np.float32, np.float64, np.bool_]), SHAPES))
def test_any_numeric_array_is_uint8_or_refused(pixels: np.ndarray) -> None:
    try:
        out = to_uint8(pixels)
    except ImageDataError:
        return
    assert out.dtype == np.uint8 and out.shape == pixels.shape


@given(st.sampled_from(BIT_DEPTHS[1:]), st.data())
def test_integer_images_scale_by_their_bit_depth(bits: int, data: st.DataObject) -> None:
    pixels = data.draw(hnp.arrays(np.uint16, SHAPES, elements=st.integers(0, 2**bits - 1)))
    pixels.flat[0] = 2**bits - 1  # the image reaches its bit depth's maximum

    out = integer_to_uint8(pixels)

    assert out.flat[0] == 255
    assert np.array_equal(out, np.rint(pixels.astype(np.float64) * 255 / (2**bits - 1)).astype(np.uint8))


@given(hnp.arrays(np.uint8, SHAPES))
def test_uint8_arrives_unchanged(pixels: np.ndarray) -> None:
    assert np.array_equal(to_uint8(pixels), pixels)


@given(hnp.arrays(np.float64, SHAPES, elements=st.floats(0, 1)))
def test_float_0_1_scales_to_0_255(pixels: np.ndarray) -> None:
    assert np.array_equal(float_to_uint8(pixels), np.rint(pixels * 255).astype(np.uint8))


@given(hnp.arrays(np.float64, SHAPES, elements=st.floats(allow_nan=True, allow_infinity=True)))
def test_floats_outside_the_known_ranges_are_refused(pixels: np.ndarray) -> None:
    finite = np.isfinite(pixels).all()
    in_unit = finite and pixels.min() >= 0 and pixels.max() <= 1
    whole_bytes = finite and pixels.min() >= 0 and pixels.max() <= 255 and np.all(pixels == np.round(pixels))
    if in_unit or whole_bytes:
        assert float_to_uint8(pixels).dtype == np.uint8
    else:
        with pytest.raises(ImageDataError):
            float_to_uint8(pixels)


@given(st.integers(-5, 100_000), st.integers(-5, 100_000))
def test_pixel_count_limit(width: int, height: int) -> None:
    if 1 <= width and 1 <= height and width * height <= MAX_IMAGE_PIXELS:
        check_pixel_count(width, height)
    else:
        with pytest.raises(ImageDataError):
            check_pixel_count(width, height)
