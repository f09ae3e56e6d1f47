"""Unlabelled images for self-supervised pretraining: site folders (labels ignored) or plain image folders.

A folder any registered site format opens (CSV manifest, DICOM, npz, ...)
contributes every image of every split through that format's loader, so
its images are preprocessed exactly as FedEye trains on them. Any other
folder contributes every image file under it (PNG, JPEG, TIFF, BMP). Each
folder is fingerprinted (SHA-256 over its images' relative paths and bytes)
so a pretrained backbone records which data made it.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from fedeye.errors import ConfigError, SiteDataError
from fedeye.sites.base import open_site
from fedeye.sites.dataset import to_rgb
from fedeye.sites.preprocess import preprocess_fundus

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


@dataclass(frozen=True)
class FolderRecord:
    """Where pretraining images came from."""

    folder: str
    kind: str  # the site format's name, or "images" for a plain folder
    images: int
    sha256: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_unlabelled(folders: list[Path], *, size: int) -> tuple[torch.Tensor, list[FolderRecord]]:
    """Every image of ``folders`` as uint8 ``[N, 3, size, size]``, with one record per folder.

    Raises
    ------
    ConfigError
        A folder does not exist or holds no image.
    """
    stacks, records = [], []
    for folder in folders:
        pixels, record = _load_folder(Path(folder), size)
        stacks.append(pixels)
        records.append(record)
    return torch.from_numpy(np.concatenate(stacks)).permute(0, 3, 1, 2).contiguous(), records


def _load_folder(folder: Path, size: int) -> tuple[np.ndarray, FolderRecord]:
    if not folder.is_dir():
        raise ConfigError(f"{folder}: no such folder; pass site folders or folders of images to --data")
    try:
        site = open_site(folder)
    except SiteDataError:
        return _plain_folder(folder, size)
    digest, images = hashlib.sha256(), []
    mode = site.info.preprocess if site.info.modality == "fundus" else "none"
    for sample in site.samples():
        digest.update(sample.image.encode())
        pixels = site.read_image(sample)
        digest.update(pixels.tobytes())
        images.append(preprocess_fundus(to_rgb(pixels), mode=mode, size=size))
    record = FolderRecord(str(folder.resolve()), site.format_name, len(images), digest.hexdigest())
    return _stacked(folder, images), record


def _plain_folder(folder: Path, size: int) -> tuple[np.ndarray, FolderRecord]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    digest, images = hashlib.sha256(), []
    for file in files:
        digest.update(str(file.relative_to(folder)).encode())
        digest.update(file.read_bytes())
        with Image.open(file) as image:
            images.append(preprocess_fundus(to_rgb(np.asarray(image.convert("RGB"))), mode="none", size=size))
    return _stacked(folder, images), FolderRecord(str(folder.resolve()), "images", len(images), digest.hexdigest())


def _stacked(folder: Path, images: list[np.ndarray]) -> np.ndarray:
    if not images:
        raise ConfigError(
            f"{folder} holds no image: pass a FedEye site folder or a folder of {', '.join(IMAGE_SUFFIXES)} files"
        )
    return np.stack(images)
