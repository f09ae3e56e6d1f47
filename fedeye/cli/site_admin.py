"""``fedeye site runs|approve|deny|dashboard``: the site admin decides what runs on the hospital's data."""

from __future__ import annotations

import secrets
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from fedeye.cli._common import JsonOption, console, exits_cleanly, print_table
from fedeye.client.admin import RunRow, run_rows, site_home
from fedeye.client.approval import ApprovalBook, decision_entry
from fedeye.client.audit import append_decision
from fedeye.protocol import DenialCategory

SiteDirOption = Annotated[
    Path,
    typer.Option("--dir", help="The site: the folder `fedeye site init` wrote, or a simulated site's data folder."),
]
RunArg = Annotated[str, typer.Argument(help="The run id, as `fedeye site runs` lists it.")]


@exits_cleanly
def site_runs(site_dir: SiteDirOption, as_json: JsonOption = False) -> None:
    """List the runs that asked for this site's data: requests, decisions, rounds joined, bytes sent."""
    rows = run_rows(site_home(site_dir))
    if not rows and not as_json:
        console.print("no run has asked for this site's data yet")
        return
    print_table(_COLUMNS, [_cells(r) for r in rows], as_json=as_json, json_rows=[asdict(r) for r in rows])


_COLUMNS = ("run", "name", "status", "by", "strategy", "rounds", "dp epsilon", "rounds joined", "KiB sent")


def _cells(row: RunRow) -> list[str]:
    req = row.request
    epsilon = req.get("epsilon")
    return [
        row.run,
        row.name,
        row.status,
        row.decided_by,
        str(req.get("strategy", "")),
        str(req.get("rounds", "")),
        "-" if not req.get("dp") else f"{epsilon}",
        str(row.rounds_joined),
        f"{row.bytes_sent / 1024:.1f}",
    ]


@exits_cleanly
def site_approve(run_id: RunArg, site_dir: SiteDirOption) -> None:
    """Approve a run: the site trains with it from the next round (this exact config and code only)."""
    home = site_home(site_dir)
    record = ApprovalBook(home.state_dir).decide(run_id, status="approved")
    append_decision(home.audit_log, decision_entry(record))
    console.print(f"approved run {run_id} ({record.name or 'unnamed'}); request {record.digest[:12]}")


@exits_cleanly
def site_deny(
    run_id: RunArg,
    site_dir: SiteDirOption,
    reason: Annotated[str, typer.Option("--reason", help="Why (kept at the site; only the category leaves).")],
    category: Annotated[DenialCategory, typer.Option(help="What the coordinator is told.")] = DenialCategory.GOVERNANCE,
) -> None:
    """Deny a run: the site stays out of it; the coordinator learns only the category."""
    home = site_home(site_dir)
    record = ApprovalBook(home.state_dir).decide(run_id, status="denied", category=category.value, reason=reason)
    append_decision(home.audit_log, decision_entry(record))
    console.print(f"denied run {run_id} ({record.name or 'unnamed'}): the coordinator is told '{category.value}'")


@exits_cleanly
def site_dashboard(
    site_dir: SiteDirOption,
    host: Annotated[
        str, typer.Option(help="Address to listen on; non-loopback needs an explicit --token.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port to listen on.")] = 8766,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="FEDEYE_SITE_DASHBOARD_TOKEN",
            show_default=False,
            help="Access token (default: a fresh random one, printed).",
        ),
    ] = None,
) -> None:
    """Serve the site's own page: pending approvals, runs, privacy spent, what left the site."""
    import uvicorn

    from fedeye.client.site_dashboard import create_site_app
    from fedeye.web import check_listen_host

    check_listen_host(host, token_given=bool(token))
    home = site_home(site_dir)
    access = token or secrets.token_urlsafe(24)
    shown = f"[{host}]" if ":" in host else host
    console.print(f"FedEye site page for [bold]{home.folder}[/] (read-only)")
    console.print(f"open [bold]http://{shown}:{port}/?token={access}[/]  (Ctrl+C to stop)", soft_wrap=True)
    uvicorn.run(create_site_app(home, token=access), host=host, port=port, log_level="warning", server_header=False)
