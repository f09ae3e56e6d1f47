"""What a site admin sees with ``fedeye site status``: the site's runtime, its privacy spending, its audit log.

:func:`site_status` reads a site's own files only (site config, state folder,
ledger, audit log) and never talks to the coordinator. ``SITE`` is either a
deployment site's folder from ``fedeye site init`` (``site.toml`` and the
node key) or, in simulation, the site's data folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal

from fedeye.client.admin import SiteHome, site_home
from fedeye.client.audit import AuditEntry, read_audit
from fedeye.client.incidents import INCIDENT_FILE, read_incidents
from fedeye.client.ledger import EntryState, SiteLedger
from fedeye.client.site_config import SiteConfig
from fedeye.client.state import SiteState
from fedeye.errors import SiteDataError
from fedeye.privacy.ledger import LedgerEntry, epsilon_per_run, lifetime_epsilon, runs_of
from fedeye.privacy.policy import Accountant

SiteKind = Literal["deployment", "simulation"]
LATEST_AUDIT = 5


@dataclass(frozen=True)
class RunSpending:
    """One run the site trained with DP, from its ledger."""

    run: str
    rounds: list[int]
    epsilon: float
    delta: float
    first: datetime
    last: datetime
    data_fingerprints: list[str]
    booked: int  # rounds booked but never confirmed (their process died): counted as spent


@dataclass(frozen=True)
class AuditLine:
    """One outgoing message, as the audit log describes it."""

    time: str
    flower_run_id: int
    server_round: int | None
    message_type: str
    status: str
    epsilon: float | None
    payload_bytes: int


@dataclass(frozen=True)
class SiteStatusReport:
    """Everything ``fedeye site status`` shows (``--json`` prints it as is)."""

    site: str
    kind: SiteKind
    data: str | None
    state_dir: str
    runtime: dict[str, str]
    accountant: Accountant
    run_budget: float | None  # the policy's epsilon (per run)
    lifetime_budget: float | None  # the policy's lifetime_epsilon
    lifetime_epsilon: float
    lifetime_delta: float | None
    runs: list[RunSpending]
    audit_log: str | None
    audit: list[AuditLine] = field(default_factory=list)
    audit_runs: list[int] = field(default_factory=list)  # Flower runs this site answered (DP or not)


@dataclass(frozen=True)
class _SiteFiles:
    name: str
    kind: SiteKind
    data: Path | None
    config: SiteConfig
    state_dir: Path
    audit_log: Path | None


def site_status(site: Path, *, latest: int = LATEST_AUDIT) -> SiteStatusReport:
    """The status of the site at ``site`` (a ``site init`` folder, or a simulated site's data folder).

    Raises
    ------
    SiteStateError
        ``site`` is neither, or its site config is invalid.
    """
    files = _locate(site.expanduser().resolve())
    rows = SiteLedger(SiteState(files.state_dir).ledger_path).entries_with_state()
    entries = [entry for entry, _ in rows]
    accountant = _accountant(files.config, entries)
    audit = _audit(files.audit_log)
    return SiteStatusReport(
        site=files.name,
        kind=files.kind,
        data=None if files.data is None else str(files.data),
        state_dir=str(files.state_dir),
        runtime=runtime_state(files.state_dir),
        accountant=accountant,
        run_budget=files.config.privacy.epsilon,
        lifetime_budget=files.config.privacy.lifetime_epsilon,
        lifetime_epsilon=lifetime_epsilon(entries, accountant=accountant),
        lifetime_delta=min((e.delta for e in entries), default=None),
        runs=_runs(rows, accountant=accountant),
        audit_log=None if files.audit_log is None else str(files.audit_log),
        audit=[_audit_line(a) for a in audit[-latest:]] if latest > 0 else [],
        audit_runs=list(dict.fromkeys(int(a["run_id"]) for a in audit)),
    )


def runtime_state(state_dir: Path) -> dict[str, str]:
    """The site's worker and data cache, as words (``site status`` prints them)."""
    from fedeye.client.worker import ping  # socket and frames only: no torch
    from fedeye.sites.cache import list_entries

    state = SiteState(state_dir)
    pid = ping(state.worker_socket, timeout_s=1.0) if state.worker_socket.exists() else None
    entries = list_entries(state.cache_dir) if state.cache_dir.is_dir() else []
    cache = (
        ", ".join(f"{e.split} {e.image_size}px {e.preprocess} ({e.count} images, {_size(e.bytes)})" for e in entries)
        or "not built (the first message builds it; or `fedeye site cache build`)"
    )
    return {
        "worker": f"running (pid {pid})" if pid else "not running",
        "cache": cache,
        "state-dir": "present" if state_dir.is_dir() else "missing",
        "incidents": str(len(read_incidents(state_dir))) + f" (details: {state_dir / INCIDENT_FILE})",
    }


def _size(n: int) -> str:
    """``n`` bytes in MiB, or KiB below one MiB.

    >>> _size(3 * 2**20), _size(5000)
    ('3 MiB', '4.9 KiB')
    """
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def _locate(site: Path) -> _SiteFiles:
    home = site_home(site)
    kind: SiteKind = "deployment" if home.deployed else "simulation"
    data = home.config.data if home.deployed else home.folder
    return _SiteFiles(
        name=_site_name(home),
        kind=kind,
        data=data,
        config=home.config,
        state_dir=home.state_dir,
        audit_log=home.audit_log,
    )


def _site_name(home: SiteHome) -> str:
    if home.deployed:
        return home.folder.name
    from fedeye.sites.base import open_site

    try:
        return open_site(home.folder).info.name
    except SiteDataError:
        return home.folder.name


def _accountant(config: SiteConfig, entries: list[LedgerEntry]) -> Accountant:
    """The site's own accountant, else the one of its latest phase, else RDP."""
    return config.privacy.accountant or (entries[-1].accountant if entries else "rdp")


def _runs(rows: list[tuple[LedgerEntry, EntryState]], *, accountant: Accountant) -> list[RunSpending]:
    entries = [entry for entry, _ in rows]
    epsilons = epsilon_per_run(entries, accountant=accountant)
    spending = []
    for run in runs_of(entries):
        own = [(e, s) for e, s in rows if e.run == run]
        spending.append(
            RunSpending(
                run=run,
                rounds=[e.server_round for e, _ in own],
                epsilon=epsilons[run],
                delta=min(e.delta for e, _ in own),
                first=own[0][0].recorded_at,
                last=own[-1][0].recorded_at,
                data_fingerprints=list(dict.fromkeys(e.data_fingerprint for e, _ in own)),
                booked=sum(s == "booked" for _, s in own),
            )
        )
    return spending


def _audit(path: Path | None) -> list[AuditEntry]:
    return read_audit(path) if path is not None and path.is_file() else []


def _audit_line(entry: AuditEntry) -> AuditLine:
    return AuditLine(
        time=entry["time"],
        flower_run_id=int(entry["run_id"]),
        server_round=entry["server_round"],
        message_type=entry["message_type"],
        status=entry["status"],
        epsilon=entry["epsilon"],
        payload_bytes=int(entry["payload_bytes"]),
    )
