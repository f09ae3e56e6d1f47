"""Site data: formats, checks, the PyTorch dataset and the synthetic generator.

Importing this package registers the built-in formats: ``manifest``,
``dicom``, ``npz-fairvision`` and ``npz-medmnist``.
"""

from fedeye.sites import dicom as _dicom  # noqa: F401  (registers the format)
from fedeye.sites import manifest as _manifest  # noqa: F401
from fedeye.sites import npz_fairvision as _npz_fairvision  # noqa: F401
from fedeye.sites import npz_medmnist as _npz_medmnist  # noqa: F401
from fedeye.sites.base import (
    Sample,
    SiteFormat,
    SiteInfo,
    list_formats,
    open_site,
    register_format,
)
from fedeye.sites.split import split_patients

__all__ = [
    "Sample",
    "SiteFormat",
    "SiteInfo",
    "list_formats",
    "open_site",
    "register_format",
    "split_patients",
]
