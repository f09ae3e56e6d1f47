"""Fixtures for the server tests: a throwaway PostgreSQL server and store URLs, and site replies.

``postgres_server`` starts a real PostgreSQL (``initdb`` + ``pg_ctl``) in a
temporary folder, listening only on 127.0.0.1 on a free port, and stops it at
the end of the session whatever happens. PostgreSQL refuses to run as root, so
when the tests run as root the server runs as the ``postgres`` OS user.
Install the binaries with ``.ci/install-postgres.sh``; the PostgreSQL tests
skip only when they are missing.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg2  # type: ignore[import-untyped]
import pytest
from flwr.app import ConfigRecord, Message, MessageType, Metadata, MetricRecord, RecordDict
from flwr.app.message.message import make_message

PG_USER = "fedeye"
PG_PASSWORD = "s3cret-pw"
PG_OS_USER = "postgres"
PG_START_TIMEOUT_S = 60


def reply_metadata(node_id: int) -> Metadata:
    """A reply's metadata as a SuperNode would send it to the coordinator (node 0)."""
    return Metadata(
        run_id=1,
        message_id="",
        src_node_id=node_id,
        dst_node_id=0,
        reply_to_message_id="m",
        group_id="",
        created_at=time.time(),
        ttl=60.0,
        message_type=MessageType.TRAIN,
    )


def site_reply(node_id: int, site: str, **metrics: float) -> Message:
    """An ok reply of site ``site`` with ``metrics``."""
    content = RecordDict({"metrics": MetricRecord(dict(metrics)), "site": ConfigRecord({"name": site})})
    return make_message(reply_metadata(node_id), content=content)


@dataclass(frozen=True)
class PostgresServer:
    """A running test server: where it listens and how to log in."""

    port: int
    user: str
    password: str

    def url(self, database: str) -> str:
        """Return the SQLAlchemy URL of ``database`` on this server."""
        return f"postgresql+psycopg2://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """Create an empty database with a fresh name and return its name."""
        name = f"fedeye_test_{secrets.token_hex(4)}"
        conn = psycopg2.connect(
            host="127.0.0.1",
            port=self.port,
            user=self.user,
            password=self.password,
            dbname="postgres",
        )
        try:
            conn.autocommit = True
            with conn.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            conn.close()
        return name


def find_pg_bin() -> Path | None:
    """Return the newest ``/usr/lib/postgresql/<version>/bin`` with initdb and pg_ctl."""
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    dirs = [Path(p).parent for p in found if (Path(p).parent / "pg_ctl").exists()]
    if dirs:
        return max(dirs, key=lambda d: _version_key(d.parent.name))
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).resolve().parent
    return None


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_server_user(command: list[str]) -> list[str]:
    """Prefix ``command`` so that it does not run as root (PostgreSQL refuses)."""
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", PG_OS_USER, "--", *command]


def _run(command: list[str]) -> None:
    result = subprocess.run(
        _as_server_user(command),
        capture_output=True,
        text=True,
        timeout=PG_START_TIMEOUT_S,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")


def _make_workdir() -> Path:
    # Not under pytest's tmp_path: its parents are 0700 root, closed to "postgres".
    workdir = Path(tempfile.mkdtemp(prefix="fedeye-pg-"))
    if os.geteuid() == 0:
        user = pwd.getpwnam(PG_OS_USER)
        os.chown(workdir, user.pw_uid, user.pw_gid)
    return workdir


def _init_cluster(pg_bin: Path, workdir: Path) -> Path:
    data = workdir / "data"
    pwfile = workdir / "pwfile"
    pwfile.write_text(PG_PASSWORD + "\n")
    if os.geteuid() == 0:
        shutil.chown(pwfile, PG_OS_USER)
    _run(
        [
            str(pg_bin / "initdb"),
            "-D",
            str(data),
            "-U",
            PG_USER,
            f"--pwfile={pwfile}",
            "--auth=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        ]
    )
    return data


def _start(pg_bin: Path, workdir: Path, data: Path, port: int) -> None:
    options = (
        f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={workdir} "
        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
    )
    _run(
        [
            str(pg_bin / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(workdir / "server.log"),
            "-o",
            options,
            "-w",
            "-t",
            str(PG_START_TIMEOUT_S),
            "start",
        ]
    )


def _stop(pg_bin: Path, data: Path) -> None:
    """Stop the server; fall back to signalling the postmaster PID."""
    pid_file = data / "postmaster.pid"
    if not pid_file.exists():
        return
    try:
        _run([str(pg_bin / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"])
    except (RuntimeError, subprocess.TimeoutExpired):
        if pid_file.exists():
            pid = int(pid_file.read_text().splitlines()[0])
            os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """Start a PostgreSQL server for the test session and stop it afterwards."""
    pg_bin = find_pg_bin()
    if pg_bin is None:
        pytest.skip(
            "PostgreSQL server binaries (initdb, pg_ctl) not found under "
            "/usr/lib/postgresql/*/bin; install them with .ci/install-postgres.sh"
        )
    workdir = _make_workdir()
    data = workdir / "data"
    try:
        data = _init_cluster(pg_bin, workdir)
        port = _free_port()
        _start(pg_bin, workdir, data, port)
        yield PostgresServer(port=port, user=PG_USER, password=PG_PASSWORD)
    finally:
        _stop(pg_bin, data)
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """URL of an empty store: a SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store' / 'fedeye.db'}"
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server.url(server.create_database())
