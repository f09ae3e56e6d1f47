"""PyTorch dataset over one split of a site, cached in memory as uint8."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import Dataset

from fedeye.errors import ConfigError, Problem, SiteDataError
from fedeye.sites.base import SPLITS, Sample, SiteFormat
from fedeye.sites.preprocess import PreprocessMode, preprocess_fundus

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_rgb(pixels: np.ndarray) -> np.ndarray:
    """Return uint8 ``HxWx3``; gray ``HxW`` (OCT) is repeated to three channels."""
    if pixels.ndim == 2:
        return np.repeat(pixels[..., None], 3, axis=2)
    if pixels.ndim == 3 and pixels.shape[2] == 3:
        return pixels
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        return np.repeat(pixels, 3, axis=2)
    raise ValueError(f"expected HxW or HxWx3 pixels, got shape {pixels.shape}")


class SiteDataset(Dataset[tuple[torch.Tensor, int]]):
    """One split of a site as ``(image, label)`` pairs.

    Images are decoded, padded to square and resized once, then kept in memory
    as uint8 (sites are small). Items are float32 ``3xSxS`` tensors normalised
    with ImageNet mean and std; ``augment`` (``True`` = ``"light"``,
    ``"strong"``; see :mod:`fedeye.client.augment`) perturbs training images. ``preprocess`` (default: the site's
    ``preprocess`` in ``site.toml``) crops fundus images to their field of view
    (see :mod:`fedeye.sites.preprocess`) before caching, so training and
    evaluation see the same pixels.

    >>> site = open_site("demo/site-1")  # doctest: +SKIP
    >>> train = SiteDataset(site, "train", image_size=64, augment=True)  # doctest: +SKIP
    >>> image, label = train[0]  # doctest: +SKIP
    """

    def __init__(
        self, site: SiteFormat, split: str, *, image_size: int, augment: bool | str = False,
        preprocess: PreprocessMode | None = None,
    ) -> None:
        self.preprocess: PreprocessMode = preprocess or site.info.preprocess
        if self.preprocess != "none" and site.info.modality != "fundus":
            raise ConfigError(f"preprocess {self.preprocess!r} is for fundus images; site {site.site_name!r} is {site.info.modality}: use preprocess = \"none\"")
        if split not in SPLITS:
            raise ConfigError(f"split must be one of {list(SPLITS)}, got {split!r}")
        if image_size < 8:
            raise ConfigError(f"image_size must be at least 8 pixels, got {image_size}")
        self.site, self.split, self.image_size, self.augment = site, split, image_size, augment
        self.samples: list[Sample] = [s for s in site.samples() if s.split == split]
        if not self.samples:
            raise SiteDataError(site.site_name, [_empty_split_problem(site, split)])
        self.labels = np.array([s.label for s in self.samples], dtype=np.int64)
        self.attrs: list[dict[str, str]] = [dict(s.attrs) for s in self.samples]
        self.patient_ids = [s.patient_id for s in self.samples]
        self.num_classes = len(site.info.label_names)
        self._images = self._load_images()
        self._augmentation: Callable[[torch.Tensor], torch.Tensor] | None = None
        self._mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def _load_images(self) -> torch.Tensor:
        size, mode = self.image_size, self.preprocess
        stack = np.stack([preprocess_fundus(to_rgb(self.site.read_image(s)), mode=mode, size=size) for s in self.samples])
        return torch.from_numpy(stack).permute(0, 3, 1, 2).contiguous()

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = self._images[index]
        if self.augment and self.augment != "none":
            image = self._augment(image)
        scaled = image.to(torch.float32) / 255.0
        return (scaled - self._mean) / self._std, int(self.labels[index])

    def _augment(self, image: torch.Tensor) -> torch.Tensor:
        """The training augmentation (``training.augment``; see :mod:`fedeye.client.augment`)."""
        from fedeye.client.augment import build_augmentation

        if self._augmentation is None:
            level = "light" if self.augment is True else self.augment
            self._augmentation = build_augmentation(level, image_size=self.image_size) or (lambda x: x)  # type: ignore[arg-type]
        return self._augmentation(image)


def _empty_split_problem(site: SiteFormat, split: str) -> Problem:
    return Problem(
        file=str(site.root),
        field="split",
        message=f"split {split!r} has no images",
        fix="add patients to this split, or let the loader split by patient (needs >= 3 patients)",
    )
