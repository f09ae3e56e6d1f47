"""Shared factories for site tests: tiny hand-written sites and synthetic ones."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fedeye.sites.synth import synthesize_sites

SiteWriter = Callable[..., Path]


def _write_png(path: Path, *, size: int = 16, value: int = 128) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(path)


def write_site(
    root: Path,
    rows: Sequence[dict[str, str | int]],
    *,
    header: Sequence[str] | None = None,
    toml: str | None = None,
    images: bool = True,
) -> Path:
    """Write ``manifest.csv`` (and small PNGs for every row) into ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    columns = list(header) if header is not None else list(rows[0]) if rows else ["image", "label", "patient_id"]
    lines = [",".join(columns)] + [",".join(str(row.get(c, "")) for c in columns) for row in rows]
    (root / "manifest.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    if images:
        for row in rows:
            if row.get("image"):
                _write_png(root / str(row["image"]))
    if toml is not None:
        (root / "site.toml").write_text(toml, encoding="utf-8")
    return root


def valid_rows(patients: int = 6, *, split: bool = False) -> list[dict[str, str | int]]:
    """Two images per patient; alternate labels; optional explicit split column."""
    splits = ["train", "train", "train", "train", "val", "test"]
    rows: list[dict[str, str | int]] = []
    for p in range(patients):
        for eye in ("OD", "OS"):
            row: dict[str, str | int] = {
                "image": f"images/p{p}_{eye}.png", "label": p % 2, "patient_id": f"p{p}",
                "eye": eye, "age": 50 + p, "sex": "MF"[p % 2],
            }
            if split:
                row["split"] = splits[p % len(splits)]
            rows.append(row)
    return rows


@pytest.fixture()
def make_site(tmp_path: Path) -> SiteWriter:
    """Factory writing a manifest site into a fresh folder under ``tmp_path``."""
    counter = iter(range(1_000_000))

    def factory(rows: Sequence[dict[str, str | int]] | None = None, **kwargs: object) -> Path:
        root = tmp_path / f"site-{next(counter)}"
        return write_site(root, valid_rows() if rows is None else rows, **kwargs)  # type: ignore[arg-type]

    return factory


@pytest.fixture(scope="session")
def synth_fundus(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Four synthetic fundus sites, 150 images each at 64 px (shared by the session)."""
    return synthesize_sites(tmp_path_factory.mktemp("fundus"), sites=4, images_per_site=150, size=64, seed=1)


@pytest.fixture(scope="session")
def synth_oct(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two small synthetic OCT sites."""
    return synthesize_sites(tmp_path_factory.mktemp("oct"), sites=2, images_per_site=30, size=48, modality="oct", seed=2)
