"""Manifest sites under generated input: a report or a correct load, never another exception."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from fedeye.errors import FedEyeError, ImageDataError
from fedeye.sites.check import check_site
from fedeye.sites.manifest import ManifestSite, decode_image_file

CELLS = st.one_of(
    st.sampled_from(
        ["", "0", "1", "2", "-1", "1.7", "1e3", "nan", "images/a.png", "../a.png", "/etc/passwd", "OD", "x", "train"]
    ),
    st.text(max_size=8),
)
HEADERS = st.lists(
    st.sampled_from(["image", "label", "patient_id", "split", "eye", "age", "sex", "LABEL", "", "x"]), max_size=7
)


@contextmanager
def _site(manifest: bytes) -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "site"
        (root / "images").mkdir(parents=True)
        Image.new("RGB", (8, 8), (10, 20, 30)).save(root / "images" / "a.png")
        (root / "images" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
        (root / "manifest.csv").write_bytes(manifest)
        yield root


@given(HEADERS, st.lists(st.lists(CELLS, max_size=8), max_size=6))
def test_generated_manifests_give_problems_or_samples(header: list[str], rows: list[list[str]]) -> None:
    text = "\n".join(",".join(cells) for cells in [header, *rows])
    with _site(text.encode()) as root:
        try:
            report = check_site(root)
        except FedEyeError:
            return
        for sample in ManifestSite(root).scan().samples:
            assert sample.image == "images/a.png" and sample.label in (0, 1)
        assert report.summary is not None


@given(st.binary(max_size=300))
def test_arbitrary_manifest_bytes_never_crash(data: bytes) -> None:
    with _site(data) as root:
        try:
            check_site(root)
        except FedEyeError:
            pass


@given(
    st.binary(max_size=200), st.sampled_from([b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"II*\x00", b"BM"])
)
def test_arbitrary_image_bytes_decode_or_raise_image_error(data: bytes, magic: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.img"
        path.write_bytes(magic + data)
        try:
            pixels = decode_image_file(path)
        except ImageDataError:
            return
        assert pixels.dtype == np.uint8 and pixels.ndim in (2, 3)


MODES = {"L": np.uint8, "I;16": np.uint16, "RGB": np.uint8, "F": np.float32}


@given(st.sampled_from(sorted(MODES)), st.data())
def test_pixel_values_arrive_unchanged_or_scaled(mode: str, data: st.DataObject) -> None:
    side: tuple[int, ...] = data.draw(st.tuples(st.integers(1, 12), st.integers(1, 12)))
    shape = (*side, 3) if mode == "RGB" else side
    elements = st.floats(0, 1, width=32) if mode == "F" else None
    stored = data.draw(hnp.arrays(MODES[mode], shape, elements=elements))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("x.tif" if mode == "F" else "x.png")
        Image.fromarray(stored).save(path)

        pixels = decode_image_file(path)

    assert np.array_equal(pixels, _expected(stored, mode))


def _expected(stored: np.ndarray, mode: str) -> np.ndarray:
    scale = 255.0
    if mode == "I;16":
        high = int(stored.max())
        scale = 255.0 / (2 ** next(b for b in (8, 10, 12, 14, 16) if high < 2**b) - 1)
    if mode in ("F", "I;16"):
        scaled: np.ndarray = np.rint(stored.astype(np.float64) * scale)
        return scaled.astype(np.uint8)
    return stored
