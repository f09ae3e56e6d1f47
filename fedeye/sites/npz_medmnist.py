"""MedMNIST site format: one ``.npz`` with ``{train,val,test}_{images,labels}``.

Supports RetinaMNIST (fundus, DR grade 0-4) and OCTMNIST (OCT, 4 classes) and
any MedMNIST-shaped file: images ``NxHxW`` or ``NxHxWx3`` uint8, labels ``N``
or ``Nx1`` integers. The dataset is guessed from the file name (``retinamnist``
or ``octmnist``, any size suffix) or from ``task`` in ``site.toml``; it sets
the default ``modality`` and ``label_names`` (``site.toml`` overrides both).

MedMNIST has no patient ids: each image is its own "patient" (id
``<split>-<index>``), so the patient-level split guarantee reduces to image
level. The splits are MedMNIST's own.
"""

from __future__ import annotations

import zipfile
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from fedeye.errors import Problem
from fedeye.sites.base import (
    SITE_TOML,
    SPLITS,
    Sample,
    SiteFormat,
    SiteInfo,
    SiteScan,
    cached_scan,
    load_site_info,
    read_site_toml,
    register_format,
    site_info_problems,
)
from fedeye.sites.npz_fairvision import npz_shapes

DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "retinamnist": {"modality": "fundus", "task": "dr-grade", "label_names": ["grade-0", "grade-1", "grade-2", "grade-3", "grade-4"]},
    "octmnist": {
        "modality": "oct", "task": "retinal-oct",
        "label_names": ["choroidal neovascularization", "diabetic macular edema", "drusen", "normal"],
    },
}


def dataset_kind(stem: str, task: str | None) -> str | None:
    """Which MedMNIST dataset a file holds, from ``task`` or the file name."""
    for text in (task or "", stem):
        kind = next((k for k in DATASET_DEFAULTS if text.lower().startswith(k)), None)
        if kind:
            return kind
    return None


def split_problems(shapes: dict[str, tuple[tuple[int, ...], Any]], *, file: str) -> list[Problem]:
    """Check the six arrays exist and agree in length and image shape (pure)."""
    problems: list[Problem] = []
    for split in SPLITS:
        images, labels = f"{split}_images", f"{split}_labels"
        missing = [k for k in (images, labels) if k not in shapes]
        problems += [Problem(file=file, field=k, message=f"array '{k}' is missing", fix="use the MedMNIST file as downloaded (it has train/val/test images and labels)") for k in missing]
        if missing:
            continue
        ishape, lshape = shapes[images][0], shapes[labels][0]
        if len(ishape) not in (3, 4) or (len(ishape) == 4 and ishape[3] not in (1, 3)):
            problems.append(Problem(file=file, field=images, message=f"'{images}' has shape {ishape}, expected NxHxW or NxHxWx3", fix="re-download the file"))
        elif len(lshape) not in (1, 2) or lshape[0] != ishape[0]:
            problems.append(Problem(file=file, field=labels, message=f"'{labels}' has shape {lshape} for {ishape[0]} images, expected ({ishape[0]},) or ({ishape[0]}, 1)", fix="re-download the file"))
    return problems


@register_format
class MedMnistSite(SiteFormat):
    """A folder holding one MedMNIST ``.npz`` (see module docstring).

    >>> site = MedMnistSite(Path("retinamnist"))  # doctest: +SKIP
    >>> len(site.info.label_names)  # doctest: +SKIP
    5
    """

    format_name = "npz-medmnist"

    @classmethod
    def can_open(cls, root: Path) -> bool:
        files = sorted(Path(root).glob("*.npz")) if Path(root).is_dir() else []
        try:
            return len(files) == 1 and "train_images" in npz_shapes(files[0])
        except (OSError, zipfile.BadZipFile, ValueError):
            return False

    @property
    def npz_path(self) -> Path:
        """The site's single ``.npz`` file."""
        return sorted(self.root.glob("*.npz"))[0]

    @cached_property
    def info(self) -> SiteInfo:
        data, _ = read_site_toml(self.root)
        kind = dataset_kind(self.npz_path.stem, data.get("task"))
        info = load_site_info(self.root)
        defaults = {k: v for k, v in DATASET_DEFAULTS.get(kind or "", {}).items() if k not in data}
        return info.model_copy(update=defaults)

    @cached_scan
    def scan(self) -> SiteScan:
        """Check the arrays and every label; never raises for bad data."""
        file = str(self.npz_path)
        data, problems = read_site_toml(self.root)
        problems = problems or site_info_problems(data, file=str(self.root / SITE_TOML), default_name=self.root.resolve().name)
        if problems:
            return SiteScan([], problems)
        try:
            shapes = npz_shapes(self.npz_path)
        except (OSError, zipfile.BadZipFile, ValueError, EOFError) as exc:
            return SiteScan([], [Problem(file=file, message=f"cannot read npz: {exc}", fix="re-download the file (it may be truncated)")])
        problems = split_problems(shapes, file=file)
        if problems:
            return SiteScan([], problems)
        samples: list[Sample] = []
        for split in SPLITS:
            labels = self._arrays[f"{split}_labels"].reshape(-1)
            bad = np.flatnonzero((labels < 0) | (labels >= len(self.info.label_names)))
            problems += [_label_problem(file, split, int(i), labels[i], len(self.info.label_names)) for i in bad[:10]]
            good = np.flatnonzero((labels >= 0) & (labels < len(self.info.label_names)))
            samples += [Sample(row=int(i), image=f"{split}_images[{i}]", label=int(labels[i]), patient_id=f"{split}-{i}", split=split) for i in good]
        return SiteScan(samples, problems)

    @cached_property
    def _arrays(self) -> dict[str, np.ndarray]:
        with np.load(self.npz_path, allow_pickle=False) as archive:
            return {k: archive[k] for k in archive.files}

    def read_image(self, sample: Sample) -> np.ndarray:
        """Return one image as uint8 RGB (fundus) or gray (OCT)."""
        pixels = self._arrays[f"{sample.split}_images"][sample.row]
        pixels = pixels[..., 0] if pixels.ndim == 3 and pixels.shape[2] == 1 else pixels
        if self.info.modality == "oct" and pixels.ndim == 3:
            return np.rint(pixels @ np.array([0.299, 0.587, 0.114], np.float32)).astype(np.uint8)
        if self.info.modality == "fundus" and pixels.ndim == 2:
            return np.repeat(pixels[..., None], 3, axis=2).astype(np.uint8)
        return pixels.astype(np.uint8)

    def image_size(self, sample: Sample) -> tuple[int, int]:
        """All images of a split share one size."""
        shape = self._arrays[f"{sample.split}_images"].shape
        return int(shape[2]), int(shape[1])


def _label_problem(file: str, split: str, index: int, value: Any, num_classes: int) -> Problem:
    return Problem(
        file=file, row=index, field=f"{split}_labels",
        message=f"label {value} of image {index} is outside range(0, {num_classes})",
        fix=f"set label_names in {SITE_TOML} to one name per class",
    )
