"""Runs whose process is gone read as ``stale``; stores made before owners were recorded are upgraded."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlmodel import Session

from fedeye.server.liveness import ProcessOwner, derive_status, owner_alive, this_process
from fedeye.server.models import RunRow
from fedeye.server.store import RunStore


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _set(store: RunStore, run_id: str, **values: object) -> None:
    with Session(store._write_engine) as session, session.begin():
        row = session.get(RunRow, run_id)
        assert row is not None
        for key, value in values.items():
            setattr(row, key, value)
        session.add(row)


def test_run_of_a_dead_process_on_this_host_is_stale(tmp_path: Path) -> None:
    store = RunStore(f"sqlite:///{tmp_path / 's.db'}")
    run_id = store.create_run(name="t", strategy="fedavg", config={}, num_rounds=1, num_sites=2)
    assert store.get_run(run_id).run.status == "running"  # this process owns it

    _set(store, run_id, owner_pid=_dead_pid(), owner_started=None)

    assert store.get_run(run_id).run.status == "stale"
    assert [r.status for r in store.list_runs()] == ["stale"]


def test_reused_pid_is_not_the_owner() -> None:
    me = this_process()
    assert owner_alive(me) is True
    if me.started is not None:
        assert owner_alive(ProcessOwner(me.host, me.pid, me.started - 3600)) is False


def test_owner_on_another_host_is_judged_by_heartbeat() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    elsewhere = ProcessOwner(socket.gethostname() + "-elsewhere", 1)
    fresh = derive_status("running", owner=elsewhere, last_sign=now - timedelta(minutes=10), round_timeout=60, now=now)
    old = derive_status("running", owner=elsewhere, last_sign=now - timedelta(minutes=20), round_timeout=60, now=now)
    assert (fresh, old) == ("running", "stale")
    assert (
        derive_status("finished", owner=None, last_sign=now - timedelta(days=9), round_timeout=1, now=now) == "finished"
    )


def test_finished_and_interrupted_runs_keep_their_status(tmp_path: Path) -> None:
    store = RunStore(f"sqlite:///{tmp_path / 's.db'}")
    run_id = store.create_run(name="t", strategy="fedavg", config={}, num_rounds=1, num_sites=2)
    store.finish_run(run_id, status="interrupted", error="interrupted by SIGINT")
    _set(store, run_id, owner_pid=_dead_pid())
    assert store.get_run(run_id).run.status == "interrupted"


def test_store_made_before_owner_columns_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:  # the runs table as FedEye wrote it before owners were recorded
        db.execute(
            "CREATE TABLE runs (id VARCHAR(64) PRIMARY KEY, name VARCHAR(200) NOT NULL, status VARCHAR(16) NOT NULL, "
            "strategy VARCHAR(64) NOT NULL, config JSON NOT NULL, num_rounds INTEGER NOT NULL, "
            "num_sites INTEGER NOT NULL, started_at DATETIME NOT NULL, ended_at DATETIME, error VARCHAR)"
        )
        db.execute(
            "INSERT INTO runs VALUES ('r-old', 'old', 'running', 'fedavg', '{}', 3, 2, ?, NULL, NULL)",
            ((datetime.now(UTC) - timedelta(days=2)).isoformat(" "),),
        )
        db.execute(
            "INSERT INTO runs VALUES ('r-new', 'new', 'running', 'fedavg', '{}', 3, 2, ?, NULL, NULL)",
            (datetime.now(UTC).isoformat(" "),),
        )

    store = RunStore(f"sqlite:///{path}")
    RunStore(f"sqlite:///{path}")  # a second open finds every column there

    assert {r.run_id: r.status for r in store.list_runs()} == {"r-old": "stale", "r-new": "running"}
    store.heartbeat("r-new")
    assert store.get_run("r-new").run.heartbeat_at is not None
