"""Factories for the site-side tests: one tiny synthetic site for DP-SGD."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedeye.sites.base import open_site
from fedeye.sites.dataset import SiteDataset
from fedeye.sites.synth import synthesize_sites


@pytest.fixture(scope="session")
def dp_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One synthetic fundus site: 40 images at 32 px (about 13 train patients)."""
    root = tmp_path_factory.mktemp("dp") / "sites"
    return synthesize_sites(root, sites=1, images_per_site=40, size=32, seed=5)[0]


@pytest.fixture(scope="session")
def train_split(dp_site: Path) -> SiteDataset:
    """The site's train split without augmentation (images are exactly reproducible)."""
    return SiteDataset(open_site(dp_site), "train", image_size=32)
