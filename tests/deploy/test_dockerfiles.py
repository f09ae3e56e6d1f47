"""The Dockerfiles' invariants, checked without Docker (fast)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DOCKERFILES = ("Dockerfile.site", "Dockerfile.coordinator")
SHARED = re.compile(
    r"^# ---- shared install stages.*?^# ---- end of the shared install stages ----$", re.DOTALL | re.MULTILINE
)


def test_site_and_coordinator_share_the_install_stages() -> None:
    # Identical text -> identical build cache keys -> the two images share their big layers.
    stages = [SHARED.search((DEPLOY / name).read_text()) for name in DOCKERFILES]
    assert all(stages), "a Dockerfile lost its '# ---- shared install stages' markers"
    assert stages[0][0] == stages[1][0], "edit the shared install stages in both Dockerfiles alike"  # type: ignore[index]


@pytest.mark.parametrize("name", DOCKERFILES)
def test_torch_is_never_unpinned(name: str) -> None:
    text = (DEPLOY / name).read_text().replace("\\\n", " ")
    installs = [line for line in text.splitlines() if "pip install" in line and "torch" in line]
    assert installs, f"{name} installs no torch"
    for line in installs:
        specs = re.findall(r"\btorch(?:vision)?\b\S*", line)
        assert set(specs) == {"torch==2.14.1", "torchvision==0.29.1"}, f"unpinned torch in {name}: {line.strip()}"
