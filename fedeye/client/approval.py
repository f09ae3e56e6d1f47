"""Run approval at a site: the site admin decides what runs on the hospital's data.

A site's policy (``[approval]`` in ``site.toml``, or in a simulated site's
``fedeye-site.toml``) says how runs are admitted:

``open``
    every run is admitted (the default, as before approval existed);
``policy``
    a run is admitted without a person when it is inside what the policy
    allows (strategies, model architectures and modes, DP required, largest
    per-run epsilon, most rounds, FedEye versions, code fingerprints), and
    refused otherwise, with the category ``policy``;
``manual``
    a run waits (the site replies ``awaiting-approval`` and does not touch
    its data) until the admin runs ``fedeye site approve RUN_ID``, or is kept
    out by ``fedeye site deny RUN_ID --reason ...``.

Every request is recorded in the site's state folder (``approvals.sqlite``)
with what an admin needs to decide: the run id, the operator's run name, the
run config summary (strategy, model, rounds, privacy) and the FedEye version
and code fingerprint the site would run it with. An approval binds to the
request's *digest*, a SHA-256 over the exact run config and the code
fingerprint: a changed run, or the same run on changed code, is a new
request and waits again. Only the status and a :class:`DenialCategory`
leave the site; the admin's reason stays in the site's records.

This follows Fed-BioMed's training-plan approval (fedbiomed#1829) and
NVFlare's site-side ``authorization.json``: the site, not the coordinator,
decides.

>>> policy = ApprovalPolicy(mode="policy", strategies=["fedavg"], max_rounds=10)
>>> request = run_request('{"name": "r", "strategy": {"name": "fedprox"}}', run_key="abc")
>>> policy_violations(policy, request)
["strategy 'fedprox' is not in the allowed strategies ['fedavg']"]
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from fedeye.client.audit import DecisionEntry, append_decision
from fedeye.errors import SiteStateError
from fedeye.models.config import TrainMode
from fedeye.protocol import SITE_CATEGORY, SITE_REASON, SITE_STATUS, DenialCategory, SiteStatus

ApprovalMode = Literal["manual", "policy", "open"]
RequestStatus = Literal["pending", "approved", "denied"]
BOOK_FILE = "approvals.sqlite"
_PACKAGE_DIR = Path(__file__).resolve().parents[1]


class ApprovalPolicy(BaseModel):
    """What a site admits without a person (``[approval]`` in the site's config)."""

    model_config = ConfigDict(extra="forbid")

    mode: ApprovalMode = Field(
        default="open",
        description="manual: every run waits for `fedeye site approve`; "
        "policy: runs inside the rules below are admitted, others refused; open: all admitted.",
    )
    strategies: list[str] | None = Field(default=None, description="policy: allowed strategy names (None: any).")
    architectures: list[str] | None = Field(default=None, description="policy: allowed model.arch values.")
    model_modes: list[TrainMode] | None = Field(default=None, description="policy: allowed model.mode.")
    require_dp: bool = Field(default=False, description="policy: only runs with DP-SGD (privacy.enabled).")
    max_epsilon: float | None = Field(
        default=None, gt=0, allow_inf_nan=False, description="policy: the largest per-run epsilon a run may ask for."
    )
    max_rounds: int | None = Field(default=None, ge=1, description="policy: the most rounds a run may have.")
    fedeye_versions: list[str] | None = Field(default=None, description="policy: allowed FedEye versions.")
    code_sha256: list[str] | None = Field(
        default=None,
        description="policy: allowed code fingerprints "
        "(`fedeye site runs` shows a run's; a prefix of 12+ hex digits is enough).",
    )


@dataclass(frozen=True)
class RunRequest:
    """What a run asks of the site, as its admin sees it."""

    run_key: str  #: the FedEye run id (``flower-<id>`` when the coordinator sent none)
    name: str
    strategy: str
    architecture: str
    model_mode: str
    rounds: int
    dp: bool
    epsilon: float | None  #: the per-run epsilon the run asks for (None without DP)
    fedeye_version: str
    code_sha256: str
    digest: str  #: SHA-256 over the exact run config and the code: what an approval binds to


def run_request(run_config_json: str, *, run_key: str) -> RunRequest:
    """The request a run config (the JSON every FedEye message carries) makes of this site."""
    raw: dict[str, Any] = json.loads(run_config_json)

    def section(name: str) -> dict[str, Any]:
        value = raw.get(name)
        return value if isinstance(value, dict) else {}

    privacy, code = section("privacy"), code_fingerprint()
    canonical = json.dumps(raw, sort_keys=True, separators=(",", ":"))
    dp = bool(privacy.get("enabled", False))
    return RunRequest(
        run_key=run_key,
        name=str(raw.get("name", "")),
        strategy=str(section("strategy").get("name", "fedavg")),
        architecture=str(section("model").get("arch", "")),
        model_mode=str(section("model").get("mode", "full")),
        rounds=int(section("training").get("rounds", 0)),
        dp=dp,
        epsilon=float(privacy["epsilon"]) if dp and privacy.get("epsilon") is not None else None,
        fedeye_version=fedeye_version(),
        code_sha256=code,
        digest=hashlib.sha256(f"{canonical}\n{code}".encode()).hexdigest(),
    )


def policy_violations(policy: ApprovalPolicy, request: RunRequest) -> list[str]:
    """Every rule of ``policy`` that ``request`` breaks (empty: admitted)."""
    checks: list[tuple[bool, str]] = [
        (
            _outside(request.strategy, policy.strategies),
            f"strategy {request.strategy!r} is not in the allowed strategies {policy.strategies}",
        ),
        (
            _outside(request.architecture, policy.architectures),
            f"model.arch {request.architecture!r} is not in the allowed architectures {policy.architectures}",
        ),
        (
            _outside(request.model_mode, policy.model_modes),
            f"model.mode {request.model_mode!r} is not in the allowed modes {policy.model_modes}",
        ),
        (policy.require_dp and not request.dp, "the run does not use DP-SGD and the site requires it"),
        (
            policy.max_epsilon is not None and (request.epsilon or float("inf")) > policy.max_epsilon,
            f"the run asks for epsilon {request.epsilon} per run, above the site's {policy.max_epsilon}",
        ),
        (
            policy.max_rounds is not None and request.rounds > policy.max_rounds,
            f"{request.rounds} rounds exceed the site's maximum of {policy.max_rounds}",
        ),
        (
            _outside(request.fedeye_version, policy.fedeye_versions),
            f"FedEye {request.fedeye_version} is not in the allowed versions {policy.fedeye_versions}",
        ),
        (
            policy.code_sha256 is not None and not any(request.code_sha256.startswith(p) for p in policy.code_sha256),
            f"code {request.code_sha256[:12]} is not among the allowed code fingerprints",
        ),
    ]
    return [message for broken, message in checks if broken]


def _outside(value: str, allowed: Sequence[str] | None) -> bool:
    return allowed is not None and value not in allowed


@lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """SHA-256 over every source file of the FedEye package this process runs (the app bundle's code)."""
    digest = hashlib.sha256()
    for path in sorted(_PACKAGE_DIR.rglob("*.py")):
        digest.update(f"{path.relative_to(_PACKAGE_DIR).as_posix()}\n".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def fedeye_version() -> str:
    """The installed FedEye version ("unknown" when run from a source tree without metadata)."""
    try:
        return importlib.metadata.version("fedeye")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


# ------------------------------------------------------------------ at a message's arrival


def admission(
    policy: ApprovalPolicy, *, state_dir: Path, audit_log: Path, run_config_json: str, run_key: str
) -> RequestRecord:
    """The site's decision on the run a message belongs to; a new request is recorded and audited."""
    if policy.mode == "open":  # nothing to decide or record
        request = run_request(run_config_json, run_key=run_key)
        return _first_decision(policy, request)
    record, new = ApprovalBook(state_dir).admit(policy, run_request(run_config_json, run_key=run_key))
    if new:
        append_decision(audit_log, decision_entry(record))
    return record


def refusal(record: RequestRecord) -> dict[str, str] | None:
    """The site record fields of a reply to a run not (yet) approved; None when approved.

    Only the status and the denial category leave the site; the admin's
    reason and the policy's findings stay in its records.
    """
    if record.status == "approved":
        return None
    if record.status == "pending":
        return {
            SITE_STATUS: SiteStatus.AWAITING_APPROVAL.value,
            SITE_REASON: "the site's admin has not approved this run yet",
        }
    category = record.category or DenialCategory.OTHER.value
    return {
        SITE_STATUS: SiteStatus.DENIED.value,
        SITE_CATEGORY: category,
        SITE_REASON: f"the site refused this run ({category})",
    }


def decision_entry(record: RequestRecord) -> DecisionEntry:
    """The audit line of a decision (or of a request left pending)."""
    return DecisionEntry(
        time=_now(),
        event="approval",
        run=record.run_key,
        digest=record.digest,
        decision=record.status,
        by=record.decided_by,
        category=record.category,
        reason=record.reason,
    )


# ------------------------------------------------------------------ the site's book of requests


@dataclass(frozen=True)
class RequestRecord:
    """One request and its decision, as stored at the site."""

    run_key: str
    digest: str
    status: RequestStatus
    decided_by: str  #: "admin", "policy", "open" or "" (pending)
    category: str  #: a DenialCategory when denied, else ""
    reason: str  #: stays at the site
    requested_at: str
    decided_at: str
    request: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.request.get("name", ""))


_SCHEMA = """CREATE TABLE IF NOT EXISTS requests (
    run_key TEXT NOT NULL, digest TEXT NOT NULL, status TEXT NOT NULL, decided_by TEXT NOT NULL,
    category TEXT NOT NULL, reason TEXT NOT NULL, requested_at TEXT NOT NULL, decided_at TEXT NOT NULL,
    request TEXT NOT NULL, PRIMARY KEY (run_key, digest))"""


class ApprovalBook:
    """The site's requests and decisions (SQLite in the site's state folder)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / BOOK_FILE

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with closing(sqlite3.connect(self.path, timeout=30.0)) as db, db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(_SCHEMA)
            yield db

    def admit(self, policy: ApprovalPolicy, request: RunRequest) -> tuple[RequestRecord, bool]:
        """The decision on ``request`` (made now by the policy if it is new) and whether it is new."""
        with self._db() as db:
            found = self._get(db, request.run_key, request.digest)
            if found is not None:
                return found, False
            record = _first_decision(policy, request)
            db.execute("INSERT OR IGNORE INTO requests VALUES (?,?,?,?,?,?,?,?,?)", _row(record))
            return self._get(db, request.run_key, request.digest) or record, True

    def decide(
        self, run_key: str, *, status: Literal["approved", "denied"], category: str = "", reason: str = ""
    ) -> RequestRecord:
        """Record the admin's decision on the newest request of ``run_key``."""
        with self._db() as db:
            latest = self._latest(db, run_key)
            if latest is None:
                raise SiteStateError(f"no request from run {run_key!r} at this site; `fedeye site runs` lists them")
            db.execute(
                "UPDATE requests SET status=?, decided_by='admin', category=?, reason=?, decided_at=? "
                "WHERE run_key=? AND digest=?",
                (status, category, reason, _now(), run_key, latest.digest),
            )
            return self._get(db, run_key, latest.digest) or latest

    def records(self) -> list[RequestRecord]:
        """Every request, newest first."""
        if not self.path.exists():
            return []
        with self._db() as db:
            rows = db.execute("SELECT * FROM requests ORDER BY requested_at DESC").fetchall()
        return [_record(row) for row in rows]

    def _get(self, db: sqlite3.Connection, run_key: str, digest: str) -> RequestRecord | None:
        row = db.execute("SELECT * FROM requests WHERE run_key=? AND digest=?", (run_key, digest)).fetchone()
        return None if row is None else _record(row)

    def _latest(self, db: sqlite3.Connection, run_key: str) -> RequestRecord | None:
        row = db.execute(
            "SELECT * FROM requests WHERE run_key=? ORDER BY requested_at DESC LIMIT 1", (run_key,)
        ).fetchone()
        return None if row is None else _record(row)


def _first_decision(policy: ApprovalPolicy, request: RunRequest) -> RequestRecord:
    now, summary = _now(), asdict(request)
    if policy.mode == "open":
        return RequestRecord(request.run_key, request.digest, "approved", "open", "", "", now, now, summary)
    if policy.mode == "manual":
        return RequestRecord(request.run_key, request.digest, "pending", "", "", "", now, "", summary)
    broken = policy_violations(policy, request)
    if broken:
        return RequestRecord(
            request.run_key,
            request.digest,
            "denied",
            "policy",
            DenialCategory.POLICY.value,
            "; ".join(broken),
            now,
            now,
            summary,
        )
    return RequestRecord(request.run_key, request.digest, "approved", "policy", "", "", now, now, summary)


def _row(record: RequestRecord) -> tuple[str, ...]:
    return (
        record.run_key,
        record.digest,
        record.status,
        record.decided_by,
        record.category,
        record.reason,
        record.requested_at,
        record.decided_at,
        json.dumps(record.request, sort_keys=True),
    )


def _record(row: tuple[Any, ...]) -> RequestRecord:
    run_key, digest, status, decided_by, category, reason, requested_at, decided_at, request = row
    return RequestRecord(
        run_key, digest, status, decided_by, category, reason, requested_at, decided_at, json.loads(request)
    )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")
