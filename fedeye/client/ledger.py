"""A site's lifetime privacy ledger on disk: ``ledger.sqlite`` in the site's state folder.

One row per DP-SGD phase the site ran (one round of one run): run, round,
noise multiplier, sample rate, steps, delta, accountant, the fingerprint of
the train split, and when it was recorded. The pure composition over rows is
:mod:`fedeye.privacy.ledger`; this module only reads and writes them.

A round is *booked* before it trains and *confirmed* before its reply leaves
the site (:meth:`SiteLedger.book`, :meth:`SiteLedger.confirm`). Booking runs
the budget check and inserts the row in one ``BEGIN IMMEDIATE`` transaction,
so two processes serving the same site (two runs at once, a worker and a
SuperNode) cannot both spend the last of a budget. A booked round whose
training fails is cancelled (nothing left the site); one whose process is
killed stays booked and counts as spent (the safe side). SQLite runs in WAL
mode with a busy timeout, so readers (``fedeye site status``) never block a
training site.

>>> ledger = SiteLedger(Path(tempfile.mkdtemp()) / LEDGER_FILE)  # doctest: +SKIP
>>> ledger.entries()  # doctest: +SKIP
[]
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Literal, TypeVar, cast

from fedeye.client.state import site_state_for
from fedeye.errors import LedgerError
from fedeye.privacy.ledger import LedgerEntry
from fedeye.privacy.policy import Accountant

LEDGER_FILE: Final = "ledger.sqlite"
BUSY_TIMEOUT_S: Final = 30.0
EntryState = Literal["booked", "spent"]
T = TypeVar("T")
Booking = tuple[int, ...]  # the ledger rows one round booked

_SCHEMA = """
CREATE TABLE IF NOT EXISTS dp_phase (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run TEXT NOT NULL,
    server_round INTEGER NOT NULL,
    noise_multiplier REAL NOT NULL,
    sample_rate REAL NOT NULL,
    steps INTEGER NOT NULL,
    delta REAL NOT NULL,
    accountant TEXT NOT NULL,
    data_fingerprint TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'spent'
);
CREATE INDEX IF NOT EXISTS dp_phase_run ON dp_phase (run);
"""
_COLUMNS = "run, server_round, noise_multiplier, sample_rate, steps, delta, accountant, data_fingerprint, recorded_at"


def ledger_path(node_config: Mapping[str, object], site_dir: Path) -> Path:
    """Where this node's ledger lives: ``ledger.sqlite`` in the site's state folder (:mod:`fedeye.client.state`)."""
    return site_state_for(site_dir, node_config).ledger_path


def data_fingerprint(samples: Sequence[tuple[str, str, int]]) -> str:
    """SHA-256 of a split's (image path, patient id, label) triples, sorted.

    Each triple is one line ``image \\t patient \\t label \\n`` (the image path
    as the manifest names it, relative to the site folder), lines sorted, so
    the fingerprint ignores manifest order and where the folder is mounted. It
    changes when an image, patient or label is added, removed or relabelled;
    it does not hash pixels.

    >>> data_fingerprint([("b.png", "p2", 1), ("a.png", "p1", 0)])[:12]
    'be7ad9900d71'
    """
    lines = sorted(f"{image}\t{patient}\t{label}\n" for image, patient, label in samples)
    return hashlib.sha256("".join(lines).encode()).hexdigest()


class SiteLedger:
    """The lifetime ledger of one site: a SQLite file that several processes may write at once."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def entries(self) -> list[LedgerEntry]:
        """Every phase, oldest first (booked and confirmed: both count as spent)."""
        if not self.path.is_file():
            return []
        with self._connect() as conn:
            return _read_entries(conn)

    def entries_with_state(self) -> list[tuple[LedgerEntry, EntryState]]:
        """Every phase with its state (``booked``: its reply never confirmed), oldest first."""
        if not self.path.is_file():
            return []
        with self._connect() as conn:
            return _read_rows(conn)

    def append(self, entry: LedgerEntry) -> int:
        """Record a phase as spent; returns its row id."""
        with self._transaction() as conn:
            return _insert(conn, entry, state="spent")

    def book(
        self, decide: Callable[[list[LedgerEntry]], tuple[T, LedgerEntry | Sequence[LedgerEntry] | None]]
    ) -> tuple[T, Booking | None]:
        """Check and reserve a round in one write transaction.

        ``decide`` gets every entry and returns its decision and the entry (or
        entries: DP-SGD and a one-off release) to book (None: nothing is
        booked, e.g. the round would overspend). No other process can book
        between the read and the insert.

        Returns
        -------
        (decision, the booked row ids or None)
        """
        with self._transaction() as conn:
            decision, booked = decide(_read_entries(conn))
            if booked is None:
                return decision, None
            entries = [booked] if isinstance(booked, LedgerEntry) else list(booked)
            return decision, tuple(_insert(conn, entry, state="booked") for entry in entries)

    def confirm(self, booking: Booking | int) -> None:
        """Mark a booked round spent (call before its reply leaves the site)."""
        with self._transaction() as conn:
            conn.executemany(
                "UPDATE dp_phase SET state = 'spent', recorded_at = ? WHERE id = ?",
                [(_now(), row) for row in _rows(booking)],
            )

    def cancel(self, booking: Booking | int) -> None:
        """Remove a booked round whose training failed (nothing of it left the site)."""
        with self._transaction() as conn:
            conn.executemany(
                "DELETE FROM dp_phase WHERE id = ? AND state = 'booked'", [(row,) for row in _rows(booking)]
            )

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connect(create=True) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.rollback()
                raise
            conn.commit()

    @contextmanager
    def _connect(self, *, create: bool = False) -> Iterator[sqlite3.Connection]:
        try:
            if create:
                self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except (OSError, sqlite3.Error) as err:
            raise LedgerError(
                f"cannot open the site's privacy ledger {self.path}: {err}; make its folder writable"
            ) from err
        try:
            _prepare(conn, self.path, owner=create)
            yield conn
        finally:
            conn.close()


def _prepare(conn: sqlite3.Connection, path: Path, *, owner: bool) -> None:
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")  # a confirmed round is on disk before its reply leaves
        conn.executescript(_SCHEMA)
    except sqlite3.DatabaseError as err:
        raise LedgerError(f"{path} is not a FedEye privacy ledger ({err}); restore it from a backup") from err
    if owner:  # the writer owns the file: only the site's own account may read it
        path.chmod(0o600)


def _rows(booking: Booking | int) -> tuple[int, ...]:
    return (booking,) if isinstance(booking, int) else booking


def _insert(conn: sqlite3.Connection, entry: LedgerEntry, *, state: EntryState) -> int:
    cursor = conn.execute(
        f"INSERT INTO dp_phase ({_COLUMNS}, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            entry.run,
            entry.server_round,
            entry.noise_multiplier,
            entry.sample_rate,
            entry.steps,
            entry.delta,
            entry.accountant,
            entry.data_fingerprint,
            entry.recorded_at.isoformat(),
            state,
        ),
    )
    return int(cursor.lastrowid or 0)


def _read_entries(conn: sqlite3.Connection) -> list[LedgerEntry]:
    return [entry for entry, _ in _read_rows(conn)]


def _read_rows(conn: sqlite3.Connection) -> list[tuple[LedgerEntry, EntryState]]:
    rows = conn.execute(f"SELECT {_COLUMNS}, state FROM dp_phase ORDER BY id").fetchall()
    return [
        (
            LedgerEntry(
                run=str(run),
                server_round=int(rnd),
                noise_multiplier=float(sigma),
                sample_rate=float(q),
                steps=int(steps),
                delta=float(delta),
                accountant=cast(Accountant, str(acct)),
                data_fingerprint=str(fp),
                recorded_at=datetime.fromisoformat(str(at)),
            ),
            cast(EntryState, str(state)),
        )
        for run, rnd, sigma, q, steps, delta, acct, fp, at, state in rows
    ]


def _now() -> str:
    return datetime.now(UTC).isoformat()
