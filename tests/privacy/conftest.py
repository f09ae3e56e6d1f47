"""Factories for the privacy tests: one tiny synthetic site and DP settings."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from fedeye.privacy.policy import Accountant, DPSettings
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


@pytest.fixture
def make_settings() -> Callable[..., DPSettings]:
    """DPSettings with test defaults; override any field by keyword."""

    def make(
        *,
        epsilon_budget: float = 8.0,
        delta: float = 1e-3,
        max_grad_norm: float = 1.0,
        noise_multiplier: float | None = None,
        min_noise_multiplier: float | None = None,
        accountant: Accountant = "rdp",
    ) -> DPSettings:
        return DPSettings(
            epsilon_budget=epsilon_budget, delta=delta, max_grad_norm=max_grad_norm, noise_multiplier=noise_multiplier,
            min_noise_multiplier=min_noise_multiplier, accountant=accountant,
        )

    return make
