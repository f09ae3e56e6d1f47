"""Training augmentation levels and the run file's backwards-compatible ``training.augment``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedeye.config import TrainingConfig
from fedeye.sites.augment import build_augmentation
from fedeye.sites.base import open_site
from fedeye.sites.dataset import SiteDataset


@pytest.mark.parametrize("level", ["light", "strong"])
def test_levels_keep_the_cache_format(level: str) -> None:
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    augment = build_augmentation(level, image_size=32)  # type: ignore[arg-type]
    assert augment is not None
    out = augment(image)
    assert out.shape == image.shape and out.dtype == torch.uint8


def test_none_is_no_transform() -> None:
    assert build_augmentation("none", image_size=32) is None


def test_strong_changes_colours_not_just_positions() -> None:
    torch.manual_seed(0)
    image = torch.full((3, 32, 32), 128, dtype=torch.uint8)
    augment = build_augmentation("strong", image_size=32)
    assert augment is not None
    means = {tuple(augment(image)[:, 8:24, 8:24].float().mean(dim=(1, 2)).round().tolist()) for _ in range(10)}
    assert len(means) > 3  # a flat grey image comes out in several colours


@pytest.mark.parametrize(("raw", "level"), [(True, "light"), (False, "none"), ("strong", "strong")])
def test_run_files_may_still_say_true_or_false(raw: object, level: str) -> None:
    assert TrainingConfig.model_validate({"augment": raw}).augment == level


def test_an_unknown_level_is_refused() -> None:
    with pytest.raises(ValueError, match="augment"):
        TrainingConfig.model_validate({"augment": "extreme"})


def test_a_site_dataset_augments_only_when_asked(tiny_sites: Path) -> None:
    site = open_site(tiny_sites / "site-1")
    plain = SiteDataset(site, "train", image_size=32, augment="none")
    strong = SiteDataset(site, "train", image_size=32, augment="strong")
    assert torch.equal(plain[0][0], plain[0][0])
    torch.manual_seed(1)
    assert not torch.equal(strong[0][0], plain[0][0])
