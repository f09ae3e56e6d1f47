"""Fundus preprocessing on the real fundus photograph shipped with scikit-image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from skimage import data

from fedeye.errors import ConfigError
from fedeye.sites.base import open_site
from fedeye.sites.dataset import SiteDataset
from fedeye.sites.preprocess import find_fov, preprocess_fundus
from tests.sites.conftest import write_fairvision_site


@pytest.fixture(scope="module")
def retina() -> np.ndarray:
    return data.retina()  # 1411 x 1411 RGB, FOV clipped at top and bottom


def _border_mean(image: np.ndarray) -> float:
    width = max(1, image.shape[0] // 20)
    ring = np.concatenate([image[:, :width].ravel(), image[:, -width:].ravel()])
    return float(ring.mean())


def test_fov_circle_matches_the_photograph(retina: np.ndarray) -> None:
    circle = find_fov(retina)
    # true FOV (pixels with max channel > 20): rows 5..1400, cols 8..1401 -> centre (702.5, 704.5), r ~697
    assert abs(circle.cy - 702.5) < 15 and abs(circle.cx - 704.5) < 15 and abs(circle.radius - 697) < 15


def test_crop_removes_a_wide_black_border(retina: np.ndarray) -> None:
    padded = np.zeros((1800, 2600, 3), np.uint8)
    padded[200:1611, 700:2111] = retina
    circle = find_fov(padded)
    before = preprocess_fundus(padded, mode="none", size=128)
    after = preprocess_fundus(padded, mode="fov-crop", size=128)
    assert abs(circle.cy - 902.5) < 15 and abs(circle.cx - 1404.5) < 15
    assert after.shape == (128, 128, 3)
    assert _border_mean(before) < 1.0 and _border_mean(after) > 10.0  # left/right strips were pure black


def test_clahe_raises_contrast_and_keeps_outside_black(retina: np.ndarray) -> None:
    plain = preprocess_fundus(retina, mode="fov-crop", size=128)
    equalised = preprocess_fundus(retina, mode="fov-crop+clahe", size=128)
    assert equalised[0, 0].max() == 0
    assert equalised[32:96, 32:96].std() > plain[32:96, 32:96].std()


def test_black_image_does_not_crash() -> None:
    assert preprocess_fundus(np.zeros((30, 40, 3), np.uint8), mode="fov-crop", size=16).shape == (16, 16, 3)


def test_site_toml_setting_reaches_the_dataset(tmp_path: Path) -> None:
    root = write_fairvision_site(tmp_path / "s", toml='preprocess = "fov-crop"\n')
    assert SiteDataset(open_site(root), "train", image_size=16).preprocess == "fov-crop"
    oct_root = write_fairvision_site(tmp_path / "o", toml='modality = "oct"\npreprocess = "fov-crop"\n')
    with pytest.raises(ConfigError, match="fundus"):
        SiteDataset(open_site(oct_root), "train", image_size=16)
