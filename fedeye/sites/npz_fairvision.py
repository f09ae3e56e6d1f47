"""Harvard FairVision / Harvard-GDP / Harvard-DR site format: one ``.npz`` per subject.

Each ``data_xxxxxx.npz`` holds ``slo_fundus`` (``HxW``, or ``HxWx3``),
``oct_bscans`` (``FxHxW``), a disease label and demographic fields. The label
field follows ``task`` in ``site.toml``:

========= ====================================== =====================================
task      field (first present)                  default label_names
========= ====================================== =====================================
glaucoma  ``glaucoma`` (0/1)                     normal, glaucoma
dr        ``dr_class`` (int) or ``dr_subtype``   non-vision-threatening, vision-threatening
amd       ``amd_condition`` or ``dr_subtype``    normal, early, intermediate, late
========= ====================================== =====================================

``dr_subtype`` strings are mapped with the public EyeFairness condition maps
(severe NPDR / PDR -> 1; early dry -> 1, intermediate dry -> 2, advanced or
wet -> 3). Attributes, **assumed** from the public dataset descriptions
(EyeFairness / Harvard-DR READMEs), not verified on the data: ``race`` 0 Asian,
1 Black, 2 White; ``male`` 1 -> M, 0 -> F; ``hispanic`` (or ``ethnicity``) 1 ->
Hispanic, 0 -> Non-Hispanic; ``age`` in years. ``language`` and
``maritalstatus`` are not used. The patient id is the file stem (one subject
per file). Files under a ``train``/``training``, ``val``/``validation`` or
``test`` folder keep that split; otherwise subjects are split by patient.
``modality = "fundus"`` uses ``slo_fundus``; ``"oct"`` uses the middle B-scan
(or every B-scan with ``oct_frames = "all"``).
"""

from __future__ import annotations

import zipfile
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from fedeye.errors import ImageDataError, Problem, SiteDataError
from fedeye.sites.base import (
    SITE_TOML,
    Sample,
    SiteFormat,
    SiteInfo,
    SiteScan,
    SplitName,
    cached_scan,
    load_site_info,
    read_site_toml,
    register_format,
    site_info_problems,
)
from fedeye.sites.dicom import frame_indices
from fedeye.sites.manifest import ManifestRow, assign_splits, empty_split_problems
from fedeye.sites.pixels import check_pixel_count

RACES = {0: "Asian", 1: "Black", 2: "White"}  # assumption, see module docstring
LABEL_FIELDS = {"glaucoma": ("glaucoma",), "dr": ("dr_class", "dr_subtype"), "amd": ("amd_condition", "dr_subtype")}
DEFAULT_LABEL_NAMES = {
    "glaucoma": ["normal", "glaucoma"],
    "dr": ["non-vision-threatening", "vision-threatening"],
    "amd": ["normal", "early", "intermediate", "late"],
}
SUBTYPE_LABELS = {
    "dr": {"not.in.icd.table": 0, "no.dr.diagnosis": 0, "mild.npdr": 0, "moderate.npdr": 0, "severe.npdr": 1, "pdr": 1},
    "amd": {"not.in.icd.table": 0, "no.amd.diagnosis": 0, "early.dry": 1, "intermediate.dry": 2},
}
SPLIT_FOLDERS: dict[str, SplitName] = {
    "train": "train",
    "training": "train",
    "val": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
IMAGE_FIELDS = {"fundus": ("slo_fundus", (2, 3)), "oct": ("oct_bscans", (3,))}


# ------------------------------------------------------------------ pure helpers


def npz_shapes(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype[Any]]]:
    """Shape and dtype of every array in an ``.npz`` from its headers, without loading data."""
    shapes: dict[str, tuple[tuple[int, ...], np.dtype[Any]]] = {}
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            with archive.open(name) as handle:
                version = np.lib.format.read_magic(handle)
                reader = (
                    np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                )
                shape, _, dtype = reader(handle)
            shapes[name.removesuffix(".npy")] = (shape, dtype)
    return shapes


def task_key(task: str) -> str:
    """Normalise a ``task`` name (``dr_class`` -> ``dr``, ``amd_condition`` -> ``amd``)."""
    lowered = task.lower()
    return next((k for k in LABEL_FIELDS if lowered.startswith(k)), lowered)


ATTRIBUTE_FIELDS = ("race", "male", "hispanic", "ethnicity", "age")
SCALAR = ((), (1,))


def decode_label(value: Any, task: str) -> int | None:
    """Class index of a stored label (a whole number, or an EyeFairness condition string); None if neither."""
    if isinstance(value, str):
        return SUBTYPE_LABELS.get(task, {}).get(
            value, 3 if task == "amd" and value.startswith(("advanced", "wet")) else None
        )
    number = _number(value)
    return int(number) if number is not None and number.is_integer() else None


def _number(value: Any) -> float | None:
    """``value`` as a finite float when it is a real number (bool, int, float), else None."""
    if not isinstance(value, (bool, int, float)):
        return None
    number = float(value)
    return number if np.isfinite(number) else None


def _code(fields: dict[str, Any], name: str) -> int | None:
    number = _number(fields.get(name))
    return int(number) if number is not None and number.is_integer() else None


def subject_attrs(fields: dict[str, Any]) -> dict[str, str]:
    """Map FairVision demographic codes to FedEye attribute strings (unknown codes dropped)."""
    attrs: dict[str, str] = {}
    race, male = _code(fields, "race"), _code(fields, "male")
    hispanic = _code(fields, "hispanic" if "hispanic" in fields else "ethnicity")
    age = _number(fields.get("age"))
    if race in RACES:
        attrs["race"] = RACES[race]
    if male in (0, 1):
        attrs["sex"] = "M" if male == 1 else "F"
    if hispanic in (0, 1):
        attrs["ethnicity"] = "Hispanic" if hispanic == 1 else "Non-Hispanic"
    if age is not None and 0 <= age <= 130:
        attrs["age"] = f"{age:g}"
    return attrs


def attribute_problems(
    shapes: dict[str, tuple[tuple[int, ...], Any]], fields: dict[str, Any], path: Path
) -> list[Problem]:
    """Report demographic fields that are not one number (a vector, a string, NaN)."""
    fix = "store it as one number (race 0/1/2, male 0/1, hispanic 0/1, age in years), or remove the field"
    return [
        Problem(
            file=str(path),
            field=name,
            message=f"field '{name}' holds {_shown(shapes[name][0], fields.get(name))}, expected one number",
            fix=fix,
        )
        for name in ATTRIBUTE_FIELDS
        if name in shapes and (shapes[name][0] not in SCALAR or _number(fields.get(name)) is None)
    ]


def _shown(shape: tuple[int, ...], value: Any) -> str:
    return f"an array of shape {shape}" if shape not in SCALAR else repr(value)


def scale_to_uint8(pixels: np.ndarray) -> np.ndarray:
    """uint8 unchanged; other numbers min-max scaled per image to 0..255; NaN or infinity refused."""
    if pixels.dtype == np.uint8:
        return pixels
    if pixels.dtype.kind not in "buif" or not np.isfinite(pixels).all():
        raise ImageDataError(f"pixels of type {pixels.dtype} include values that are not finite numbers")
    low, high = float(pixels.min()), float(pixels.max())
    scaled: np.ndarray = np.rint((pixels.astype(np.float32) - low) * (255.0 / (high - low) if high > low else 0.0))
    return scaled.astype(np.uint8)


# --------------------------------------------------------------------- the format


@register_format
class FairVisionSite(SiteFormat):
    """A folder of FairVision-style subject ``.npz`` files (see module docstring).

    >>> site = FairVisionSite(Path("Glaucoma"))  # doctest: +SKIP
    >>> site.info.label_names  # doctest: +SKIP
    ['normal', 'glaucoma']
    """

    format_name = "npz-fairvision"

    @classmethod
    def can_open(cls, root: Path) -> bool:
        first = next(Path(root).rglob("*.npz"), None) if Path(root).is_dir() else None
        if first is None:
            return False
        try:
            return "train_images" not in npz_shapes(first)
        except (OSError, zipfile.BadZipFile, ValueError):
            return True  # a broken file; let scan() report it

    @cached_property
    def info(self) -> SiteInfo:
        data, _ = read_site_toml(self.root)
        info = load_site_info(self.root)
        if "label_names" in data:
            return info
        defaults = DEFAULT_LABEL_NAMES.get(task_key(info.task))
        return info.model_copy(update={"label_names": defaults}) if defaults else info

    @cached_scan
    def scan(self) -> SiteScan:
        """Check every subject file; never raises for bad data."""
        data, problems = read_site_toml(self.root)
        problems = problems or site_info_problems(
            data, file=str(self.root / SITE_TOML), default_name=self.root.resolve().name
        )
        if problems:
            return SiteScan([], problems)
        self._sizes: dict[str, tuple[int, int]] = {}
        rows: list[ManifestRow] = []
        for number, path in enumerate(sorted(self.root.rglob("*.npz")), start=1):
            parsed, file_problems = self._subject(number, path)
            rows += parsed
            problems += file_problems
        samples, split_problems = assign_splits(rows, file=str(self.root))
        if samples:
            split_problems += empty_split_problems(samples, file=str(self.root))
        return SiteScan(samples, problems + split_problems)

    def _subject(self, number: int, path: Path) -> tuple[list[ManifestRow], list[Problem]]:
        try:
            shapes = npz_shapes(path)
            image_field, label_field, problems = self._field_problems(shapes, path)
            if problems:
                return [], problems
            with np.load(path, allow_pickle=False) as archive:
                fields = {k: archive[k].item() for k, (shape, _) in shapes.items() if shape in SCALAR}
        except (OSError, zipfile.BadZipFile, ValueError, EOFError) as exc:
            return [], [
                Problem(
                    file=str(path),
                    message=f"cannot read npz: {exc}",
                    fix="re-copy the file (it may be truncated), or remove it",
                )
            ]
        label = decode_label(fields[label_field], task_key(self.info.task))
        problems = attribute_problems(shapes, fields, path)
        if label is None or not 0 <= label < len(self.info.label_names):
            problems.append(
                Problem(
                    file=str(path),
                    field=label_field,
                    message=f"label {fields[label_field]!r} is not a class in 0..{len(self.info.label_names) - 1}",
                    fix=f"fix the file, or set task / label_names in {SITE_TOML}",
                )
            )
        if problems or label is None:
            return [], problems
        return self._rows(number, path, shapes[image_field][0], image_field, label, subject_attrs(fields)), []

    def _field_problems(
        self, shapes: dict[str, tuple[tuple[int, ...], Any]], path: Path
    ) -> tuple[str, str, list[Problem]]:
        """The image and label fields of a subject file, and what is wrong with them."""
        candidates = LABEL_FIELDS.get(task_key(self.info.task), (self.info.task,))
        image_field, problems = _image_field_problems(shapes, self.info.modality, path)
        label_field = next((f for f in candidates if f in shapes), candidates[0])
        if label_field not in shapes:
            problems.append(_missing(path, label_field, f"the label of task {self.info.task!r}"))
        elif shapes[label_field][0] not in SCALAR:
            message = f"label field '{label_field}' has shape {shapes[label_field][0]}, expected one value"
            problems.append(
                Problem(
                    file=str(path),
                    field=label_field,
                    message=message,
                    fix="store the label as a single number or condition string",
                )
            )
        return image_field, label_field, problems

    def _rows(
        self, number: int, path: Path, shape: tuple[int, ...], image_field: str, label: int, attrs: dict[str, str]
    ) -> list[ManifestRow]:
        rel = path.relative_to(self.root).as_posix()
        self._sizes[rel] = (shape[-1], shape[-2]) if image_field == "oct_bscans" else (shape[1], shape[0])
        frames = frame_indices(shape[0], self.info.oct_frames) if self.info.modality == "oct" else [None]
        split = SPLIT_FOLDERS.get(path.parent.name.lower()) if path.parent != self.root else None
        return [ManifestRow(number, rel if f is None else f"{rel}#{f}", label, path.stem, split, attrs) for f in frames]

    def read_image(self, sample: Sample) -> np.ndarray:
        """Decode ``slo_fundus`` as uint8 RGB, or one OCT B-scan as uint8 gray."""
        name, _, frame = sample.image.partition("#")
        path = self.root / name
        try:
            with np.load(path, allow_pickle=False) as archive:
                if self.info.modality == "oct":
                    return scale_to_uint8(archive["oct_bscans"][int(frame)])
                pixels = scale_to_uint8(archive["slo_fundus"])
        except (OSError, KeyError, ValueError, zipfile.BadZipFile, ImageDataError) as exc:
            problem = Problem(
                file=str(path), message=f"cannot read image: {exc}", fix="run `fedeye site check` on the site"
            )
            raise SiteDataError(self.site_name, [problem]) from exc
        return np.repeat(pixels[..., None], 3, axis=2) if pixels.ndim == 2 else pixels

    def image_size(self, sample: Sample) -> tuple[int, int]:
        """Return ``(width, height)`` from the npz header, without loading pixels."""
        if not hasattr(self, "_sizes"):
            self.scan()
        return self._sizes[sample.image.partition("#")[0]]


def _missing(path: Path, field: str, what: str) -> Problem:
    return Problem(
        file=str(path),
        field=field,
        message=f"field '{field}' ({what}) is missing",
        fix="re-export the subject with this field, or remove the file",
    )


def _image_field_problems(
    shapes: dict[str, tuple[tuple[int, ...], Any]], modality: str, path: Path
) -> tuple[str, list[Problem]]:
    field, ndims = IMAGE_FIELDS[modality]
    if field not in shapes:
        return field, [_missing(path, field, f"the {modality} image")]
    shape = shapes[field][0]
    rgb_ok = len(shape) != 3 or modality == "oct" or shape[2] == 3
    if len(shape) not in ndims or not rgb_ok or min(shape) < 1:
        want = "FxHxW (B-scans)" if modality == "oct" else "HxW or HxWx3"
        return field, [
            Problem(
                file=str(path),
                field=field,
                message=f"'{field}' has shape {shape}, expected {want}",
                fix="re-export the subject, or remove the file",
            )
        ]
    if np.dtype(shapes[field][1]).kind not in "buif":
        return field, [
            Problem(
                file=str(path),
                field=field,
                message=f"'{field}' holds {shapes[field][1]} values, expected numbers",
                fix="re-export the subject, or remove the file",
            )
        ]
    try:
        height, width = shape[-2:] if modality == "oct" else shape[:2]
        check_pixel_count(int(width), int(height))
    except ImageDataError as exc:
        return field, [
            Problem(file=str(path), field=field, message=str(exc), fix="downscale the image, or remove the file")
        ]
    return field, []
