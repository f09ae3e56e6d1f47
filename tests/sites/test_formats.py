"""Contract checks run on every registered site format (like timm's list_models tests)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from fedeye.sites import list_formats, open_site
from fedeye.sites.base import SPLITS, get_format
from fedeye.sites.synth import synthesize_sites
from tests.sites.conftest import write_dicom_site, write_fairvision_site, write_medmnist_site

# How to build a valid site of each format; a new format adds one entry here.
BUILDERS: dict[str, Callable[[Path], Path]] = {
    "manifest": lambda out: synthesize_sites(out, sites=1, images_per_site=12, size=32)[0],
    "dicom": lambda out: write_dicom_site(out / "dicom"),
    "npz-fairvision": lambda out: write_fairvision_site(out / "fairvision"),
    "npz-medmnist": lambda out: write_medmnist_site(out / "medmnist"),
}


@pytest.mark.parametrize("format_name", list_formats())
def test_format_contract(format_name: str, tmp_path: Path) -> None:
    assert format_name in BUILDERS, f"add a builder for site format {format_name!r} to this test"
    root = BUILDERS[format_name](tmp_path)
    cls = get_format(format_name)

    site = open_site(root)
    samples = site.samples()
    pixels = site.read_image(samples[0])

    assert cls.can_open(root) and isinstance(site, cls)
    assert site.problems() == []
    assert samples and {s.split for s in samples} == set(SPLITS)
    assert all(0 <= s.label < len(site.info.label_names) for s in samples)
    assert pixels.dtype.name == "uint8" and pixels.ndim in (2, 3)
    assert site.image_size(samples[0]) == (pixels.shape[1], pixels.shape[0])
    assert not cls.can_open(tmp_path / "empty-folder")


@pytest.mark.parametrize("format_name", ["dicom", "npz-fairvision"])
def test_real_formats_run_through_dataset_and_client_train(format_name: str, tmp_path: Path) -> None:
    from flwr.app import MessageType

    from fedeye.client.app import app
    from fedeye.sites.dataset import SiteDataset
    from tests.client.test_app import _config, _context, _request

    root = BUILDERS[format_name](tmp_path)
    train = SiteDataset(open_site(root), "train", image_size=32, augment=True)
    image, label = train[0]
    cfg = _config(tmp_path)
    reply = app(_request(cfg, MessageType.TRAIN), _context({"site-dir": str(root)}))

    assert tuple(image.shape) == (3, 32, 32) and label in (0, 1)
    assert reply.content["metrics"]["num-examples"] == len(train)
    assert dict(reply.content["site"])["status"] == "ok"
