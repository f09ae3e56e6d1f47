"""Is a ``running`` run still running? Its owner process and heartbeat decide.

The store records, for every run, the process that runs it (host name, pid,
the process's start time) and a heartbeat renewed at every phase of every
round. A run recorded ``running`` is shown ``stale`` when:

- its owner ran on this host and that process is gone (or the pid now
  belongs to a process started at another time); or
- its owner cannot be checked from here (another host, or a store written
  before owners were recorded) and its last heartbeat (else its start) is
  older than ``round_timeout + STALE_GRACE``: a live coordinator renews the
  heartbeat at least once per ``round_timeout`` (each phase waits at most
  that long for replies), and :data:`STALE_GRACE` covers aggregation,
  checkpoints and building the model before round 1.

A live owner on this host keeps its run ``running`` however old its heartbeat.
``stale`` is derived when a run is read; it is never stored.

>>> from datetime import UTC, datetime, timedelta
>>> now = datetime(2026, 1, 1, tzinfo=UTC)
>>> derive_status("running", owner=None, last_sign=now - timedelta(hours=3), round_timeout=3600, now=now)
'stale'
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

STALE_GRACE = timedelta(minutes=15)
START_TOLERANCE_S = 2.0  # /proc start times are in clock ticks; allow rounding


@dataclass(frozen=True)
class ProcessOwner:
    """The process that runs a run: where, which pid, and when it started (None where unknown)."""

    host: str
    pid: int
    started: float | None = None

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}"


def this_process() -> ProcessOwner:
    """The calling process as an owner."""
    pid = os.getpid()
    return ProcessOwner(socket.gethostname(), pid, process_start_time(pid))


def process_start_time(pid: int) -> float | None:
    """When process ``pid`` started (epoch seconds), from Linux's ``/proc``; None elsewhere or if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(
            int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime ")
        )
    except (OSError, StopIteration, ValueError):
        return None
    ticks = int(stat.rsplit(")", 1)[1].split()[19])  # field 22, starttime (fields after "comm)" start at 3)
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def owner_alive(owner: ProcessOwner | None) -> bool | None:
    """True or False when ``owner`` ran on this host; None when it cannot be checked from here."""
    if owner is None or owner.host != socket.gethostname():
        return None
    if not pid_alive(owner.pid):
        return False
    now_started = process_start_time(owner.pid)
    if owner.started is not None and now_started is not None:
        return abs(now_started - owner.started) <= START_TOLERANCE_S  # else the pid was reused
    return True


def derive_status(
    status: str, *, owner: ProcessOwner | None, last_sign: datetime, round_timeout: float, now: datetime
) -> str:
    """``status``, or ``stale`` for a ``running`` run whose owner is gone (see the module docstring).

    ``last_sign`` is the run's last heartbeat, else its start time.
    """
    if status != "running":
        return status
    alive = owner_alive(owner)
    if alive is not None:
        return "running" if alive else "stale"
    limit = timedelta(seconds=round_timeout) + STALE_GRACE
    return "stale" if now - last_sign > limit else "running"
