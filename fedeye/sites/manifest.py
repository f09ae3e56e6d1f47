"""CSV-manifest site format: ``manifest.csv`` plus the images it names.

Columns: ``image`` (path relative to the folder), ``label`` (class index),
``patient_id``; optional ``eye`` (OD/OS), ``age``, ``sex`` (M/F/O), ``race``,
``ethnicity`` and ``split`` (train/val/test). Without ``split`` the samples are
split by patient with :func:`fedeye.sites.split.split_patients`.
"""

from __future__ import annotations

import csv
import io
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

from fedeye.errors import ImageDataError, Problem, SiteDataError
from fedeye.sites.base import (
    SITE_TOML,
    SPLITS,
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
from fedeye.sites.pixels import MAX_IMAGE_PIXELS, check_pixel_count, to_uint8
from fedeye.sites.split import split_patients

MANIFEST = "manifest.csv"
REQUIRED_COLUMNS = ("image", "label", "patient_id")
ATTRIBUTE_COLUMNS = ("eye", "age", "sex", "race", "ethnicity")
EYES = ("OD", "OS")
SEXES = ("M", "F", "O")
WIDE_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")  # 16/32-bit integer and float gray: scaled, not clipped
LOW_BIT_COLOUR_MAX = 16  # high byte of a 16-bit value below 4096
PIL_ERRORS = (OSError, ValueError, EOFError, SyntaxError)
MAX_LABEL_DIGITS = 18  # a longer integer label is out of range anyway
_INTEGER = re.compile(r"[+-]?[0-9]+")
_AGE = re.compile(r"[0-9]+(\.[0-9]+)?")


@dataclass(frozen=True)
class ManifestRow:
    """One parsed manifest line before its split is known."""

    row: int
    image: str
    label: int
    patient_id: str
    split: SplitName | None
    attrs: dict[str, str]


# ------------------------------------------------------------------ pure checks


def column_problems(header: Sequence[str], *, file: str) -> list[Problem]:
    """Report every required column missing from the header."""
    separator = next((sep for sep in (";", "\t", "|") if len(header) == 1 and sep in header[0]), None)
    hint = (
        "" if separator is None else f" (the file separates values with {separator!r}: save it as comma-separated CSV)"
    )
    return [
        Problem(
            file=file,
            row=1,
            field=name,
            message=f"required column '{name}' is missing (header has {list(header)})",
            fix=f"add a '{name}' column; required columns are {list(REQUIRED_COLUMNS)}{hint}",
        )
        for name in REQUIRED_COLUMNS
        if name not in header
    ] + _duplicate_column_problems(header, file=file)


def _duplicate_column_problems(header: Sequence[str], *, file: str) -> list[Problem]:
    named = [name for name in header if name]
    return [
        Problem(
            file=file,
            row=1,
            field=name,
            message=f"column '{name}' appears {named.count(name)} times (header has {list(header)})",
            fix=f"keep one '{name}' column (names are compared ignoring case and spaces)",
        )
        for name in sorted({n for n in named if named.count(n) > 1})
    ]


def parse_row(
    row: int, record: dict[str, str], *, num_classes: int, file: str
) -> tuple[ManifestRow | None, list[Problem]]:
    """Validate one manifest line; return the parsed row (if usable) and its problems."""
    problems: list[Problem] = []
    image = record.get("image", "")
    patient_id = record.get("patient_id", "")
    for name, value in (("image", image), ("patient_id", patient_id)):
        if name in record and not value:
            problems.append(_row_problem(file, row, name, f"'{name}' is empty", f"fill in '{name}'"))
    label, label_problems = _parse_label(row, record.get("label"), num_classes=num_classes, file=file)
    split, split_problems = _parse_split(row, record, file=file)
    attrs, attr_problems = _parse_attrs(row, record, file=file)
    problems += label_problems + split_problems + attr_problems
    if problems or label is None or "image" not in record or "patient_id" not in record:
        return None, problems
    return ManifestRow(row, image, label, patient_id, split, attrs), []


def _row_problem(file: str, row: int, name: str, message: str, fix: str) -> Problem:
    return Problem(file=file, row=row, field=name, message=message, fix=fix)


def _parse_label(row: int, raw: str | None, *, num_classes: int, file: str) -> tuple[int | None, list[Problem]]:
    if raw is None:
        return None, []
    valid = f"an integer in 0..{num_classes - 1} (one per label_names entry in {SITE_TOML})"
    if not _INTEGER.fullmatch(raw):
        return None, [_row_problem(file, row, "label", f"label {raw!r} is not an integer", f"use {valid}")]
    label = int(raw) if len(raw) <= MAX_LABEL_DIGITS else None  # int() refuses over 4300 digits
    if label is None or not 0 <= label < num_classes:
        message = f"label {_shown(raw) if label is None else label} is outside range(0, {num_classes})"
        return None, [_row_problem(file, row, "label", message, f"use {valid}, or extend label_names")]
    return label, []


def _parse_split(row: int, record: dict[str, str], *, file: str) -> tuple[SplitName | None, list[Problem]]:
    if "split" not in record:
        return None, []
    value = record["split"].lower()
    for split in SPLITS:
        if value == split:
            return split, []
    message = f"split {record['split']!r} is not one of {list(SPLITS)}"
    fix = "use train, val or test, or drop the split column to get an automatic patient-level split"
    return None, [_row_problem(file, row, "split", message, fix)]


def _parse_attrs(row: int, record: dict[str, str], *, file: str) -> tuple[dict[str, str], list[Problem]]:
    attrs = {name: record[name] for name in ATTRIBUTE_COLUMNS if record.get(name)}
    problems: list[Problem] = []
    if "eye" in attrs:
        attrs["eye"] = attrs["eye"].upper()
        if attrs["eye"] not in EYES:
            problems.append(
                _row_problem(
                    file,
                    row,
                    "eye",
                    f"eye {record['eye']!r} is not OD or OS",
                    "use OD (right) or OS (left), or leave it empty",
                )
            )
    if "sex" in attrs:
        attrs["sex"] = attrs["sex"].upper()
        if attrs["sex"] not in SEXES:
            problems.append(
                _row_problem(
                    file,
                    row,
                    "sex",
                    f"sex {record['sex']!r} is not one of {list(SEXES)}",
                    "use M, F or O, or leave it empty",
                )
            )
    if "age" in attrs and not _is_age(attrs["age"]):
        problems.append(
            _row_problem(
                file,
                row,
                "age",
                f"age {attrs['age']!r} is not a number in 0..130",
                "write the age in years, e.g. 63, or leave it empty",
            )
        )
    return attrs, problems


def _is_age(raw: str) -> bool:
    return _AGE.fullmatch(raw) is not None and float(raw) <= 130


def assign_splits(rows: Sequence[ManifestRow], *, file: str) -> tuple[list[Sample], list[Problem]]:
    """Attach a split to every row: the manifest's own, or a patient-level one."""
    if rows and all(r.split is None for r in rows):
        by_patient = split_patients([r.patient_id for r in rows])
        return [_to_sample(r, by_patient[r.patient_id]) for r in rows], []
    problems = patient_leak_problems(rows, file=file)
    return [_to_sample(r, r.split) for r in rows if r.split is not None], problems


def _to_sample(r: ManifestRow, split: SplitName) -> Sample:
    return Sample(row=r.row, image=r.image, label=r.label, patient_id=r.patient_id, split=split, attrs=r.attrs)


def patient_leak_problems(rows: Sequence[ManifestRow], *, file: str) -> list[Problem]:
    """Report every row whose patient already appeared in another split."""
    first: dict[str, ManifestRow] = {}
    problems: list[Problem] = []
    for r in rows:
        seen = first.setdefault(r.patient_id, r)
        if r.split is not None and seen.split is not None and r.split != seen.split:
            message = f"patient {r.patient_id!r} is in split {r.split!r} here but in {seen.split!r} on line {seen.row}"
            fix = "put all images of a patient in one split (or drop the split column)"
            problems.append(_row_problem(file, r.row, "split", message, fix))
    return problems


def duplicate_image_problems(rows: Sequence[ManifestRow], *, file: str) -> tuple[list[ManifestRow], list[Problem]]:
    """Keep the first row of each image; report every later row naming the same file."""
    first: dict[str, ManifestRow] = {}
    kept: list[ManifestRow] = []
    problems: list[Problem] = []
    for r in rows:
        seen = first.setdefault(os.path.normpath(r.image), r)
        if seen is r:
            kept.append(r)
            continue
        message = f"image {r.image!r} is already listed on line {seen.row} (label {seen.label} there, {r.label} here)"
        problems.append(
            _row_problem(file, r.row, "image", message, "list each image once: delete or fix one of the two rows")
        )
    return kept, problems


def empty_split_problems(samples: Sequence[Sample], *, file: str) -> list[Problem]:
    """Report each of train/val/test that has no sample."""
    present = {s.split for s in samples}
    return [
        Problem(
            file=file,
            field="split",
            message=f"split '{split}' has no images",
            fix=(
                f"assign some patients to '{split}', or drop the split column "
                "(the automatic split needs at least 3 patients)"
            ),
        )
        for split in SPLITS
        if split not in present
    ]


# --------------------------------------------------------------------- the format


@register_format
class ManifestSite(SiteFormat):
    """A site described by ``manifest.csv`` (see module docstring).

    >>> site = ManifestSite(Path("hospital-a"))  # doctest: +SKIP
    >>> site.problems()  # doctest: +SKIP
    []
    """

    format_name = "manifest"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self._sizes: dict[str, tuple[int, int]] = {}
        self._checked: dict[str, tuple[str, str] | None] = {}  # image -> (message, fix) of its problem

    @classmethod
    def can_open(cls, root: Path) -> bool:
        return (Path(root) / MANIFEST).is_file()

    @cached_property
    def info(self) -> SiteInfo:
        return load_site_info(self.root)

    @property
    def manifest_path(self) -> Path:
        """Path of the site's ``manifest.csv``."""
        return self.root / MANIFEST

    @cached_scan
    def scan(self) -> SiteScan:
        """Parse the manifest and check every image; never raises for bad data."""
        file = str(self.manifest_path)
        toml_problems = self._info_problems()
        num_classes = len(self.info.label_names) if not toml_problems else 2
        header, records, read_problems = _read_csv(self.manifest_path)
        if read_problems:
            return SiteScan([], toml_problems + read_problems)
        problems = toml_problems + column_problems(header, file=file)
        rows: list[ManifestRow] = []
        for row, record in records:
            parsed, row_problems = parse_row(row, record, num_classes=num_classes, file=file)
            image_problems = self._image_problems(row, record["image"], file) if record.get("image") else []
            problems += row_problems + image_problems
            rows += [parsed] if parsed and not image_problems else []
        rows, duplicate_problems = duplicate_image_problems(rows, file=file)
        samples, split_problems = assign_splits(rows, file=file)
        if samples:
            split_problems += empty_split_problems(samples, file=file)
        return SiteScan(samples, problems + duplicate_problems + split_problems)

    def _info_problems(self) -> list[Problem]:
        data, problems = read_site_toml(self.root)
        file = str(self.root / SITE_TOML)
        return problems or site_info_problems(data, file=file, default_name=self.root.resolve().name)

    def _image_problems(self, row: int, image: str, file: str) -> list[Problem]:
        if image not in self._checked:
            self._checked[image] = self._check_image(image)
        found = self._checked[image]
        return [] if found is None else [_row_problem(file, row, "image", *found)]

    def _check_image(self, image: str) -> tuple[str, str] | None:
        """Decode one image (its size checked first); return ``(message, fix)`` of its problem."""
        outside = image_path_problem(self.root, image)
        if outside is not None:
            return outside
        path = self.root / image
        if not _is_file(path):
            return (
                f"image file {image!r} not found",
                f"copy the image to {path} or fix the path (relative to {self.root})"
                + (", with '/' between folders, not '\\'" if "\\" in image else ""),
            )
        if path.stat().st_size == 0:
            return f"image file {image!r} is empty (0 bytes)", "copy the image again from its source, or remove its row"
        try:
            pixels = decode_image_file(path)
        except ImageDataError as exc:
            return (
                f"cannot read image {image!r}: {exc}",
                "re-export the image as an 8- or 16-bit PNG or JPEG, or remove its row",
            )
        self._sizes[image] = (int(pixels.shape[1]), int(pixels.shape[0]))
        return None

    def read_image(self, sample: Sample) -> np.ndarray:
        """Decode a sample's image as uint8 RGB (fundus) or gray (OCT)."""
        try:
            return to_modality(decode_image_file(self.root / sample.image), self.info.modality)
        except ImageDataError as exc:
            problem = Problem(
                file=str(self.manifest_path),
                row=sample.row,
                field="image",
                message=f"cannot read image {sample.image!r}: {exc}",
                fix="run the site check and fix the image",
            )
            raise SiteDataError(self.site_name, [problem]) from exc

    def image_size(self, sample: Sample) -> tuple[int, int]:
        """Return ``(width, height)`` from the image header, without decoding."""
        if sample.image not in self._sizes:
            with Image.open(self.root / sample.image) as img:
                self._sizes[sample.image] = img.size
        return self._sizes[sample.image]


# ------------------------------------------------------------------ image files


def image_path_problem(root: Path, image: str) -> tuple[str, str] | None:
    """``(message, fix)`` when a manifest path is absolute or leads outside ``root`` (also by symlink)."""
    fix = f"copy the image into {root} and give its path relative to that folder"
    if "\x00" in image:
        return f"image path {image!r} contains a NUL character", fix
    relative = Path(image)
    if relative.is_absolute() or ".." in relative.parts:
        return f"image path {image!r} is not inside the site folder (absolute or '..')", fix
    try:
        target = (root / relative).resolve()
    except (RuntimeError, OSError) as exc:  # a symlink loop (RuntimeError before Python 3.13), a name too long
        return f"image path {image!r} cannot be followed ({exc})", "replace the symlink by the image file itself"
    if not target.is_relative_to(root.resolve()):
        return f"image path {image!r} leads outside the site folder (to {target}, through a symlink)", fix
    return None


def _is_file(path: Path) -> bool:
    """``path.is_file()``, False also for a name the file system refuses (too long: ENAMETOOLONG)."""
    try:
        return path.is_file()
    except OSError:
        return False


def decode_image_file(path: Path) -> np.ndarray:
    """Decode an image file to uint8 ``HxW`` gray or ``HxWx3`` RGB; its size is checked before decoding.

    16/32-bit integer and float gray images are scaled by
    :func:`fedeye.sites.pixels.to_uint8`; other modes are converted by Pillow.

    Raises
    ------
    ImageDataError
        If the file is not a readable image, is too large, or holds values that cannot be scaled.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # FedEye's own lower limit applies
            with Image.open(path) as img:
                check_pixel_count(*img.size)
                _check_single_frame(img)
                return _native_pixels(img)
    except Image.DecompressionBombError as exc:
        raise ImageDataError(
            f"image is far above FedEye's limit of {MAX_IMAGE_PIXELS:,} pixels ({exc}); downscale it"
        ) from exc
    except PIL_ERRORS as exc:
        raise ImageDataError(f"not a readable image ({type(exc).__name__}: {exc})") from exc


def _check_single_frame(img: Image.Image) -> None:
    frames = int(getattr(img, "n_frames", 1))
    if frames > 1:
        raise ImageDataError(f"image file holds {frames} frames; save the one frame to use as its own PNG or JPEG")


def _native_pixels(img: Image.Image) -> np.ndarray:
    if img.mode in WIDE_MODES:
        return to_uint8(np.asarray(img))
    if img.mode in ("1", "L"):
        return np.asarray(img.convert("L"), dtype=np.uint8)
    wide_colour = _is_16bit_colour(img)  # read before decoding: Pillow clears the tiles
    rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
    if wide_colour and rgb.size and int(rgb.max()) < LOW_BIT_COLOUR_MAX:
        raise ImageDataError(
            "16-bit colour image whose values stay below 4096 (e.g. 12-bit data): Pillow keeps only the high "
            "byte, which would leave it nearly black; save it as 8-bit colour, or as 16-bit gray"
        )
    return rgb


def _is_16bit_colour(img: Image.Image) -> bool:
    """Whether Pillow reads this colour image from 16 bits per channel (it keeps the high byte)."""
    tiles = img.tile if isinstance(img, ImageFile.ImageFile) else []
    return any(isinstance(tile.args, str) and ";16" in tile.args for tile in tiles)


def to_modality(pixels: np.ndarray, modality: str) -> np.ndarray:
    """uint8 gray or RGB -> ``HxW`` gray for OCT, ``HxWx3`` RGB for fundus."""
    if modality == "oct" and pixels.ndim == 3:
        return np.asarray(Image.fromarray(pixels).convert("L"), dtype=np.uint8)
    if modality != "oct" and pixels.ndim == 2:
        return np.repeat(pixels[..., None], 3, axis=2)
    return pixels


def _read_csv(path: Path) -> tuple[list[str], list[tuple[int, dict[str, str]]], list[Problem]]:
    """Read a CSV into its header and ``(line, record)`` pairs; blank lines are skipped.

    A file that cannot be decoded or parsed, and rows whose structure is broken
    (a NUL byte, a line break inside a value, more values than columns), come
    back as problems, without records: the rows cannot be trusted then.
    """
    lines, problems = _csv_lines(path)
    if problems:
        return [], [], problems
    if not lines or not any(cell.strip() for cell in lines[0][1]):
        fix = "write a header line 'image,label,patient_id' and one line per image"
        return [], [], [Problem(file=str(path), message="manifest is empty", fix=fix)]
    header = [cell.strip().lower() for cell in lines[0][1]]
    rows = [(number, cells) for number, cells in lines[1:] if any(cell.strip() for cell in cells)]
    problems = [p for number, cells in lines for p in _structure_problems(number, cells, header, file=str(path))]
    if problems:
        return header, [], problems
    records = [
        (number, {name: (cells[i].strip() if i < len(cells) else "") for i, name in enumerate(header)})
        for number, cells in rows
    ]
    if not records:
        fix = "add one line per image below the header"
        return header, [], [Problem(file=str(path), row=1, message="manifest has a header but no images", fix=fix)]
    return header, records, []


def _csv_lines(path: Path) -> tuple[list[tuple[int, list[str]]], list[Problem]]:
    """Decode ``path`` as UTF-8 (a BOM is allowed) and split it into ``(first line, cells)`` records."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return [], [
            Problem(
                file=str(path),
                message=f"cannot read file: {exc.strerror or exc}",
                fix="check the path and its permissions",
            )
        ]
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return [], [_encoding_problem(path, raw, exc)]
    reader = csv.reader(io.StringIO(text, newline=""))
    lines: list[tuple[int, list[str]]] = []
    first = 1
    try:
        for cells in reader:
            lines.append((first, cells))
            first = reader.line_num + 1
    except csv.Error as exc:
        fix = "fix that line (a value may be too long, or a double quote never closed)"
        return [], [Problem(file=str(path), row=first, message=f"cannot parse CSV: {exc}", fix=fix)]
    return lines, []


def _encoding_problem(path: Path, raw: bytes, exc: UnicodeDecodeError) -> Problem:
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        message = "file is UTF-16 text (Excel's 'Unicode Text'), not UTF-8"
        return Problem(file=str(path), message=message, fix="save it as 'CSV UTF-8 (comma delimited)'")
    line = raw.count(b"\n", 0, exc.start) + 1
    byte = raw[exc.start : exc.start + 1].hex()
    message = f"byte 0x{byte} on line {line} is not UTF-8 (the file may be Latin-1/Windows-1252, or not text)"
    return Problem(file=str(path), row=line, message=message, fix="save it as 'CSV UTF-8 (comma delimited)'")


def _structure_problems(number: int, cells: list[str], header: list[str], *, file: str) -> list[Problem]:
    """A record whose cells cannot be trusted: a NUL byte, a line break inside a value, values past the header."""
    problems: list[Problem] = []
    names = [*header, *(f"column {i + 1}" for i in range(len(header), len(cells)))]
    for name, cell in zip(names, cells):
        if "\x00" in cell:
            fix = "re-export the file as plain UTF-8 CSV (a NUL byte means a damaged or binary file)"
            problems.append(_row_problem(file, number, name, f"value {_shown(cell)} contains a NUL byte", fix))
        elif "\n" in cell or "\r" in cell:
            message = f"value {_shown(cell)} spans several lines (a double quote opened here is closed on a later line, or never)"
            fix = "remove the line break or the stray double quote; the lines after it were read as part of this value"
            problems.append(_row_problem(file, number, name, message, fix))
    extra = [cell for cell in cells[len(header) :] if cell.strip()]
    if number > 1 and extra:
        message = f"line has {len(cells)} values but the header names {len(header)} columns (extra: {_shown(', '.join(extra))})"
        fix = 'quote values that contain a comma (e.g. "Smith, J"), or name the extra column in the header'
        problems.append(_row_problem(file, number, header[-1] if header else "", message, fix))
    return problems


def _shown(value: str, limit: int = 60) -> str:
    """``repr`` of a value, cut to ``limit`` characters for a message."""
    return repr(value if len(value) <= limit else value[:limit] + "...")
