"""The site admin's view of their own site: where its records are, and what each run did.

A site is named by the folder its admin knows: in deployment the folder
``fedeye site init`` wrote (``site.toml``, ``node.pub``), in simulation the
site's data folder. :func:`site_home` finds its config, state folder and
audit log from that; :func:`run_rows` joins the approval requests with the
audit log (rounds joined, bytes sent) per run.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from fedeye.client.approval import ApprovalBook, RequestRecord
from fedeye.client.audit import AuditEntry, read_audit
from fedeye.client.site_config import SiteConfig, load_site_config, site_config_for
from fedeye.client.state import SiteState, deployment_state, simulated_state
from fedeye.errors import ConfigError, SiteStateError

INIT_MARKERS = ("site.toml", "node.pub")  #: what `fedeye site init` leaves in a deployment site's folder
DATA_MARKERS = ("manifest.csv", "labels.csv", "site.toml")  #: any of these marks a site data folder


@dataclass(frozen=True)
class SiteHome:
    """Where one site's config, state folder and audit log are."""

    folder: Path
    config: SiteConfig
    state_dir: Path
    audit_log: Path
    deployed: bool  #: a deployment site (init folder), not a simulated one


def site_home(folder: Path) -> SiteHome:
    """The site named by ``folder`` (a deployment site's init folder, or a simulated site's data folder).

    Raises
    ------
    SiteStateError
        ``folder`` is neither.
    """
    folder = folder.expanduser().resolve()
    if all((folder / m).is_file() for m in INIT_MARKERS):
        cfg = load_site_config(folder / "site.toml")
        state = deployment_state(folder / "site.toml", cfg.state_dir)
        return SiteHome(folder, cfg, state.root, cfg.audit_log or state.audit_log, deployed=True)
    if folder.is_dir() and (any((folder / m).is_file() for m in DATA_MARKERS) or any(folder.glob("*.npz"))):
        state = simulated_state(folder)
        return SiteHome(folder, site_config_for(folder, {}), state.root, state.audit_log, deployed=False)
    raise SiteStateError(
        f"{folder} is not a site: give the folder `fedeye site init` wrote (with site.toml and node.pub) "
        "or a site's data folder (with manifest.csv, labels.csv or npz files)"
    )


@dataclass
class RunRow:
    """One run at this site: its request, what it did, what left."""

    run: str
    name: str = ""
    status: str = "open"  #: pending, approved, denied, or open (admitted without a request)
    decided_by: str = ""
    rounds_joined: int = 0
    messages_sent: int = 0
    bytes_sent: int = 0
    last_seen: str = ""
    request: dict[str, object] = field(default_factory=dict)
    reason: str = ""


def run_rows(home: SiteHome) -> list[RunRow]:
    """Every run that asked for this site's data, newest first: requests and audit log joined."""
    rows: dict[str, RunRow] = {}
    for record in reversed(ApprovalBook(home.state_dir).records()):  # oldest first: the newest request wins
        rows[record.run_key] = _request_row(record)
    for run, entries in _audit_by_run(home.audit_log).items():
        row = rows.setdefault(run, RunRow(run=run))
        row.rounds_joined = len({e["server_round"] for e in entries if _trained(e)})
        row.messages_sent, row.bytes_sent = len(entries), sum(e["payload_bytes"] for e in entries)
        row.last_seen = max(e["time"] for e in entries)
    return sorted(rows.values(), key=lambda r: r.last_seen or str(r.request.get("requested_at", "")), reverse=True)


def _request_row(record: RequestRecord) -> RunRow:
    return RunRow(
        run=record.run_key,
        name=record.name,
        status=record.status,
        decided_by=record.decided_by,
        last_seen=record.decided_at or record.requested_at,
        request=record.request,
        reason=record.reason,
    )


def _audit_by_run(path: Path) -> dict[str, list[AuditEntry]]:
    by_run: dict[str, list[AuditEntry]] = defaultdict(list)
    for entry in read_audit(path):
        by_run[entry.get("run") or f"flower-{entry['run_id']}"].append(entry)
    return by_run


def _trained(entry: AuditEntry) -> bool:
    return entry["message_type"] == "train" and bool(entry["arrays"]) and entry["status"] == "ok"


@dataclass(frozen=True)
class SiteLocation:
    """A site as a command names it: its data folder, its state folder and, in deployment, its config."""

    data: Path
    state: SiteState
    config: SiteConfig | None  # the site.toml of `fedeye site init`; None for a site data folder


def locate_site(folder: Path, *, state_dir: Path | None = None) -> SiteLocation:
    """The data and state folders of the site named by ``folder`` (see :func:`site_home`); ``state_dir`` overrides.

    Raises
    ------
    SiteStateError
        ``folder`` is not a site.
    ConfigError
        A deployment site's ``site.toml`` is invalid or names no data folder.
    """
    home = site_home(folder)
    state = SiteState(state_dir) if state_dir else SiteState(home.state_dir)
    if not home.deployed:
        return SiteLocation(home.folder, state, None)
    if home.config.data is None:
        raise ConfigError(
            f"{home.folder / 'site.toml'}: no 'data' folder set; add data = \"/path/to/site\" or run `fedeye site init` again"
        )
    return SiteLocation(home.config.data, state, home.config)
