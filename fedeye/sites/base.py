"""The small base every site data format builds on, plus the format registry.

A *site* is one hospital's folder of labelled images. Each on-disk format
(CSV manifest, later DICOM or npz) is one file that subclasses
:class:`SiteFormat` and registers itself with :func:`register_format`, in the
manner of Flower Datasets' ``Partitioner`` and timm's ``@register_model``.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fedeye._toml import read_toml
from fedeye.errors import ConfigError, Problem, SiteDataError, errors_only

SplitName = Literal["train", "val", "test"]
SPLITS: tuple[SplitName, ...] = ("train", "val", "test")
SITE_TOML = "site.toml"


class SiteInfo(BaseModel):
    """What a site folder holds, read from its optional ``site.toml``.

    >>> SiteInfo(name="eye-clinic-1").label_names
    ['normal', 'glaucoma']
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(
        min_length=1, max_length=200, pattern=r"^[^\x00-\x1f\x7f]+$", description="Human-readable site name (one line)."
    )
    modality: Literal["fundus", "oct"] = Field(
        default="fundus", description="Imaging modality of every image in the site."
    )
    task: str = Field(default="glaucoma", min_length=1, description="What the labels mean.")
    label_names: list[str] = Field(
        default_factory=lambda: ["normal", "glaucoma"],
        min_length=2,
        description="Name of each class; label k in the manifest is label_names[k].",
    )

    @field_validator("label_names")
    @classmethod
    def _distinct_label_names(cls, names: list[str]) -> list[str]:
        blank = [i for i, n in enumerate(names) if not n.strip()]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if blank or repeated:
            raise ValueError(f"label names must be distinct and non-empty (empty at {blank}, repeated: {repeated})")
        return names

    oct_frames: Literal["middle", "all"] = Field(
        default="middle",
        description="Multi-frame OCT volumes: the middle B-scan only, or every frame as its own sample.",
    )
    preprocess: Literal["none", "fov-crop", "fov-crop+clahe"] = Field(
        default="none",
        description="Fundus preprocessing applied identically in training and evaluation (fedeye.sites.preprocess).",
    )


@dataclass(frozen=True)
class Sample:
    """One labelled image of a site.

    ``row`` is the 1-based line of the sample in its manifest (header is 1);
    ``attrs`` holds the optional attributes present (eye, age, sex, race,
    ethnicity) as strings.
    """

    row: int
    image: str
    label: int
    patient_id: str
    split: SplitName
    attrs: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SiteScan:
    """Result of scanning a site: every sample that parsed and every problem."""

    samples: list[Sample]
    problems: list[Problem]


SelfT = TypeVar("SelfT", bound="SiteFormat")


def cached_scan(scan: Callable[[SelfT], SiteScan]) -> Callable[[SelfT], SiteScan]:
    """Decorate a format's :meth:`SiteFormat.scan` so it reads the folder once per instance.

    >>> class Tiny(SiteFormat):  # doctest: +SKIP
    ...     @cached_scan
    ...     def scan(self) -> SiteScan: ...
    """

    @functools.wraps(scan)
    def cached(self: SelfT) -> SiteScan:
        if "_cached_scan" not in self.__dict__:
            self.__dict__["_cached_scan"] = scan(self)
        result: SiteScan = self.__dict__["_cached_scan"]
        return result

    return cached


class SiteFormat(ABC):
    """Base class of a site data format: one subclass per on-disk layout.

    A subclass sets ``format_name``, says whether it recognises a folder
    (:meth:`can_open`), reads the site description (:attr:`info`), scans the
    folder into samples and problems (:meth:`scan`) and decodes one image
    (:meth:`read_image`). :meth:`samples` and :meth:`problems` are built on
    :meth:`scan`.

    >>> site = open_site("hospital-a")  # doctest: +SKIP
    >>> train = [s for s in site.samples() if s.split == "train"]  # doctest: +SKIP
    """

    format_name: ClassVar[str]

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @classmethod
    @abstractmethod
    def can_open(cls, root: Path) -> bool:
        """Return whether ``root`` looks like a site in this format."""

    @property
    @abstractmethod
    def info(self) -> SiteInfo:
        """Site description; raises :class:`ConfigError` when it is invalid."""

    @abstractmethod
    def scan(self) -> SiteScan:
        """Read the whole site, collecting every problem instead of raising."""

    @abstractmethod
    def read_image(self, sample: Sample) -> np.ndarray:
        """Decode one image: uint8 ``HxWx3`` RGB (fundus) or ``HxW`` gray (OCT)."""

    def image_size(self, sample: Sample) -> tuple[int, int]:
        """Return ``(width, height)`` of a sample's image (subclasses may avoid decoding)."""
        pixels = self.read_image(sample)
        return int(pixels.shape[1]), int(pixels.shape[0])

    def samples(self) -> list[Sample]:
        """Return every sample, or raise :class:`SiteDataError` listing every error."""
        result = self.scan()
        if errors_only(result.problems):
            raise SiteDataError(self.site_name, errors_only(result.problems))
        return result.samples

    def problems(self) -> list[Problem]:
        """Return every problem (errors and warnings) found in the site."""
        return self.scan().problems

    @property
    def site_name(self) -> str:
        """Site name from :attr:`info`, or the folder name when that is invalid."""
        try:
            return self.info.name
        except ConfigError:
            return self.root.resolve().name


# --------------------------------------------------------------------- site.toml


def site_info_problems(data: dict[str, Any], *, file: str, default_name: str) -> list[Problem]:
    """Validate a parsed ``site.toml`` table; return one problem per bad field."""
    try:
        SiteInfo(**{"name": default_name, **data})
    except ValidationError as exc:
        return [_pydantic_problem(error, file) for error in exc.errors()]
    return []


def _pydantic_problem(error: Any, file: str) -> Problem:
    loc = ".".join(str(part) for part in error["loc"]) or "<root>"
    received = error.get("input")
    if error["type"] == "extra_forbidden":
        fix = f"remove '{loc}'; allowed keys are {sorted(SiteInfo.model_fields)}"
    else:
        fix = f"set '{loc}' to a valid value ({_field_hint(loc)})"
    return Problem(file=file, message=f"{error['msg']} (got {received!r})", fix=fix, field=loc)


def _field_hint(loc: str) -> str:
    hints = {
        "modality": "'fundus' or 'oct'",
        "label_names": 'a list of at least two names, e.g. ["normal", "glaucoma"]',
        "name": "a non-empty, one-line string of at most 200 characters",
        "task": "a non-empty string such as 'glaucoma'",
        "oct_frames": "'middle' or 'all'",
        "preprocess": "'none', 'fov-crop' or 'fov-crop+clahe'",
    }
    return hints.get(loc.split(".")[0], "see fedeye/sites/README.md")


def read_site_toml(root: Path) -> tuple[dict[str, Any], list[Problem]]:
    """Read ``root/site.toml`` (missing file -> empty table); report parse errors."""
    path = root / SITE_TOML
    if not path.exists():
        return {}, []
    table, reason = read_toml(path)
    if reason is not None:
        fix = 'fix or rewrite the file, e.g. name = "City Eye Hospital"'
        return {}, [Problem(file=str(path), message=f"cannot use {SITE_TOML}: {reason}", fix=fix)]
    return table, []


def load_site_info(root: Path) -> SiteInfo:
    """Load and validate a site's description; raise :class:`ConfigError` if invalid."""
    data, problems = read_site_toml(root)
    path = str(root / SITE_TOML)
    problems = problems or site_info_problems(data, file=path, default_name=root.resolve().name)
    if problems:
        raise ConfigError("invalid site description:\n" + "\n".join(f"  - {p}" for p in problems))
    return SiteInfo(**{"name": root.resolve().name, **data})


# ---------------------------------------------------------------------- registry

_FORMATS: dict[str, type[SiteFormat]] = {}
FormatT = TypeVar("FormatT", bound=type[SiteFormat])


def register_format(cls: FormatT) -> FormatT:
    """Class decorator adding a :class:`SiteFormat` to the registry.

    Raises
    ------
    ValueError
        If another class already registered the same ``format_name``.
    """
    name = getattr(cls, "format_name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"{cls.__name__} must set a non-empty class attribute 'format_name'")
    if name in _FORMATS:
        raise ValueError(
            f"site format {name!r} is already registered by {_FORMATS[name].__qualname__}; "
            f"choose another format_name for {cls.__qualname__}"
        )
    _FORMATS[name] = cls
    return cls


def unregister_format(name: str) -> None:
    """Remove a format from the registry (for tests and plug-in reloads)."""
    _FORMATS.pop(name, None)


def list_formats() -> list[str]:
    """Return the names of every registered site format, sorted."""
    return sorted(_FORMATS)


def get_format(name: str) -> type[SiteFormat]:
    """Return the registered format class called ``name``."""
    if name not in _FORMATS:
        raise ConfigError(f"unknown site format {name!r}; registered formats: {list_formats()}")
    return _FORMATS[name]


def open_site(root: Path | str) -> SiteFormat:
    """Open a site folder with the first registered format that recognises it.

    Raises
    ------
    SiteDataError
        If the folder does not exist or no registered format can open it.
    """
    path = Path(root)
    for name in list_formats():
        if path.is_dir() and _FORMATS[name].can_open(path):
            return _FORMATS[name](path)
    raise SiteDataError(path.name or str(path), [_unopenable_problem(path)])


def _unopenable_problem(path: Path) -> Problem:
    if not path.is_dir():
        return Problem(
            file=str(path),
            message="site folder does not exist or is not a directory",
            fix="pass the folder holding the site's manifest.csv and images",
        )
    return Problem(
        file=str(path),
        message=f"no site format recognises this folder (formats tried: {list_formats()})",
        fix=(
            "add a manifest.csv with columns image,label,patient_id (image paths relative "
            "to the folder), or generate a demo site with "
            "fedeye.sites.synth.synthesize_sites"
        ),
    )
