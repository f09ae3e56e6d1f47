"""Check a site folder and summarise it: counts, attribute coverage, image sizes.

:func:`check_site` never raises for bad data: every problem goes into the
report. It raises :class:`SiteDataError` only when no registered format can
open the folder (there is nothing to summarise then).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fedeye.errors import ConfigError, Problem, errors_only
from fedeye.sites.base import SPLITS, Sample, SiteFormat, open_site

OPTIONAL_ATTRIBUTES = ("eye", "age", "sex", "race", "ethnicity")


@dataclass(frozen=True)
class SiteSummary:
    """Counts and coverage of the samples that could be read."""

    num_samples: int
    num_patients: int
    per_split: dict[str, int]
    per_label: dict[str, int]
    per_split_label: dict[str, dict[str, int]]
    attribute_coverage: dict[str, float]  # fraction of rows with each optional attribute
    image_size_min: tuple[int, int] | None  # (width, height) of the smallest image by area
    image_size_max: tuple[int, int] | None
    image_size_common: tuple[int, int] | None


@dataclass(frozen=True)
class CheckReport:
    """Result of :func:`check_site`."""

    site: str
    root: Path
    format_name: str
    problems: list[Problem] = field(default_factory=list)
    summary: SiteSummary | None = None

    @property
    def ok(self) -> bool:
        """True when the site has no error (warnings do not count)."""
        return not errors_only(self.problems)


def summarise(samples: Sequence[Sample], label_names: Sequence[str], sizes: Sequence[tuple[int, int]]) -> SiteSummary:
    """Summarise samples (pure): counts per split and label, coverage, sizes."""

    def name(label: int) -> str:
        return label_names[label] if 0 <= label < len(label_names) else str(label)

    per_split_label: dict[str, dict[str, int]] = {
        split: dict(Counter(name(s.label) for s in samples if s.split == split)) for split in SPLITS
    }
    coverage = {a: (sum(a in s.attrs for s in samples) / len(samples) if samples else 0.0) for a in OPTIONAL_ATTRIBUTES}
    by_area = sorted(sizes, key=lambda wh: (wh[0] * wh[1], wh))
    return SiteSummary(
        num_samples=len(samples),
        num_patients=len({s.patient_id for s in samples}),
        per_split={split: sum(s.split == split for s in samples) for split in SPLITS},
        per_label={n: sum(name(s.label) == n for s in samples) for n in label_names},
        per_split_label=per_split_label,
        attribute_coverage=coverage,
        image_size_min=by_area[0] if by_area else None,
        image_size_max=by_area[-1] if by_area else None,
        image_size_common=Counter(sizes).most_common(1)[0][0] if sizes else None,
    )


def check_site(root: Path | str) -> CheckReport:
    """Open a site, collect every problem and summarise what could be read.

    Raises
    ------
    SiteDataError
        Only when no registered format can open ``root``.
    """
    site = open_site(root)
    scan = site.scan()
    label_names = _label_names(site)
    sizes = [site.image_size(s) for s in scan.samples]
    return CheckReport(
        site=site.site_name,
        root=site.root,
        format_name=site.format_name,
        problems=list(scan.problems),
        summary=summarise(scan.samples, label_names, sizes),
    )


def _label_names(site: SiteFormat) -> list[str]:
    try:
        return list(site.info.label_names)
    except ConfigError:
        return ["0", "1"]
