"""Registry and open_site behaviour."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedeye.errors import SiteDataError
from fedeye.sites import SiteFormat, list_formats, open_site, register_format
from fedeye.sites.base import Sample, SiteInfo, SiteScan, unregister_format
from fedeye.sites.manifest import ManifestSite

from .conftest import SiteWriter


def _format_class(name: str) -> type[SiteFormat]:
    class Dummy(SiteFormat):
        format_name = name

        @classmethod
        def can_open(cls, root: Path) -> bool:
            return (root / "dummy.txt").is_file()

        @property
        def info(self) -> SiteInfo:
            return SiteInfo(name="dummy")

        def scan(self) -> SiteScan:
            return SiteScan([], [])

        def read_image(self, sample: Sample) -> np.ndarray:
            return np.zeros((4, 4, 3), np.uint8)

    return Dummy


def test_manifest_is_registered() -> None:
    assert "manifest" in list_formats()


def test_registry_refuses_duplicate_names() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_format(_format_class("manifest"))


def test_registry_accepts_and_uses_a_new_format(tmp_path: Path) -> None:
    (tmp_path / "dummy.txt").write_text("x")
    register_format(_format_class("dummy-test"))
    try:
        site = open_site(tmp_path)
    finally:
        unregister_format("dummy-test")

    assert site.format_name == "dummy-test" and "dummy-test" not in list_formats()


def test_open_site_picks_manifest(make_site: SiteWriter) -> None:
    assert isinstance(open_site(str(make_site())), ManifestSite)


def test_open_site_without_manifest_explains(tmp_path: Path) -> None:
    with pytest.raises(SiteDataError) as caught:
        open_site(tmp_path)

    [problem] = caught.value.problems
    assert "manifest.csv" in problem.fix and "no site format" in problem.message


def test_open_site_on_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(SiteDataError, match="does not exist"):
        open_site(tmp_path / "nope")
