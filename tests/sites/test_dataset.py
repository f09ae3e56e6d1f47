"""SiteDataset shapes, normalisation, augmentation and gray-to-RGB."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedeye.errors import ConfigError, SiteDataError
from fedeye.sites import open_site
from fedeye.sites.dataset import IMAGENET_MEAN, IMAGENET_STD, SiteDataset

from .conftest import SiteWriter, valid_rows


def test_items_are_normalised_tensors(make_site: SiteWriter) -> None:
    site = open_site(make_site())  # every pixel is 128

    data = SiteDataset(site, "train", image_size=24)
    image, label = data[0]

    expected = (128 / 255 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]
    assert image.shape == (3, 24, 24) and image.dtype == torch.float32
    assert torch.allclose(image[0], torch.full((24, 24), expected), atol=1e-4)
    assert isinstance(label, int) and data.num_classes == 2
    assert len(data.labels) == len(data) == len(data.attrs) == len(data.patient_ids)


def test_oct_gray_becomes_three_channels(synth_oct: list[Path]) -> None:
    data = SiteDataset(open_site(synth_oct[0]), "val", image_size=32)

    image, _ = data[0]

    assert image.shape == (3, 32, 32)
    assert torch.allclose(
        image[0] * IMAGENET_STD[0] + IMAGENET_MEAN[0], image[1] * IMAGENET_STD[1] + IMAGENET_MEAN[1], atol=1e-5
    )


def test_augment_keeps_shape_and_varies(synth_fundus: list[Path]) -> None:
    data = SiteDataset(open_site(synth_fundus[0]), "test", image_size=32, augment=True)
    torch.manual_seed(0)

    views = torch.stack([data[0][0] for _ in range(8)])

    assert views.shape == (8, 3, 32, 32)
    assert views.std(dim=0).mean() > 0


def test_splits_hold_disjoint_patients(synth_fundus: list[Path]) -> None:
    site = open_site(synth_fundus[1])

    patients = [set(SiteDataset(site, s, image_size=16).patient_ids) for s in ("train", "val", "test")]

    assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])


def test_empty_split_raises(make_site: SiteWriter) -> None:
    rows = [r for r in valid_rows(split=True) if r["split"] != "val"]
    site = open_site(make_site(rows))

    with pytest.raises(SiteDataError, match="'val' has no images"):
        SiteDataset(site, "val", image_size=16)


def test_bad_split_name_raises(make_site: SiteWriter) -> None:
    with pytest.raises(ConfigError, match="split"):
        SiteDataset(open_site(make_site()), "training", image_size=16)
