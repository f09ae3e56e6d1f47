"""How ``fedeye site check`` (and the commands that check a site first) print a check report.

:func:`fedeye.sites.check.check_site` returns data; only the CLI knows the
terminal. Tables go through :func:`fedeye.cli._common.print_table`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from fedeye.cli._common import Column, console, print_json, print_table
from fedeye.errors import Problem, errors_only
from fedeye.sites.base import SPLITS
from fedeye.sites.check import CheckReport, SiteSummary

PROBLEM_COLUMNS = ("severity", "file", "row", "field", "problem", "what to do")


def print_check_report(report: CheckReport, *, as_json: bool = False, target: Console | None = None) -> None:
    """Print a summary table, every problem with its row and fix, and the verdict (or all of it as JSON)."""
    if as_json:
        print_json(check_report_json(report))
        return
    out = target or console
    if report.summary is not None:
        title = f"Site {report.site} ({report.format_name}: {report.root})"
        columns = [Column("item", style="bold"), Column("value")]
        print_table(columns, summary_rows(report.summary), title=title, show_header=False, target=out)
    if report.problems:
        print_table(PROBLEM_COLUMNS, problem_rows(report.problems), title="Problems", target=out)
    out.print(_verdict(report), highlight=False)


def check_report_json(report: CheckReport) -> dict[str, Any]:
    """The report as JSON-ready data, with ``ok`` and paths as strings."""
    payload = dataclasses.asdict(report)
    payload["root"] = str(report.root)
    payload["ok"] = report.ok
    return payload


def summary_rows(summary: SiteSummary) -> list[list[str]]:
    """``(item, value)`` rows of a site summary."""
    rows = [
        ["images", str(summary.num_samples)],
        ["patients", str(summary.num_patients)],
        ["labels", ", ".join(f"{k}: {v}" for k, v in summary.per_label.items())],
    ]
    for split in SPLITS:
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(summary.per_split_label[split].items()))
        rows.append([f"split {split}", f"{summary.per_split[split]} ({counts or 'empty'})"])
    rows.append(["attributes", ", ".join(f"{k} {v:.0%}" for k, v in summary.attribute_coverage.items())])
    rows.append(["image size (WxH)", _sizes_text(summary)])
    return rows


def problem_rows(problems: Sequence[Problem]) -> list[list[str]]:
    """One row per problem, in :data:`PROBLEM_COLUMNS` order."""
    return [
        [p.severity, Path(p.file).name, "" if p.row is None else str(p.row), p.field or "", p.message, p.fix]
        for p in problems
    ]


def _verdict(report: CheckReport) -> str:
    name = escape(repr(report.site))
    if report.ok:
        warned = f" ({len(report.problems)} warning(s))" if report.problems else ""
        return f"[green]OK[/green]: site {name} passed every check{warned}."
    errors = len(errors_only(report.problems))
    return f"[red]{errors} problem(s)[/red] in site {name}; fix them and re-run the check."


def _sizes_text(summary: SiteSummary) -> str:
    if summary.image_size_common is None:
        return "-"

    def fmt(wh: tuple[int, int] | None) -> str:
        return f"{wh[0]}x{wh[1]}" if wh else "-"

    return f"min {fmt(summary.image_size_min)}, max {fmt(summary.image_size_max)}, most common {fmt(summary.image_size_common)}"
