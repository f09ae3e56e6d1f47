"""Site data: formats, checks, the PyTorch dataset and the synthetic generator.

Importing this package registers the built-in formats (currently ``manifest``).
"""

from fedeye.sites import manifest as _manifest  # noqa: F401  (registers the format)
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
