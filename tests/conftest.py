"""Factories shared across the test tree."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fedeye.sites.synth import synthesize_sites


@pytest.fixture(scope="session", autouse=True)
def fedeye_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Site-side files (audit logs) go to a temporary FEDEYE_HOME, never the user's."""
    home = tmp_path_factory.mktemp("fedeye-home")
    os.environ["FEDEYE_HOME"] = str(home)
    return home


@pytest.fixture(autouse=True)
def test_fedeye_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own FEDEYE_HOME (simulated sites' state folders, data caches), never ~/.fedeye."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("FEDEYE_HOME", str(home))
    return home


@pytest.fixture(scope="session")
def tiny_sites(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three small synthetic fundus sites (40 images each, 32 px), made once."""
    root = tmp_path_factory.mktemp("tiny") / "sites"
    synthesize_sites(root, sites=3, images_per_site=40, modality="fundus", seed=3, size=32)
    return root


def tiny_run_toml(path: Path, *, sites: Path, out: Path, rounds: int = 2) -> Path:
    """A run file for a quick federation over ``sites``."""
    path.write_text(
        f'name = "tiny"\n[data]\nroot = "{sites}"\n'
        '[model]\narch = "vit-tiny-cpu"\nimg_size = 32\n'
        f"[training]\nrounds = {rounds}\nlocal_epochs = 1\nbatch_size = 16\n"
        f'[output]\ndir = "{out}"\ndb = "{out / "fedeye.db"}"\n'
    )
    return path
