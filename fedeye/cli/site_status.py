"""``fedeye site status SITE [--json]``: a site's runtime, privacy spending and latest audit entries.

Plain text when piped, rich tables on a terminal, JSON with ``--json``.
Everything shown is read from the site's own files
(:func:`fedeye.client.status.site_status`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from fedeye.cli._common import console, exits_cleanly
from fedeye.client.status import RunSpending, SiteStatusReport, site_status


@exits_cleanly
def site_status_command(
    site: Annotated[
        Path, typer.Argument(help="The site folder from `fedeye site init`, or in simulation the site's data folder.")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False,
    latest: Annotated[int, typer.Option("--latest", min=0, help="How many of the latest audit entries to show.")] = 5,
) -> None:
    """Show a site's worker and cache, the runs it joined, its epsilon per run and over its lifetime, its latest audit entries."""
    report = site_status(site, latest=latest)
    if as_json:
        typer.echo(json.dumps(dataclasses.asdict(report), indent=2, default=str))
    elif console.is_terminal:
        _print_rich(report)
    else:
        typer.echo("\n".join(plain_lines(report)))


def _budget(value: float | None) -> str:
    return "none" if value is None else f"{value:g}"


def _over(epsilon: float, budget: float | None) -> str:
    return f"{epsilon:.3f}" if budget is None else f"{epsilon:.3f} of {budget:g}"


def _run_note(run: RunSpending) -> str:
    note = f"rounds {','.join(map(str, run.rounds))}"
    return note + (f" ({run.booked} booked, never confirmed)" if run.booked else "")


def plain_lines(report: SiteStatusReport) -> list[str]:
    """The status as plain text lines (for pipes and logs)."""
    lines = [
        f"site: {report.site} ({report.kind})",
        f"data: {report.data or 'not set'}",
        f"state: {report.state_dir}",
        *(f"{key}: {value}" for key, value in report.runtime.items()),
        f"accountant: {report.accountant}",
        f"budgets: per run {_budget(report.run_budget)}, lifetime {_budget(report.lifetime_budget)}",
        f"lifetime epsilon: {_over(report.lifetime_epsilon, report.lifetime_budget)}"
        + ("" if report.lifetime_delta is None else f" (delta {report.lifetime_delta:.2e})"),
        f"runs with DP ({len(report.runs)}):",
    ]
    lines += [
        f"  {r.run}: epsilon {_over(r.epsilon, report.run_budget)}, delta {r.delta:.2e}, {_run_note(r)}, "
        f"last {r.last:%Y-%m-%d %H:%M:%S}"
        for r in report.runs
    ] or ["  none"]
    lines.append(f"Flower runs answered: {', '.join(map(str, report.audit_runs)) or 'none'}")
    lines.append(f"latest audit entries ({report.audit_log or 'no audit log'}):")
    lines += [
        f"  {a.time} run {a.flower_run_id} round {a.server_round} {a.message_type} {a.status}"
        + ("" if a.epsilon is None else f" epsilon {a.epsilon:.3f}")
        + f" {a.payload_bytes} B"
        for a in report.audit
    ] or ["  none"]
    return lines


def _print_rich(report: SiteStatusReport) -> None:
    console.print(f"[bold]{report.site}[/] ({report.kind}) data {report.data or 'not set'}, state {report.state_dir}")
    console.print("  ".join(f"{key}: [bold]{value}[/]" for key, value in report.runtime.items()))
    console.print(
        f"lifetime epsilon [bold]{_over(report.lifetime_epsilon, report.lifetime_budget)}[/] "
        f"({report.accountant}); per-run budget {_budget(report.run_budget)}"
    )
    runs = Table(title="runs with DP (from the site's ledger)")
    for header in ("run", "epsilon", "delta", "rounds", "last"):
        runs.add_column(header)
    for r in report.runs:
        runs.add_row(
            r.run, _over(r.epsilon, report.run_budget), f"{r.delta:.2e}", _run_note(r), f"{r.last:%Y-%m-%d %H:%M:%S}"
        )
    console.print(runs)
    audit = Table(title=f"latest audit entries ({report.audit_log or 'no audit log'})")
    for header in ("time", "Flower run", "round", "message", "status", "epsilon", "bytes"):
        audit.add_column(header)
    for a in report.audit:
        audit.add_row(
            a.time,
            str(a.flower_run_id),
            str(a.server_round),
            a.message_type,
            a.status,
            "" if a.epsilon is None else f"{a.epsilon:.3f}",
            str(a.payload_bytes),
        )
    console.print(audit)
