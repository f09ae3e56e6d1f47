"""PyTorch dataset over one split of a site, as uint8 in memory or memory-mapped from the site's cache."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from fedeye.errors import ConfigError
from fedeye.sites.base import SPLITS, Sample, SiteFormat
from fedeye.sites.cache import cached_split, prepare_image, split_samples
from fedeye.sites.preprocess import PreprocessMode, to_rgb

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "SiteDataset", "to_rgb"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SiteDataset(Dataset[tuple[torch.Tensor, int]]):
    """One split of a site as ``(image, label)`` pairs.

    Images are decoded, padded to square and resized once, then kept in memory
    as uint8; with ``cache_dir`` (the site's ``SiteState.cache_dir``) they are
    instead read, memory-mapped, from the site's data cache
    (:mod:`fedeye.sites.cache`), which is built on first use and holds the
    same pixels. Items are float32 ``3xSxS`` tensors normalised
    with ImageNet mean and std; ``augment`` (``True`` = ``"light"``,
    ``"strong"``; see :mod:`fedeye.sites.augment`) perturbs training images. ``preprocess`` (default: the site's
    ``preprocess`` in ``site.toml``) crops fundus images to their field of view
    (see :mod:`fedeye.sites.preprocess`) before caching, so training and
    evaluation see the same pixels.

    >>> site = open_site("demo/site-1")  # doctest: +SKIP
    >>> train = SiteDataset(site, "train", image_size=64, augment=True)  # doctest: +SKIP
    >>> image, label = train[0]  # doctest: +SKIP
    """

    def __init__(
        self,
        site: SiteFormat,
        split: str,
        *,
        image_size: int,
        augment: bool | str = False,
        preprocess: PreprocessMode | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        self.preprocess: PreprocessMode = preprocess or site.info.preprocess
        if self.preprocess != "none" and site.info.modality != "fundus":
            raise ConfigError(
                f'preprocess {self.preprocess!r} is for fundus images; site {site.site_name!r} is {site.info.modality}: use preprocess = "none"'
            )
        if split not in SPLITS:
            raise ConfigError(f"split must be one of {list(SPLITS)}, got {split!r}")
        if image_size < 8:
            raise ConfigError(f"image_size must be at least 8 pixels, got {image_size}")
        self.site, self.split, self.image_size, self.augment = site, split, image_size, augment
        self.samples, self._images = self._cached(cache_dir) if cache_dir is not None else self._decoded()
        self.labels = np.array([s.label for s in self.samples], dtype=np.int64)
        self.attrs: list[dict[str, str]] = [dict(s.attrs) for s in self.samples]
        self.patient_ids = [s.patient_id for s in self.samples]
        self.num_classes = len(site.info.label_names)
        self._augmentation: Callable[[torch.Tensor], torch.Tensor] | None = None
        self._mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def _decoded(self) -> tuple[list[Sample], np.ndarray]:
        samples = split_samples(self.site, self.split)
        size, mode = self.image_size, self.preprocess
        return samples, np.stack([prepare_image(self.site, s, preprocess=mode, image_size=size) for s in samples])

    def _cached(self, cache_dir: Path) -> tuple[list[Sample], np.ndarray]:
        split = cached_split(
            self.site, self.split, image_size=self.image_size, preprocess=self.preprocess, cache_dir=cache_dir
        )
        return split.samples, split.images

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = torch.from_numpy(np.array(self._images[index])).permute(2, 0, 1)  # a copy: the cache is read-only
        if self.augment and self.augment != "none":
            image = self._augment(image)
        scaled = image.to(torch.float32) / 255.0
        return (scaled - self._mean) / self._std, int(self.labels[index])

    def _augment(self, image: torch.Tensor) -> torch.Tensor:
        """The training augmentation (``training.augment``; see :mod:`fedeye.sites.augment`)."""
        from fedeye.sites.augment import build_augmentation

        if self._augmentation is None:
            level = "light" if self.augment is True else self.augment
            self._augmentation = build_augmentation(level, image_size=self.image_size) or (lambda x: x)  # type: ignore[arg-type]
        return self._augmentation(image)
