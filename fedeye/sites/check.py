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

from rich.console import Console
from rich.table import Table

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


def render_report(report: CheckReport, console: Console) -> None:
    """Print a summary table and, if any, every problem with its row and fix."""
    if report.summary is not None:
        console.print(_summary_table(report, report.summary))
    if report.problems:
        console.print(_problem_table(report.problems))
    if report.ok:
        warned = f" ({len(report.problems)} warning(s))" if report.problems else ""
        console.print(f"[green]OK[/green]: site {report.site!r} passed every check{warned}.")
        return
    errors = len(errors_only(report.problems))
    console.print(f"[red]{errors} problem(s)[/red] in site {report.site!r}; fix them and re-run the check.")


def _summary_table(report: CheckReport, summary: SiteSummary) -> Table:
    table = Table(title=f"Site {report.site} ({report.format_name}: {report.root})", show_header=False)
    table.add_column("item", style="bold")
    table.add_column("value")
    table.add_row("images", str(summary.num_samples))
    table.add_row("patients", str(summary.num_patients))
    table.add_row("labels", ", ".join(f"{k}: {v}" for k, v in summary.per_label.items()))
    for split in SPLITS:
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(summary.per_split_label[split].items()))
        table.add_row(f"split {split}", f"{summary.per_split[split]} ({counts or 'empty'})")
    table.add_row("attributes", ", ".join(f"{k} {v:.0%}" for k, v in summary.attribute_coverage.items()))
    table.add_row("image size (WxH)", _sizes_text(summary))
    return table


def _sizes_text(summary: SiteSummary) -> str:
    if summary.image_size_common is None:
        return "-"
    def fmt(wh: tuple[int, int] | None) -> str:
        return f"{wh[0]}x{wh[1]}" if wh else "-"
    return f"min {fmt(summary.image_size_min)}, max {fmt(summary.image_size_max)}, most common {fmt(summary.image_size_common)}"


def _problem_table(problems: Sequence[Problem]) -> Table:
    table = Table(title="Problems", show_lines=False)
    for column in ("severity", "file", "row", "field", "problem", "what to do"):
        table.add_column(column, overflow="fold")
    for p in problems:
        table.add_row(p.severity, Path(p.file).name, "" if p.row is None else str(p.row), p.field or "", p.message, p.fix)
    return table
