"""DICOM site format: a folder of ``.dcm`` files plus ``labels.csv``.

Reads Ophthalmic Photography (8/16-bit; MONOCHROME1/2, RGB, YBR_*) and
Ophthalmic Tomography (multi-frame) with pydicom. ``labels.csv`` has a key
column, ``sop_instance_uid`` or ``file`` (path relative to the folder, or the
bare file name), a ``label`` column and optional ``split``, ``patient_id``,
``eye``, ``age``, ``sex``, ``race``, ``ethnicity``. ``patient_id``, ``sex`` and
``age`` fall back to the header (PatientID, PatientSex, PatientAge such as
``067Y``). A multi-frame OCT volume gives its middle B-scan, or every frame as
its own sample with ``oct_frames = "all"`` in ``site.toml``.

Identifying header fields (PatientName, PatientBirthDate, ...) are reported as
warnings: FedEye keeps only their names, never their values, so they never
reach an outgoing message. PatientID is used locally, for the patient-level
split only. 16-bit pixels are scaled to uint8 by BitsStored (no VOI window).
"""

from __future__ import annotations

import struct
from collections import defaultdict
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import pixel_array  # type: ignore[attr-defined]

from fedeye.errors import ImageDataError, Problem, SiteDataError
from fedeye.sites.base import (
    SITE_TOML,
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
from fedeye.sites.manifest import (
    ManifestRow,
    _parse_attrs,
    _parse_label,
    _parse_split,
    _read_csv,
    assign_splits,
    duplicate_image_problems,
    empty_split_problems,
    image_path_problem,
)
from fedeye.sites.pixels import check_pixel_count

LABELS = "labels.csv"
KEY_COLUMNS = ("sop_instance_uid", "file")
OPHTHALMIC_TOMOGRAPHY = "1.2.840.10008.5.1.4.1.1.77.1.5.4"
IDENTIFYING_FIELDS = (
    "PatientName",
    "PatientBirthDate",
    "OtherPatientIDs",
    "OtherPatientIDsSequence",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "InstitutionName",
    "InstitutionAddress",
    "ReferringPhysicianName",
    "OperatorsName",
    "AccessionNumber",
)
_UNIT_YEARS = {"Y": 1.0, "M": 1 / 12, "W": 1 / 52, "D": 1 / 365}


@dataclass(frozen=True)
class DicomHeader:
    """What FedEye reads from one file's header (nothing identifying but PatientID)."""

    file: str  # path relative to the site folder
    sop_instance_uid: str
    is_tomography: bool
    frames: int
    rows: int
    columns: int
    patient_id: str
    sex: str
    age: str
    identifying: tuple[str, ...]  # identifying fields present (names only, values never kept)


# ------------------------------------------------------------------ pure helpers


def parse_dicom_age(raw: str) -> str:
    """``"067Y"`` -> ``"67"``, ``"006M"`` -> ``"0.5"``; empty for a malformed age string."""
    raw = raw.strip().upper()
    if len(raw) != 4 or not raw[:3].isdigit() or raw[3] not in _UNIT_YEARS:
        return ""
    years = int(raw[:3]) * _UNIT_YEARS[raw[3]]
    return f"{years:g}" if raw[3] == "Y" else f"{years:.2f}"


def frame_indices(frames: int, mode: str) -> list[int | None]:
    """Frames to use from a file: ``[None]`` for single-frame images."""
    if frames <= 1:
        return [None]
    return list(range(frames)) if mode == "all" else [frames // 2]


def expected_pixel_bytes(ds: pydicom.Dataset) -> int:
    """Byte length of native (uncompressed) pixel data for a dataset's geometry."""
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    samples = int(getattr(ds, "SamplesPerPixel", 1))
    pixels = int(ds.Rows) * int(ds.Columns) * frames * samples
    if ds.PhotometricInterpretation == "YBR_FULL_422":
        pixels = pixels * 2 // 3
    return pixels * int(ds.BitsAllocated) // 8


def to_uint8(pixels: np.ndarray, *, bits_stored: int, monochrome1: bool) -> np.ndarray:
    """Scale stored values to uint8 by the stored bit depth; invert MONOCHROME1.

    Raises
    ------
    ImageDataError
        If a value lies outside ``0 .. 2**bits_stored - 1`` (signed data, or a wrong BitsStored):
        such values would otherwise be clipped without notice.
    """
    high = 2**bits_stored - 1
    if pixels.size and (int(pixels.min()) < 0 or int(pixels.max()) > high):
        raise ImageDataError(
            f"pixel values span {int(pixels.min())}..{int(pixels.max())}, outside 0..{high} of BitsStored "
            f"{bits_stored}; FedEye reads unsigned ophthalmic images only"
        )
    scaled = pixels.astype(np.float32) * (255.0 / high)
    out = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return np.asarray(255 - out if monochrome1 else out)


# --------------------------------------------------------------------- the format


@register_format
class DicomSite(SiteFormat):
    """A folder of DICOM files labelled by ``labels.csv`` (see module docstring).

    >>> site = DicomSite(Path("hospital-b"))  # doctest: +SKIP
    >>> [p.severity for p in site.problems()]  # doctest: +SKIP
    ['warning']
    """

    format_name = "dicom"

    @classmethod
    def can_open(cls, root: Path) -> bool:
        root = Path(root)
        return (root / LABELS).is_file() and next(root.rglob("*.dcm"), None) is not None

    @cached_property
    def info(self) -> SiteInfo:
        return load_site_info(self.root)

    @property
    def labels_path(self) -> Path:
        """Path of the site's ``labels.csv``."""
        return self.root / LABELS

    @cached_scan
    def scan(self) -> SiteScan:
        """Read every header and ``labels.csv``; never raises for bad data."""
        toml_problems = self._info_problems()
        headers, file_problems = self._read_headers()
        self._headers = {h.file: h for h in headers}
        rows, row_problems, used = self._label_rows(headers, valid_toml=not toml_problems)
        samples, split_problems = assign_splits(rows, file=str(self.labels_path))
        if samples:
            split_problems += empty_split_problems(samples, file=str(self.labels_path))
        warnings = _unlabelled_warnings(headers, used, self.labels_path) + _identifying_warnings(headers, self.root)
        return SiteScan(samples, toml_problems + file_problems + row_problems + split_problems + warnings)

    def _info_problems(self) -> list[Problem]:
        data, problems = read_site_toml(self.root)
        file = str(self.root / SITE_TOML)
        return problems or site_info_problems(data, file=file, default_name=self.root.resolve().name)

    def _read_headers(self) -> tuple[list[DicomHeader], list[Problem]]:
        headers: list[DicomHeader] = []
        problems: list[Problem] = []
        for path in sorted(self.root.rglob("*.dcm")):
            outside = image_path_problem(self.root, path.relative_to(self.root).as_posix())
            if outside is not None:
                problems.append(_file_problem(path, *outside))
                continue
            header, problem = read_header(path, self.root)
            headers += [header] if header else []
            problems += [problem] if problem else []
        return headers, problems

    def _label_rows(
        self, headers: list[DicomHeader], *, valid_toml: bool
    ) -> tuple[list[ManifestRow], list[Problem], set[str]]:
        file = str(self.labels_path)
        header, records, problems = _read_csv(self.labels_path)
        if problems:
            return [], problems, set()
        key = next((k for k in KEY_COLUMNS if k in header), None)
        if key is None or "label" not in header:
            return [], [_columns_problem(file, header)], set()
        index = _header_index(headers)
        info = self.info if valid_toml else SiteInfo(name="-")
        rows: list[ManifestRow] = []
        used: set[str] = set()
        for line, record in records:
            parsed, row_problems = self._label_row(line, record, key, index, info)
            problems += row_problems
            rows += parsed
            used |= {r.image.split("#")[0] for r in parsed}
        rows, duplicates = duplicate_image_problems(rows, file=file)
        return rows, problems + duplicates, used

    def _label_row(
        self, line: int, record: dict[str, str], key: str, index: dict[str, DicomHeader], info: SiteInfo
    ) -> tuple[list[ManifestRow], list[Problem]]:
        file = str(self.labels_path)
        dcm = index.get(record[key])
        if dcm is None:
            fix = f"fix the {key} or copy the file into {self.root}; rows must match a readable .dcm file"
            return [], [
                Problem(
                    file=file, row=line, field=key, message=f"no readable DICOM file has {key} {record[key]!r}", fix=fix
                )
            ]
        merged = {"sex": dcm.sex, "age": dcm.age, **{k: v for k, v in record.items() if v}}
        label, problems = _parse_label(line, record["label"], num_classes=len(info.label_names), file=file)
        split, split_problems = _parse_split(line, record, file=file)
        attrs, attr_problems = _parse_attrs(line, merged, file=file)
        problems += split_problems + attr_problems + _modality_problems(dcm, info, self.root)
        patient_id = record.get("patient_id") or dcm.patient_id
        if not patient_id:
            fix = "add a patient_id column to labels.csv (the header has no PatientID)"
            problems.append(
                Problem(file=file, row=line, field="patient_id", message=f"no patient id for {dcm.file!r}", fix=fix)
            )
        if problems or label is None:
            return [], problems
        images = [dcm.file if f is None else f"{dcm.file}#{f}" for f in frame_indices(dcm.frames, info.oct_frames)]
        return [ManifestRow(line, image, label, patient_id, split, attrs) for image in images], []

    def read_image(self, sample: Sample) -> np.ndarray:
        """Decode one image (or one frame) as uint8 RGB (fundus) or gray (OCT)."""
        name, _, frame = sample.image.partition("#")
        path = self.root / name
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            pixels = pixel_array(path, index=int(frame) if frame else None)
        except (OSError, ValueError, InvalidDicomError, RuntimeError, NotImplementedError, struct.error) as exc:
            problem = Problem(
                file=str(path),
                row=sample.row,
                field="PixelData",
                message=f"cannot decode pixels: {exc}",
                fix="run `fedeye site check` on the site",
            )
            raise SiteDataError(self.site_name, [problem]) from exc
        try:
            gray = to_uint8(
                pixels, bits_stored=int(ds.BitsStored), monochrome1=ds.PhotometricInterpretation == "MONOCHROME1"
            )
        except ImageDataError as exc:
            problem = Problem(
                file=str(path),
                row=sample.row,
                field="PixelData",
                message=str(exc),
                fix="re-export the image as unsigned 8- or 16-bit",
            )
            raise SiteDataError(self.site_name, [problem]) from exc
        return _to_modality(gray, self.info.modality)

    def image_size(self, sample: Sample) -> tuple[int, int]:
        """Return ``(width, height)`` from the header, without decoding pixels."""
        if not hasattr(self, "_headers"):
            self.scan()
        header = self._headers[sample.image.partition("#")[0]]
        return header.columns, header.rows


# ------------------------------------------------------------------ file reading


def read_header(path: Path, root: Path) -> tuple[DicomHeader | None, Problem | None]:
    """Read one file's header and check its pixel data is complete."""
    rel = path.relative_to(root).as_posix()
    try:
        ds = pydicom.dcmread(path)
        missing = [k for k in ("SOPInstanceUID", "Rows", "Columns", "BitsStored", "PixelData") if k not in ds]
        if missing:
            return None, _file_problem(
                path,
                f"required DICOM attribute(s) {missing} missing",
                "re-export the image from the device or PACS",
                field=missing[0],
            )
        check_pixel_count(int(ds.Columns), int(ds.Rows))
        unreadable = _pixel_format_problem(ds, path)
        if unreadable:
            return None, unreadable
        short = _pixel_problem(ds, path)
        if short:
            return None, short
    except ImageDataError as exc:
        return None, _file_problem(path, str(exc), "downscale the image, or remove the file", field="Rows")
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, AttributeError, struct.error) as exc:
        return None, _file_problem(
            path,
            f"not a readable DICOM file ({type(exc).__name__}: {exc})",
            "re-export or re-copy the file (it may be truncated), or remove it",
        )
    return _header(ds, rel), None


def _pixel_format_problem(ds: pydicom.Dataset, path: Path) -> Problem | None:
    """A colour model FedEye reads, and BitsStored within BitsAllocated (8 or 16): else pixels would be misread."""
    photometric = str(getattr(ds, "PhotometricInterpretation", ""))
    if photometric not in ("MONOCHROME1", "MONOCHROME2", "RGB") and not photometric.startswith("YBR_"):
        return _file_problem(
            path,
            f"PhotometricInterpretation {photometric!r} is not read by FedEye (MONOCHROME1/2, RGB or YBR_* only); "
            "its pixel values would be misread",
            "re-export the image as RGB or grayscale from the device or PACS",
            field="PhotometricInterpretation",
        )
    stored, allocated = int(ds.BitsStored), int(getattr(ds, "BitsAllocated", 0) or 0)
    if allocated in (8, 16) and 1 <= stored <= allocated:
        return None
    return _file_problem(
        path,
        f"BitsStored {stored} with BitsAllocated {allocated}; expected BitsAllocated 8 or 16 and "
        "BitsStored from 1 up to it",
        "re-export the image from the device or PACS (the header is inconsistent)",
        field="BitsStored",
    )


def _pixel_problem(ds: pydicom.Dataset, path: Path) -> Problem | None:
    if not ds.file_meta.TransferSyntaxUID.is_compressed:
        got, want = len(ds.PixelData), expected_pixel_bytes(ds)
        if got < want:
            return _file_problem(
                path,
                f"pixel data is truncated: {got} bytes, expected {want}",
                "re-copy the file from the source (the copy is incomplete)",
                field="PixelData",
            )
        return None
    try:
        pixel_array(ds, index=0 if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1 else None)
    except (ValueError, RuntimeError, NotImplementedError) as exc:
        fix = "install a decoder for this transfer syntax (e.g. pip install pylibjpeg pylibjpeg-libjpeg) or re-export uncompressed"
        return _file_problem(
            path,
            f"cannot decode compressed pixel data ({ds.file_meta.TransferSyntaxUID.name}): {exc}",
            fix,
            field="PixelData",
        )
    return None


def _header(ds: pydicom.Dataset, rel: str) -> DicomHeader:
    sex = str(getattr(ds, "PatientSex", "") or "").upper()
    return DicomHeader(
        file=rel,
        sop_instance_uid=str(ds.SOPInstanceUID),
        is_tomography=str(getattr(ds, "SOPClassUID", "")) == OPHTHALMIC_TOMOGRAPHY,
        frames=int(getattr(ds, "NumberOfFrames", 1) or 1),
        rows=int(ds.Rows),
        columns=int(ds.Columns),
        patient_id=str(getattr(ds, "PatientID", "") or ""),
        sex=sex if sex in ("M", "F", "O") else "",
        age=parse_dicom_age(str(getattr(ds, "PatientAge", "") or "")),
        identifying=tuple(f for f in IDENTIFYING_FIELDS if f in ds and ds[f].value not in (None, "", [])),
    )


def _to_modality(pixels: np.ndarray, modality: str) -> np.ndarray:
    if modality == "oct":
        if pixels.ndim == 3:
            return np.asarray(np.rint(pixels @ np.array([0.299, 0.587, 0.114], np.float32)).astype(np.uint8))
        return pixels
    return np.repeat(pixels[..., None], 3, axis=2) if pixels.ndim == 2 else pixels


def _header_index(headers: list[DicomHeader]) -> dict[str, DicomHeader]:
    index: dict[str, DicomHeader] = {}
    for h in headers:
        index.setdefault(Path(h.file).name, h)
        index[h.file] = h
        index[h.sop_instance_uid] = h
    return index


# -------------------------------------------------------------------- problems


def _file_problem(path: Path, message: str, fix: str, *, field: str | None = None) -> Problem:
    return Problem(file=str(path), message=message, fix=fix, field=field)


def _columns_problem(file: str, header: list[str]) -> Problem:
    return Problem(
        file=file,
        row=1,
        field="label",
        message=f"labels.csv needs a 'label' column and one of {list(KEY_COLUMNS)} (header has {header})",
        fix="write a header such as 'file,label' or 'sop_instance_uid,label,split'",
    )


def _modality_problems(dcm: DicomHeader, info: SiteInfo, root: Path) -> list[Problem]:
    if dcm.is_tomography and info.modality != "oct":
        fix = f'set modality = "oct" in {root / SITE_TOML} (a site holds one modality)'
        return [
            Problem(
                file=str(root / dcm.file),
                field="SOPClassUID",
                message="Ophthalmic Tomography file in a fundus site",
                fix=fix,
            )
        ]
    return []


def _unlabelled_warnings(headers: list[DicomHeader], used: set[str], labels: Path) -> list[Problem]:
    unused = [h.file for h in headers if h.file not in used]
    if not unused:
        return []
    return [
        Problem(
            file=str(labels),
            severity="warning",
            field="file",
            message=f"{len(unused)} DICOM file(s) have no row in labels.csv and are skipped (e.g. {unused[0]!r})",
            fix="add a row per file to use it, or leave them out on purpose",
        )
    ]


def _identifying_warnings(headers: list[DicomHeader], root: Path) -> list[Problem]:
    files: dict[str, list[str]] = defaultdict(list)
    for h in headers:
        for name in h.identifying:
            files[name].append(h.file)
    return [
        Problem(
            file=str(root / found[0]),
            field=name,
            severity="warning",
            message=f"{len(found)} file(s) carry identifying header field {name} (e.g. {found[0]!r}); "
            "FedEye never keeps its value, so it never enters an outgoing message",
            fix="nothing required; de-identify the files (e.g. DICOM PS3.15 basic profile) to silence this",
        )
        for name, found in sorted(files.items())
    ]
