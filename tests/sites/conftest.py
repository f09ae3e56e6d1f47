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
                "image": f"images/p{p}_{eye}.png",
                "label": p % 2,
                "patient_id": f"p{p}",
                "eye": eye,
                "age": 50 + p,
                "sex": "MF"[p % 2],
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
    return synthesize_sites(
        tmp_path_factory.mktemp("oct"), sites=2, images_per_site=30, size=48, modality="oct", seed=2
    )


# ------------------------------------------------------------------------ DICOM

OP_8BIT = "1.2.840.10008.5.1.4.1.1.77.1.5.1"
OP_16BIT = "1.2.840.10008.5.1.4.1.1.77.1.5.2"
OPT = "1.2.840.10008.5.1.4.1.1.77.1.5.4"


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    sop_class: str = OP_8BIT,
    photometric: str | None = None,
    patient_id: str = "P1",
    sex: str = "F",
    age: str = "067Y",
    identifying: bool = False,
) -> str:
    """Write a small uncompressed DICOM file; return its SOPInstanceUID.

    ``pixels``: ``HxW`` / ``HxWx3`` (one frame) or ``FxHxW`` with ``sop_class=OPT``.
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, uid
    ds.Modality = "OPT" if sop_class == OPT else "OP"
    ds.PatientID, ds.PatientSex, ds.PatientAge = patient_id, sex, age
    if identifying:
        ds.PatientName, ds.PatientBirthDate, ds.InstitutionName = "Doe^Jane", "19580101", "City Eye Hospital"
    color = pixels.ndim == 3 and sop_class != OPT
    frames = pixels.shape[0] if sop_class == OPT else 1
    ds.Rows, ds.Columns = pixels.shape[-3 if color else -2], pixels.shape[-2 if color else -1]
    ds.SamplesPerPixel = 3 if color else 1
    ds.PhotometricInterpretation = photometric or ("RGB" if color else "MONOCHROME2")
    if color:
        ds.PlanarConfiguration = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    bits = 16 if pixels.dtype == np.uint16 else 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return uid


def write_dicom_site(
    root: Path, *, patients: int = 6, oct: bool = False, toml: str | None = None, identifying: bool = False
) -> Path:
    """Two fundus photographs (or one 5-frame OCT volume) per patient, labelled by file name."""
    rng = np.random.default_rng(0)
    lines = ["file,label,eye"]
    for p in range(patients):
        for eye in ("OD",) if oct else ("OD", "OS"):
            name = f"p{p}_{eye}.dcm"
            if oct:
                pixels = rng.integers(0, 255, (5, 12, 16), dtype=np.uint8)
                write_dicom(root / name, pixels, sop_class=OPT, patient_id=f"P{p}", identifying=identifying)
            else:
                pixels = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
                write_dicom(root / name, pixels, patient_id=f"P{p}", sex="MF"[p % 2], identifying=identifying)
            lines.append(f"{name},{p % 2},{eye}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    if toml is not None or oct:
        (root / "site.toml").write_text(toml if toml is not None else 'modality = "oct"\n', encoding="utf-8")
    return root


# -------------------------------------------------------------------------- npz


def write_fairvision_subject(
    path: Path, *, label: int = 0, race: int = 0, male: int = 1, drop: str = "", **override: object
) -> Path:
    """One FairVision-style subject file (small arrays); ``drop`` leaves a field out."""
    rng = np.random.default_rng(abs(hash(path.name)) % 2**32)
    fields: dict[str, object] = {
        "slo_fundus": rng.integers(0, 255, (20, 24), dtype=np.uint8),
        "oct_bscans": rng.random((5, 16, 20), dtype=np.float32),
        "glaucoma": label,
        "race": race,
        "male": male,
        "hispanic": 0,
        "age": 61.5,
        "language": 0,
        "maritalstatus": 1,
        **override,
    }
    fields.pop(drop, None)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **fields)  # type: ignore[arg-type]
    return path


def write_fairvision_site(root: Path, *, subjects: int = 9, toml: str | None = None) -> Path:
    """Subjects in train/val/test folders, as FairVision ships them."""
    folders = ["train", "train", "train", "val", "test"]
    for i in range(subjects):
        write_fairvision_subject(
            root / folders[i % len(folders)] / f"data_{i:06d}.npz", label=i % 2, race=i % 3, male=i % 2
        )
    if toml is not None:
        (root / "site.toml").write_text(toml, encoding="utf-8")
    return root


def write_medmnist_site(
    root: Path, *, name: str = "retinamnist", rgb: bool = True, classes: int = 5, **override: np.ndarray
) -> Path:
    """A tiny MedMNIST-shaped file: 10/4/4 images of 28 px."""
    rng = np.random.default_rng(0)
    arrays: dict[str, np.ndarray] = {}
    for split, n in (("train", 10), ("val", 4), ("test", 4)):
        shape = (n, 28, 28, 3) if rgb else (n, 28, 28)
        arrays[f"{split}_images"] = rng.integers(0, 255, shape, dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % classes).reshape(n, 1)
    arrays.update(override)
    root.mkdir(parents=True, exist_ok=True)
    np.savez(root / f"{name}.npz", **arrays)  # type: ignore[arg-type]
    return root
