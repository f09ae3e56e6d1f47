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

from fedeye.errors import ImageDataError, Problem
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
from fedeye.sites.pixels import check_pixel_count, to_uint8

DATASET_DEFAULTS: dict[str, dict[str, Any]] = {
    "retinamnist": {
        "modality": "fundus",
        "task": "dr-grade",
        "label_names": ["grade-0", "grade-1", "grade-2", "grade-3", "grade-4"],
    },
    "octmnist": {
        "modality": "oct",
        "task": "retinal-oct",
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


NPZ_ERRORS = (OSError, zipfile.BadZipFile, ValueError, EOFError)


def split_problems(shapes: dict[str, tuple[tuple[int, ...], Any]], *, file: str) -> list[Problem]:
    """Check the six arrays exist and agree in length, image shape and dtype (pure)."""
    problems: list[Problem] = []
    for split in SPLITS:
        images, labels = f"{split}_images", f"{split}_labels"
        missing = [k for k in (images, labels) if k not in shapes]
        problems += [
            Problem(
                file=file,
                field=k,
                message=f"array '{k}' is missing",
                fix="use the MedMNIST file as downloaded (it has train/val/test images and labels)",
            )
            for k in missing
        ]
        if not missing:
            problems += _array_problems(shapes[images], shapes[labels], images=images, labels=labels, file=file)
    return problems


def _array_problems(
    image_array: tuple[tuple[int, ...], Any],
    label_array: tuple[tuple[int, ...], Any],
    *,
    images: str,
    labels: str,
    file: str,
) -> list[Problem]:
    (ishape, idtype), (lshape, ldtype) = image_array, label_array
    if len(ishape) not in (3, 4) or (len(ishape) == 4 and ishape[3] not in (1, 3)):
        return [
            Problem(
                file=file,
                field=images,
                message=f"'{images}' has shape {ishape}, expected NxHxW or NxHxWx3",
                fix="re-download the file",
            )
        ]
    if lshape not in ((ishape[0],), (ishape[0], 1)):
        return [
            Problem(
                file=file,
                field=labels,
                message=f"'{labels}' has shape {lshape} for {ishape[0]} images, expected ({ishape[0]},) or ({ishape[0]}, 1)",
                fix="re-download the file",
            )
        ]
    problems = [
        Problem(
            file=file,
            field=name,
            message=f"'{name}' holds {dtype} values, expected {want}",
            fix="save the array with a numeric dtype (e.g. uint8 images, int64 labels)",
        )
        for name, dtype, kinds, want in (
            (images, idtype, "buif", "integers or floats"),
            (labels, ldtype, "buif", "integer class indices"),
        )
        if np.dtype(dtype).kind not in kinds
    ]
    try:
        check_pixel_count(int(ishape[2]), int(ishape[1]))
    except ImageDataError as exc:
        problems.append(Problem(file=file, field=images, message=str(exc), fix="downscale the images"))
    return problems


def label_problems(labels: np.ndarray, *, split: str, num_classes: int, file: str) -> list[Problem]:
    """One problem per label (first ten) that is not a whole number in ``range(num_classes)`` (pure)."""
    values = labels.reshape(-1).astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(values) | (values != np.round(values)) | (values < 0) | (values >= num_classes))
    return [_label_problem(file, split, int(i), labels.reshape(-1)[i], num_classes) for i in bad[:10]]


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
        except NPZ_ERRORS:
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
        problems = problems or site_info_problems(
            data, file=str(self.root / SITE_TOML), default_name=self.root.resolve().name
        )
        if problems:
            return SiteScan([], problems)
        try:
            problems = split_problems(npz_shapes(self.npz_path), file=file)
            arrays = {} if problems else _load_arrays(self.npz_path)
        except NPZ_ERRORS as exc:
            return SiteScan(
                [],
                [
                    Problem(
                        file=file, message=f"cannot read npz: {exc}", fix="re-download the file (it may be truncated)"
                    )
                ],
            )
        if problems:
            return SiteScan([], problems)
        return self._scan_arrays(arrays, file)

    def _scan_arrays(self, arrays: dict[str, np.ndarray], file: str) -> SiteScan:
        num_classes = len(self.info.label_names)
        self._images: dict[str, np.ndarray] = {}
        samples: list[Sample] = []
        problems: list[Problem] = []
        for split in SPLITS:
            labels = arrays[f"{split}_labels"].reshape(-1)
            found = label_problems(labels, split=split, num_classes=num_classes, file=file) + self._scale_images(
                split, arrays, file
            )
            problems += found
            if not found:
                samples += [
                    Sample(
                        row=i, image=f"{split}_images[{i}]", label=int(label), patient_id=f"{split}-{i}", split=split
                    )
                    for i, label in enumerate(labels)
                ]
        return SiteScan(samples, problems)

    def _scale_images(self, split: str, arrays: dict[str, np.ndarray], file: str) -> list[Problem]:
        name = f"{split}_images"
        try:
            self._images[split] = to_uint8(arrays[name])
        except ImageDataError as exc:
            return [
                Problem(
                    file=file,
                    field=name,
                    message=f"'{name}': {exc}",
                    fix="save the images as uint8 0..255 or float 0..1",
                )
            ]
        return []

    def read_image(self, sample: Sample) -> np.ndarray:
        """Return one image as uint8 RGB (fundus) or gray (OCT)."""
        pixels: np.ndarray = self._scaled(sample.split)[sample.row]
        pixels = pixels[..., 0] if pixels.ndim == 3 and pixels.shape[2] == 1 else pixels
        if self.info.modality == "oct" and pixels.ndim == 3:
            gray: np.ndarray = np.rint(pixels @ np.array([0.299, 0.587, 0.114], np.float32))
            return gray.astype(np.uint8)
        if self.info.modality == "fundus" and pixels.ndim == 2:
            return np.repeat(pixels[..., None], 3, axis=2)
        return pixels

    def image_size(self, sample: Sample) -> tuple[int, int]:
        """All images of a split share one size."""
        shape = self._scaled(sample.split).shape
        return int(shape[2]), int(shape[1])

    def _scaled(self, split: str) -> np.ndarray:
        """A split's images as uint8 (scaled once, by :meth:`scan`)."""
        self.scan()
        return self._images[split]


def _load_arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as archive:
        return {k: archive[k] for k in archive.files}


def _label_problem(file: str, split: str, index: int, value: Any, num_classes: int) -> Problem:
    return Problem(
        file=file,
        row=index,
        field=f"{split}_labels",
        message=f"label {value} of image {index} is not a whole number in range(0, {num_classes})",
        fix=f"set label_names in {SITE_TOML} to one name per class",
    )
