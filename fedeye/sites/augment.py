"""Training augmentation from torchvision.transforms.v2, set by ``training.augment``.

Levels:

- ``"none"``: the cached pixels as they are.
- ``"light"`` (default; ``true`` in older run files): a random horizontal flip
  and a shift of up to 1/16 of the side (pad and crop), FedEye's original
  augmentation.
- ``"strong"``: light, then what differs between fundus cameras and
  hospitals, each applied at random: colour, brightness, contrast and
  saturation (ColorJitter), gamma, defocus (GaussianBlur), JPEG compression,
  sensor noise (GaussianNoise) and occlusion bands such as burnt-in
  timestamps (RandomErasing with a wide, flat box). Training on such
  perturbations is the standard recipe for generalising to unseen scanners
  (Zhang et al., "Generalizing Deep Learning for Medical Image Segmentation
  to Unseen Domains via Deep Stacked Transformation", IEEE TMI 2020).

The transforms take and return ``uint8`` ``3xSxS`` tensors (the cache's
format); :class:`fedeye.sites.dataset.SiteDataset` normalises afterwards.

>>> import torch
>>> augment = build_augmentation("strong", image_size=32)
>>> augment(torch.zeros(3, 32, 32, dtype=torch.uint8)).dtype
torch.uint8
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from torchvision.transforms import v2  # type: ignore[import-untyped]
from torchvision.transforms.v2 import functional as F  # type: ignore[import-untyped]

AugmentLevel = Literal["none", "light", "strong"]
Augmentation = Callable[[torch.Tensor], torch.Tensor]


class RandomGamma(v2.Transform):  # type: ignore[misc]
    """Gamma correction with a gamma drawn log-uniformly from ``[1 / limit, limit]``."""

    def __init__(self, limit: float = 1.5) -> None:
        super().__init__()
        self.limit = limit

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        log_limit = torch.log(torch.tensor(self.limit))
        return {"gamma": float(torch.exp((torch.rand(()) * 2 - 1) * log_limit))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return F.adjust_gamma(inpt, params["gamma"])


def _light(image_size: int) -> list[v2.Transform]:
    pad = max(1, image_size // 16)
    return [v2.RandomHorizontalFlip(0.5), v2.RandomCrop(image_size, padding=pad)]


def _camera(image_size: int) -> list[v2.Transform]:
    """What differs between cameras and hospitals, each at random (uint8 in, float in [0, 1] out)."""
    blur = max(3, (image_size // 16) | 1)  # odd kernel, ~1/16 of the side
    return [
        v2.RandomApply([v2.ColorJitter(brightness=0.3, contrast=0.35, saturation=0.35, hue=0.04)], p=0.8),
        v2.RandomApply([RandomGamma(1.5)], p=0.5),
        v2.RandomApply([v2.GaussianBlur(blur, sigma=(0.1, 1.5))], p=0.4),
        v2.RandomApply([v2.JPEG((30, 95))], p=0.3),
        v2.ToDtype(torch.float32, scale=True),
        v2.RandomApply([v2.GaussianNoise(sigma=0.03)], p=0.3),
        v2.RandomErasing(p=0.3, scale=(0.02, 0.08), ratio=(0.05, 0.2), value=0.0),  # a wide flat band
    ]


def build_augmentation(level: AugmentLevel, *, image_size: int) -> Augmentation | None:
    """The training transform of ``level`` for square images of ``image_size`` (None for ``"none"``)."""
    if level == "none":
        return None
    if level == "light":
        light: Augmentation = v2.Compose(_light(image_size))
        return light
    pipeline: Augmentation = v2.Compose([*_light(image_size), *_camera(image_size)])
    return lambda image: (pipeline(image).clamp(0, 1) * 255).round().to(torch.uint8)
