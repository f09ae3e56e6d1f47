"""Run store: where a FedEye server records runs, rounds, site metrics and files.

The store is a SQL database reached through SQLAlchemy: a SQLite file by
default, or any other SQLAlchemy URL (PostgreSQL is tested). Every public
method opens its own short session, so one :class:`RunStore` may be shared by
threads, and several processes may use the same database: the Flower
``ServerApp`` writes while ``fedeye runs show`` polls. For SQLite the store
turns on WAL journaling, a busy timeout and ``BEGIN IMMEDIATE`` for writes so
that a reader never blocks the writer and two writers queue instead of failing.

Methods return frozen dataclasses, never live ORM rows.

A run records the process that runs it and a heartbeat; a ``running`` run
whose process is gone reads as ``stale`` (:mod:`fedeye.server.liveness`).
Columns added after a table's first release are nullable and added to an
existing database when it is opened, so older stores keep working.

>>> store = RunStore("sqlite://")  # in memory
>>> run_id = store.create_run(name="demo", strategy="fedavg", config={},
...                           num_rounds=3, num_sites=2)
>>> store.record_round(run_id, server_round=1, eval_metrics={"auc": 0.81})
>>> store.get_run(run_id).rounds[0].eval_metrics
{'auc': 0.81}
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import secrets
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, cast, get_args

from sqlalchemy import Engine, event, func, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    IntegrityError,
    NoSuchModuleError,
    OperationalError,
)
from sqlalchemy.pool import StaticPool
from sqlmodel import Session, SQLModel, col, create_engine, select

from fedeye.errors import StoreError
from fedeye.server.liveness import ProcessOwner, derive_status, this_process
from fedeye.server.models import (
    ArtifactRow,
    FlowerRunRow,
    PrivacyLedgerRow,
    RoundRow,
    RunRow,
    SiteMetricRow,
)

RunStatus = Literal["running", "finished", "failed", "stopped", "interrupted", "stale"]  # stale: derived, never stored
FinalStatus = Literal["finished", "failed", "stopped", "interrupted"]
Phase = Literal["train", "evaluate", "test"]
SiteStatus = Literal["ok", "failed", "dropped", "left-budget", "rejected", "missing", "awaiting-approval", "denied"]
PrivacyScope = Literal["site", "federation"]

DB_ENV_VAR = "FEDEYE_DB"
DB_FILE_NAME = "fedeye.db"
SQLITE_BUSY_TIMEOUT_S = 30.0
DEFAULT_ROUND_TIMEOUT_S = 3600.0  # StrategyConfig.round_timeout's default, for runs stored without one
MAX_NODE_ID = 2**64 - 1  # Flower node ids are unsigned 64-bit integers
_URL_HELP = (
    "pass a SQLAlchemy URL such as sqlite:////path/to/fedeye.db or "
    "postgresql+psycopg2://user:password@host:5432/fedeye (or a plain file path) "
    f"with --db or the {DB_ENV_VAR} environment variable"
)


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class RunSummary:
    """One row of ``fedeye runs list``."""

    run_id: str
    name: str
    status: RunStatus
    strategy: str
    num_rounds: int
    num_sites: int
    rounds_done: int  # highest round with recorded results, 0 before the first
    started_at: datetime
    ended_at: datetime | None
    error: str | None
    owner: str | None = None  # "host:pid" of the process that runs it
    heartbeat_at: datetime | None = None  # the owner's last sign of life (every phase of every round)

    def duration(self, *, now: datetime | None = None) -> timedelta:
        """Return how long the run took, or has been running so far."""
        end = self.ended_at or now or datetime.now(UTC)
        return end - self.started_at


@dataclass(frozen=True)
class RoundRecord:
    """Aggregated metrics of one server round."""

    server_round: int
    started_at: datetime
    ended_at: datetime | None  # time of the last result recorded for the round
    train_metrics: dict[str, float | None] | None
    eval_metrics: dict[str, float | None] | None
    num_sites_trained: int | None
    num_sites_evaluated: int | None


@dataclass(frozen=True)
class SiteMetricRecord:
    """What one site reported in one phase of one round."""

    server_round: int
    phase: Phase
    site: str
    node_id: int
    num_examples: int
    metrics: dict[str, float | None]  # None where the site sent NaN or inf
    status: SiteStatus
    reason: str | None = None  # why a site failed, left or was rejected


@dataclass(frozen=True)
class ArtifactRecord:
    """A file produced by a run, with its checksum at recording time."""

    server_round: int | None
    kind: str
    path: str
    sha256: str
    size_bytes: int
    created_at: datetime


@dataclass(frozen=True)
class PrivacyRecord:
    """One row of the privacy ledger: epsilon spent so far after a round."""

    server_round: int
    scope: PrivacyScope
    site: str
    epsilon: float
    delta: float
    budget: float | None
    noise_multiplier: float
    sample_rate: float
    steps: int
    accountant: str
    status: str


@dataclass(frozen=True)
class FlowerRunRecord:
    """A Flower run that carried a FedEye run: its first launch, or a resume."""

    flower_run_id: int
    first_round: int
    started_at: datetime
    note: str | None


@dataclass(frozen=True)
class RunDetail:
    """Everything known about one run, as shown by ``fedeye runs show``."""

    run: RunSummary
    config: dict[str, Any]
    rounds: tuple[RoundRecord, ...]
    site_metrics: tuple[SiteMetricRecord, ...]
    artifacts: tuple[ArtifactRecord, ...]
    privacy: tuple[PrivacyRecord, ...] = ()
    flower_runs: tuple[FlowerRunRecord, ...] = ()
    reliability: dict[str, Any] | None = None  # the final test's reliability bins (None: not recorded)

    def last_evaluated_round(self) -> int | None:
        """Return the highest round with site evaluation results, if any."""
        rounds = [m.server_round for m in self.site_metrics if m.phase == "evaluate"]
        return max(rounds, default=None)

    def final_model(self) -> ArtifactRecord | None:
        """Return the most recent ``final-model`` artifact, if any."""
        finals = [a for a in self.artifacts if a.kind == "final-model"]
        return finals[-1] if finals else None


# ------------------------------------------------------------------------ URL helpers


def resolve_db_url(db: str | None, *, default_dir: Path, create: bool = True) -> str:
    """Choose the store URL: explicit ``db``, else ``$FEDEYE_DB``, else a file.

    Parameters
    ----------
    db
        A SQLAlchemy URL or a plain file path (taken as a SQLite file); empty
        or ``None`` means "not given".
    default_dir
        Folder of the default ``fedeye.db`` SQLite file.
    create
        True for commands that record runs: the parent folder of a SQLite
        file is created. False for commands that only read: a SQLite file
        named by ``db`` or ``$FEDEYE_DB`` must exist (a mistyped path is
        refused, not created); the default store is still created empty.

    Returns
    -------
    str
        A SQLAlchemy URL.

    Raises
    ------
    StoreError
        If ``create`` is False and a given SQLite file does not exist.
    """
    given = db or os.environ.get(DB_ENV_VAR)
    chosen = given or str(default_dir / DB_FILE_NAME)
    url = chosen if "://" in chosen else _sqlite_url(Path(chosen))
    if given and not create:
        _require_sqlite_file(url)
    _make_sqlite_parent(url)
    return url


def _require_sqlite_file(url: str) -> None:
    path = _sqlite_file(url)
    if path is not None and not path.is_file():
        raise StoreError(
            f"no run store at {path} (from --db or {DB_ENV_VAR}); check the path, "
            "or record a run there first with `fedeye simulate`"
        )


def mask_url(url: str) -> str:
    """Return ``url`` with its password replaced by ``***``."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return re.sub(r"(//[^:/@]*):[^@/]*@", r"\1:***@", url)


def _sqlite_url(path: Path) -> str:
    return f"sqlite:///{path.expanduser().resolve()}"


def _sqlite_file(url: str) -> Path | None:
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def _make_sqlite_parent(url: str) -> None:
    path = _sqlite_file(url)
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(
            f"cannot create folder {path.parent} for run store {mask_url(url)}: "
            f"{exc.strerror}; choose a writable location with --db or {DB_ENV_VAR}"
        ) from exc


# ----------------------------------------------------------------------- engine setup


def _open_engines(url: str) -> tuple[Engine, Engine]:
    """Return (read engine, write engine); they differ only for SQLite files."""
    try:
        if _sqlite_file(url) is not None:
            return _sqlite_engine(url, immediate=False), _sqlite_engine(url, immediate=True)
        if make_url(url).get_backend_name() == "sqlite":  # in-memory database
            engine = _sqlite_memory_engine(url)
            return engine, engine
        engine = create_engine(url, pool_pre_ping=True)
        return engine, engine
    except (ArgumentError, NoSuchModuleError, ImportError) as exc:
        raise StoreError(f"cannot open run store {mask_url(url)}: {exc}; {_URL_HELP}") from exc


def _sqlite_engine(url: str, *, immediate: bool) -> Engine:
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False})
    event.listen(engine, "connect", _configure_sqlite_connection)
    event.listen(engine, "begin", _begin_immediate if immediate else _begin_deferred)
    return engine


def _sqlite_memory_engine(url: str) -> Engine:
    engine = create_engine(url, connect_args={"check_same_thread": False}, poolclass=StaticPool)
    event.listen(engine, "connect", _configure_sqlite_connection)
    event.listen(engine, "begin", _begin_deferred)
    return engine


def _configure_sqlite_connection(dbapi_connection: Any, _record: Any) -> None:
    dbapi_connection.isolation_level = None  # transactions come from the "begin" hook
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.close()


def _begin_deferred(conn: Any) -> None:
    conn.exec_driver_sql("BEGIN")


def _begin_immediate(conn: Any) -> None:
    # Take the write lock up front: a deferred transaction that reads and then
    # writes fails at once with SQLITE_BUSY if another process wrote meanwhile.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def _reason(exc: DBAPIError, url: str) -> str:
    """Return the driver's message, first line only, with no password in it."""
    text = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
    password = _password(url)
    if not password:
        return text
    # whole occurrences only: a password "p" must not turn "port" into "***ort"
    return re.sub(rf"(?<![\w]){re.escape(password)}(?![\w])", "***", text)


def _password(url: str) -> str | None:
    try:
        return make_url(url).password
    except ArgumentError:
        return None


# --------------------------------------------------------------------- value helpers


def _now() -> datetime:
    return datetime.now(UTC)


def _as_utc(value: datetime) -> datetime:
    """SQLite drops the time zone; every stored time is UTC."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _maybe_utc(value: datetime | None) -> datetime | None:
    return None if value is None else _as_utc(value)


def _new_run_id(now: datetime) -> str:
    return f"r-{now:%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def _json_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Copy ``config`` as plain JSON; paths and other objects become strings."""
    return cast(dict[str, Any], json.loads(json.dumps(dict(config), default=str)))


def _clean_metrics(metrics: Mapping[str, Any] | None) -> dict[str, float | None] | None:
    """Return metrics as ``name -> float``, with NaN/inf as None (JSON has neither)."""
    if metrics is None:
        return None
    return {str(name): _finite(name, value) for name, value in metrics.items()}


def _finite(name: str, value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"metric {name!r} must be a number, got {value!r}") from exc
    return number if math.isfinite(number) else None


def _check_choice(value: str, allowed: Any, what: str) -> None:
    choices = get_args(allowed)
    if value not in choices:
        raise ValueError(f"{what} must be one of {', '.join(choices)}, got {value!r}")


def _check_node_id(node_id: int) -> None:
    if not 0 <= node_id <= MAX_NODE_ID:
        raise ValueError(f"node_id must be an unsigned 64-bit integer, got {node_id}")


def _sha256_and_size(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


# ---------------------------------------------------------------- row -> record


def _owner(row: RunRow) -> ProcessOwner | None:
    if row.owner_host is None or row.owner_pid is None:
        return None
    return ProcessOwner(row.owner_host, row.owner_pid, row.owner_started)


def _status(row: RunRow) -> RunStatus:
    """The stored status, or ``stale`` for a running run whose process is gone (:mod:`fedeye.server.liveness`)."""
    timeout = (row.config or {}).get("strategy", {}).get("round_timeout", DEFAULT_ROUND_TIMEOUT_S)
    last = _maybe_utc(row.heartbeat_at) or _as_utc(row.started_at)
    status = derive_status(row.status, owner=_owner(row), last_sign=last, round_timeout=float(timeout), now=_now())
    return cast(RunStatus, status)


def _summary(row: RunRow, rounds_done: int | None) -> RunSummary:
    owner = _owner(row)
    return RunSummary(
        run_id=row.id,
        name=row.name,
        status=_status(row),
        strategy=row.strategy,
        num_rounds=row.num_rounds,
        num_sites=row.num_sites,
        rounds_done=rounds_done or 0,
        started_at=_as_utc(row.started_at),
        ended_at=_maybe_utc(row.ended_at),
        error=row.error,
        owner=None if owner is None else str(owner),
        heartbeat_at=_maybe_utc(row.heartbeat_at),
    )


def _round_record(row: RoundRow) -> RoundRecord:
    return RoundRecord(
        server_round=row.server_round,
        started_at=_as_utc(row.started_at),
        ended_at=_maybe_utc(row.ended_at),
        train_metrics=row.train_metrics,
        eval_metrics=row.eval_metrics,
        num_sites_trained=row.num_sites_trained,
        num_sites_evaluated=row.num_sites_evaluated,
    )


def _site_record(row: SiteMetricRow) -> SiteMetricRecord:
    return SiteMetricRecord(
        server_round=row.server_round,
        phase=cast(Phase, row.phase),
        site=row.site,
        node_id=int(row.node_id),
        num_examples=row.num_examples,
        metrics=dict(row.metrics),
        status=cast(SiteStatus, row.status),
        reason=row.reason,
    )


def _artifact_record(row: ArtifactRow) -> ArtifactRecord:
    return ArtifactRecord(
        server_round=row.server_round,
        kind=row.kind,
        path=row.path,
        sha256=row.sha256,
        size_bytes=row.size_bytes,
        created_at=_as_utc(row.created_at),
    )


# ---------------------------------------------------------------------- migrations


def _set_owner(row: RunRow, owner: ProcessOwner, now: datetime) -> None:
    row.owner_host, row.owner_pid, row.owner_started = owner.host, owner.pid, owner.started
    row.heartbeat_at = now


def _add_missing_columns(engine: Engine) -> None:
    """Add the nullable columns newer FedEye versions define to tables an older version created.

    ``create_all`` makes missing tables only. Every column added after a
    table's first release is nullable, so ``ALTER TABLE ... ADD COLUMN``
    upgrades a store in place on SQLite and PostgreSQL alike; older FedEye
    versions ignore the extra columns. Two processes upgrading at once: the
    loser's ``ADD COLUMN`` fails and the column is there anyway.
    """
    for table in SQLModel.metadata.sorted_tables:
        present = {c["name"] for c in inspect(engine).get_columns(table.name)}
        for column in table.columns:
            if column.name in present or not column.nullable:
                continue
            kind = column.type.compile(dialect=engine.dialect)
            try:
                with engine.begin() as conn:
                    conn.exec_driver_sql(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}')
            except DBAPIError:
                if column.name not in {c["name"] for c in inspect(engine).get_columns(table.name)}:
                    raise


# ------------------------------------------------------------------------ the store


class RunStore:
    """Record and read FedEye runs in a SQL database.

    Parameters
    ----------
    url
        SQLAlchemy URL, e.g. ``sqlite:////home/me/.fedeye/fedeye.db`` or
        ``postgresql+psycopg2://user:password@host:5432/fedeye``. Use
        :func:`resolve_db_url` to turn CLI input into one. Tables are created
        on open.

    Raises
    ------
    StoreError
        If the URL is malformed, its driver is missing, or the database cannot
        be reached; the message names the URL with its password masked.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.display_url = mask_url(url)
        _make_sqlite_parent(url)
        self._engine, self._write_engine = _open_engines(url)
        self._create_tables()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close all pooled connections (the store can still be used after)."""
        self._engine.dispose()
        self._write_engine.dispose()

    # ------------------------------------------------------------------ writes

    def create_run(
        self,
        *,
        name: str,
        strategy: str,
        config: Mapping[str, Any],
        num_rounds: int,
        num_sites: int,
    ) -> str:
        """Record a new run with status ``running`` and return its id.

        ``config`` is the full run configuration; it is stored as JSON, with
        values JSON cannot hold (paths, ...) turned into strings.
        """
        now = _now()
        with self._session(write=True) as session:
            run_id = _new_run_id(now)
            while session.get(RunRow, run_id) is not None:
                run_id = _new_run_id(now)
            row = RunRow(
                id=run_id,
                name=name,
                status="running",
                strategy=strategy,
                config=_json_config(config),
                num_rounds=num_rounds,
                num_sites=num_sites,
                started_at=now,
            )
            _set_owner(row, this_process(), now)
            session.add(row)
        return run_id

    def reopen_run(self, run_id: str) -> tuple[RunStatus, str | None]:
        """Set a run back to ``running`` (a resume) owned by this process; return its previous status and error."""
        with self._session(write=True) as session:
            row = self._require_run(session, run_id)
            previous = (_status(row), row.error)
            row.status, row.error, row.ended_at = "running", None, None
            _set_owner(row, this_process(), _now())
            session.add(row)
        return previous

    def claim_run(self, run_id: str) -> None:
        """Record the calling process as the one running ``run_id`` (and renew its heartbeat)."""
        with self._session(write=True) as session:
            row = self._require_run(session, run_id)
            _set_owner(row, this_process(), _now())
            session.add(row)

    def heartbeat(self, run_id: str) -> None:
        """Renew the heartbeat of ``run_id``: its owner is alive (see :mod:`fedeye.server.liveness`)."""
        with self._session(write=True) as session:
            row = self._require_run(session, run_id)
            row.heartbeat_at = _now()
            session.add(row)

    def link_flower_run(self, run_id: str, *, flower_run_id: int, first_round: int, note: str | None = None) -> None:
        """Record that Flower run ``flower_run_id`` carries ``run_id`` from ``first_round`` on."""
        _check_node_id(flower_run_id)  # Flower run ids are unsigned 64-bit integers too
        row = FlowerRunRow(
            run_id=run_id,
            flower_run_id=str(flower_run_id),
            first_round=first_round,
            started_at=_now(),
            note=note,
        )
        with self._session(write=True) as session:
            self._require_run(session, run_id)
            session.add(row)

    def run_for_flower_run(self, flower_run_id: int) -> str | None:
        """The FedEye run a Flower run carries, if it has recorded one yet."""
        query = select(FlowerRunRow.run_id).where(FlowerRunRow.flower_run_id == str(flower_run_id))
        with self._session() as session:
            return session.exec(query).first()

    def finish_run(self, run_id: str, *, status: FinalStatus, error: str | None = None) -> None:
        """Mark a run as ended with ``status``; ``error`` says why it failed."""
        _check_choice(status, FinalStatus, "status")
        with self._session(write=True) as session:
            row = self._require_run(session, run_id)
            row.status, row.error, row.ended_at = status, error, _now()
            session.add(row)

    def record_round(
        self,
        run_id: str,
        *,
        server_round: int,
        train_metrics: Mapping[str, float] | None = None,
        eval_metrics: Mapping[str, float] | None = None,
        num_sites_trained: int | None = None,
        num_sites_evaluated: int | None = None,
    ) -> None:
        """Create or update the row of one round (upsert).

        Training and evaluation results of a round arrive at different times:
        each call sets only the values it is given and keeps the others. The
        first call sets ``started_at``; every call moves ``ended_at`` to now.
        NaN or infinite metric values are stored as None.
        """
        update = {
            "train_metrics": _clean_metrics(train_metrics),
            "eval_metrics": _clean_metrics(eval_metrics),
            "num_sites_trained": num_sites_trained,
            "num_sites_evaluated": num_sites_evaluated,
        }
        given = {key: value for key, value in update.items() if value is not None}
        try:
            self._upsert_round(run_id, server_round, given)
        except IntegrityError:  # another process inserted the same round first
            self._upsert_round(run_id, server_round, given)

    def record_site_metrics(
        self,
        run_id: str,
        *,
        server_round: int,
        phase: Phase,
        site: str,
        node_id: int,
        num_examples: int,
        metrics: Mapping[str, float],
        status: SiteStatus = "ok",
        reason: str | None = None,
    ) -> None:
        """Record what one site reported in one phase of a round.

        ``node_id`` is Flower's node id, an unsigned 64-bit integer. NaN or
        infinite metric values (e.g. AUC on a one-class site) become None.
        """
        _check_choice(phase, Phase, "phase")
        _check_choice(status, SiteStatus, "status")
        _check_node_id(node_id)
        row = SiteMetricRow(
            run_id=run_id,
            server_round=server_round,
            phase=phase,
            site=site,
            node_id=str(node_id),
            num_examples=num_examples,
            metrics=_clean_metrics(metrics) or {},
            status=status,
            reason=reason,
        )
        with self._session(write=True) as session:
            self._require_run(session, run_id)
            session.add(row)

    def record_artifact(self, run_id: str, *, server_round: int | None, kind: str, path: Path | str) -> ArtifactRecord:
        """Record a file the run wrote, with its SHA-256 and size, and return it."""
        file = Path(path).expanduser().resolve()
        if not file.is_file():
            raise StoreError(
                f"cannot record {kind} artifact of run {run_id}: {file} is not a file; "
                "write the file before recording it"
            )
        sha256, size = _sha256_and_size(file)
        row = ArtifactRow(
            run_id=run_id,
            server_round=server_round,
            kind=kind,
            path=str(file),
            sha256=sha256,
            size_bytes=size,
            created_at=_now(),
        )
        with self._session(write=True) as session:
            self._require_run(session, run_id)
            session.add(row)
            session.flush()
            return _artifact_record(row)

    def record_reliability(self, run_id: str, reliability: Mapping[str, Any]) -> None:
        """Keep the final test's reliability bins with the run (JSON; a later final evaluation replaces them)."""
        with self._session(write=True) as session:
            row = self._require_run(session, run_id)
            row.reliability = _json_config(reliability)
            session.add(row)

    def record_privacy(self, run_id: str, entry: PrivacyRecord) -> None:
        """Append a privacy-ledger row (epsilon spent so far) for a site or the federation."""
        row = PrivacyLedgerRow(run_id=run_id, **dataclasses.asdict(entry))
        with self._session(write=True) as session:
            self._require_run(session, run_id)
            session.add(row)

    # ------------------------------------------------------------------- reads

    def privacy_ledger(self, run_id: str) -> list[PrivacyRecord]:
        """Return a run's privacy ledger by round and site."""
        with self._session() as session:
            return self._privacy_rows(session, self._resolve_run_id(session, run_id))

    def list_runs(self) -> list[RunSummary]:
        """Return every run, newest first."""
        done = (
            select(RoundRow.run_id, func.max(RoundRow.server_round).label("done"))
            .group_by(col(RoundRow.run_id))
            .subquery()
        )
        query = (
            select(RunRow, done.c.done)
            .outerjoin(done, done.c.run_id == RunRow.id)
            .order_by(col(RunRow.started_at).desc(), col(RunRow.id).desc())
        )
        with self._session() as session:
            return [_summary(row, rounds_done) for row, rounds_done in session.exec(query)]

    def get_run(self, run_id: str) -> RunDetail:
        """Return a run with its rounds, site metrics and artifacts.

        ``run_id`` may be any unambiguous prefix of a run id.
        """
        with self._session() as session:
            full_id = self._resolve_run_id(session, run_id)
            row = self._require_run(session, full_id)
            rounds = self._rounds(session, full_id)
            return RunDetail(
                run=_summary(row, max((r.server_round for r in rounds), default=0)),
                config=dict(row.config),
                rounds=rounds,
                site_metrics=tuple(self._site_rows(session, full_id, None)),
                artifacts=tuple(self._artifact_rows(session, full_id, None)),
                privacy=tuple(self._privacy_rows(session, full_id)),
                flower_runs=tuple(self._flower_rows(session, full_id)),
                reliability=None if row.reliability is None else dict(row.reliability),
            )

    def site_metrics(self, run_id: str, *, phase: Phase | None = None) -> list[SiteMetricRecord]:
        """Return a run's site metrics by round, phase and site; ``phase`` filters."""
        with self._session() as session:
            full_id = self._resolve_run_id(session, run_id)
            return self._site_rows(session, full_id, phase)

    def latest_checkpoint(self, run_id: str) -> ArtifactRecord | None:
        """Return the checkpoint of the highest round of a run, or None."""
        with self._session() as session:
            full_id = self._resolve_run_id(session, run_id)
            checkpoints = self._artifact_rows(session, full_id, "checkpoint")
        return checkpoints[-1] if checkpoints else None

    # ---------------------------------------------------------------- internals

    def _create_tables(self) -> None:
        try:
            SQLModel.metadata.create_all(self._write_engine)
            _add_missing_columns(self._write_engine)
        except DBAPIError as exc:
            self.close()
            raise StoreError(
                f"cannot open run store {self.display_url}: {_reason(exc, self.url)}; "
                "check that the database server is running and that the user, "
                f"password, host, port and database name are right, or {_URL_HELP}"
            ) from exc

    @contextmanager
    def _session(self, *, write: bool = False) -> Iterator[Session]:
        engine = self._write_engine if write else self._engine
        try:
            with Session(engine, expire_on_commit=False) as session, session.begin():
                yield session
        except OperationalError as exc:
            raise StoreError(
                f"run store {self.display_url} failed: {_reason(exc, self.url)}; "
                "check that the database is reachable and retry"
            ) from exc

    def _require_run(self, session: Session, run_id: str) -> RunRow:
        row = session.get(RunRow, run_id)
        if row is None:
            raise self._no_run(run_id)
        return row

    def _resolve_run_id(self, session: Session, run_id: str) -> str:
        if run_id and session.get(RunRow, run_id) is not None:
            return run_id
        query = select(RunRow.id).where(col(RunRow.id).startswith(run_id, autoescape=True))
        matches = list(session.exec(query.limit(5))) if run_id else []
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise self._no_run(run_id)
        raise StoreError(
            f"run id {run_id!r} is ambiguous in {self.display_url}: it starts "
            f"{', '.join(matches)}...; give more characters of the id"
        )

    def _no_run(self, run_id: str) -> StoreError:
        return StoreError(f"no run {run_id!r} in {self.display_url}; list runs with `fedeye runs list`")

    def _upsert_round(self, run_id: str, server_round: int, given: dict[str, Any]) -> None:
        now = _now()
        with self._session(write=True) as session:
            self._require_run(session, run_id)
            query = select(RoundRow).where(RoundRow.run_id == run_id, RoundRow.server_round == server_round)
            row = session.exec(query).first()
            if row is None:
                row = RoundRow(run_id=run_id, server_round=server_round, started_at=now)
            for key, value in given.items():
                setattr(row, key, value)
            row.ended_at = now
            session.add(row)

    @staticmethod
    def _rounds(session: Session, run_id: str) -> tuple[RoundRecord, ...]:
        query = select(RoundRow).where(RoundRow.run_id == run_id).order_by(col(RoundRow.server_round))
        return tuple(_round_record(row) for row in session.exec(query))

    @staticmethod
    def _site_rows(session: Session, run_id: str, phase: Phase | None) -> list[SiteMetricRecord]:
        query = select(SiteMetricRow).where(SiteMetricRow.run_id == run_id)
        if phase is not None:
            query = query.where(SiteMetricRow.phase == phase)
        query = query.order_by(
            col(SiteMetricRow.server_round),
            col(SiteMetricRow.phase),
            col(SiteMetricRow.site),
            col(SiteMetricRow.id),
        )
        return [_site_record(row) for row in session.exec(query)]

    @staticmethod
    def _privacy_rows(session: Session, run_id: str) -> list[PrivacyRecord]:
        query = (
            select(PrivacyLedgerRow)
            .where(PrivacyLedgerRow.run_id == run_id)
            .order_by(col(PrivacyLedgerRow.server_round), col(PrivacyLedgerRow.scope), col(PrivacyLedgerRow.site))
        )
        return [
            PrivacyRecord(**{f.name: getattr(row, f.name) for f in dataclasses.fields(PrivacyRecord)})
            for row in session.exec(query)
        ]

    @staticmethod
    def _flower_rows(session: Session, run_id: str) -> list[FlowerRunRecord]:
        query = select(FlowerRunRow).where(FlowerRunRow.run_id == run_id).order_by(col(FlowerRunRow.id))
        return [
            FlowerRunRecord(int(row.flower_run_id), row.first_round, _as_utc(row.started_at), row.note)
            for row in session.exec(query)
        ]

    @staticmethod
    def _artifact_rows(session: Session, run_id: str, kind: str | None) -> list[ArtifactRecord]:
        query = select(ArtifactRow).where(ArtifactRow.run_id == run_id)
        if kind is not None:
            query = query.where(ArtifactRow.kind == kind)
        query = query.order_by(
            col(ArtifactRow.server_round).nulls_first(),
            col(ArtifactRow.created_at),
            col(ArtifactRow.id),
        )
        return [_artifact_record(row) for row in session.exec(query)]
