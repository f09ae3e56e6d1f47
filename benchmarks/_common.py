"""Helpers shared by the benchmark scripts: event timing, process-tree memory, reporting.

Nothing here is part of FedEye; the scripts in this folder import it as a
sibling module (``python benchmarks/overhead.py`` puts this folder on
``sys.path``).
"""

from __future__ import annotations

import importlib
import json
import os
import re
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

try:
    import psutil
except ImportError:  # not installed: Ray ships a copy, which importing ray puts on sys.path
    importlib.import_module("ray")
    psutil = importlib.import_module("psutil")

GIB = 1024**3
NOISY_CORES = 0.15  # CPU cores used by other programs above which a timing is flagged
# Command-line fragments of the processes a local Ray cluster starts.
SESSION = re.compile(r"session_\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_\d+_\d+")
RAY_MARKERS = (
    "raylet",
    "gcs_server",
    "ray::",
    "default_worker.py",
    "log_monitor.py",
    "dashboard/agent.py",
    "runtime_env/agent",
)


# ------------------------------------------------------------------ timing


@dataclass(frozen=True)
class Event:
    """One progress event, stamped with ``time.perf_counter()`` on arrival."""

    t: float
    kind: str  # "round" (a round's training was configured) or "report" (one site reply)
    server_round: int
    phase: str


@dataclass
class TimingSink:
    """A :class:`~fedeye.server.recorder.ProgressSink` that timestamps every event.

    The ServerApp thread calls it synchronously, so a ``round`` event marks the
    moment the training messages of a round were configured and a ``report``
    event the moment one reply had been written to the run store.
    """

    events: list[Event] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def round_started(self, server_round: int, phase: str, num_sites: int) -> None:
        self._add("round", server_round, phase)

    def site_reported(self, report: Any) -> None:
        self._add("report", int(report.server_round), str(report.phase))

    def _add(self, kind: str, server_round: int, phase: str) -> None:
        with self._lock:
            self.events.append(Event(time.perf_counter(), kind, server_round, phase))

    def round_start(self, server_round: int) -> float:
        """Time the training messages of ``server_round`` were configured."""
        return min(e.t for e in self.events if e.kind == "round" and e.server_round == server_round)

    def last_report(self, phase: str, server_round: int | None = None) -> float:
        """Time the last reply of ``phase`` (in ``server_round``, if given) was recorded."""
        times = [
            e.t
            for e in self.events
            if e.kind == "report" and e.phase == phase and (server_round is None or e.server_round == server_round)
        ]
        if not times:
            raise RuntimeError(f"no {phase!r} report for round {server_round}: did the run fail?")
        return max(times)

    def round_walls(self, rounds: int) -> list[float]:
        """Wall seconds of each round: start(r) -> start(r + 1); the last ends at its last evaluate reply."""
        starts = [self.round_start(r) for r in range(1, rounds + 1)]
        ends = starts[1:] + [self.last_report("evaluate", rounds)]
        return [end - start for start, end in zip(starts, ends, strict=True)]


# ------------------------------------------------------------------ memory


def _cmdline(proc: Any) -> str:
    try:
        return str(proc.name()) + " " + " ".join(proc.cmdline())
    except psutil.Error:  # the process vanished or is not ours to read
        return ""


def _is_ray(proc: Any) -> bool:
    text = _cmdline(proc)
    return any(marker in text for marker in RAY_MARKERS)


def process_tree(root_pid: int, *, sessions: set[str] | None = None) -> list[Any]:
    """``root_pid``, its descendants, and any process of the Ray sessions they started.

    Ray's daemons name their session (``session_<date>_<pid>``) on their
    command line; a process of one of those sessions that has been re-parented
    away from the tree still counts. Names found are added to ``sessions``.
    Other programs' Ray clusters on the same machine are left out.
    """
    root = psutil.Process(root_pid)
    found = {p.pid: p for p in [root, *root.children(recursive=True)]}
    known = sessions if sessions is not None else set()
    for proc in found.values():
        known.update(SESSION.findall(_cmdline(proc)))
    if known:
        for proc in psutil.process_iter():
            if proc.pid not in found and any(name in _cmdline(proc) for name in known):
                found[proc.pid] = proc
    return list(found.values())


def _label(proc: Any) -> str:
    """A short name: Ray's process title (``ray::ClientAppActor``) or the program and script."""
    try:
        cmd = proc.cmdline()
    except psutil.Error:
        return "?"
    if cmd and cmd[0].startswith("ray::"):
        return str(cmd[0].split()[0])
    names = [Path(c).name for c in cmd[:3] if c and not c.startswith("-")]
    return " ".join(names[:2]) or str(proc.name())


def _rss(proc: Any) -> int:
    try:
        return int(proc.memory_info().rss)
    except psutil.Error:  # exited between listing and reading
        return 0


def _pss(proc: Any) -> int:
    try:
        return int(getattr(proc.memory_full_info(), "pss", 0))
    except psutil.Error:
        return 0


def _cpu_seconds(proc: Any) -> float:
    try:
        t = proc.cpu_times()
    except psutil.Error:
        return 0.0
    return float(t.user + t.system + t.children_user + t.children_system)


def _system_busy() -> float:
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


class TreeMonitor:
    """Samples the process tree in a background thread: summed RSS/PSS and foreign CPU load.

    RSS counts shared pages (libtorch, the Ray object store) once per process
    that maps them, so the RSS sum overstates real use; PSS splits shared pages
    between their users and is the better "what the machine holds" figure.

    *Foreign CPU* is the machine's busy CPU time minus this tree's: work of
    other programs that competed with the measurement. Timings taken while it
    is well above zero are not trustworthy.
    """

    def __init__(self, *, interval: float = 0.5, pss_every: int = 4) -> None:
        self.interval, self.pss_every = interval, pss_every
        self.peak_rss = self.peak_pss = 0
        self.peak_procs = 0
        self.peak_breakdown: list[tuple[str, int]] = []  # (process, RSS bytes) at the peak RSS sample
        self.samples = 0
        self.foreign: list[tuple[float, float]] = []  # (perf_counter, cumulative foreign CPU s)
        self.sessions: set[str] = set()  # Ray sessions started by the tree
        self.ray_pids: dict[int, float] = {}  # Ray processes seen in the tree: pid -> create time
        self._cpu: dict[int, float] = {}  # CPU seconds of each tree process at the last sample
        self._busy = 0.0  # machine busy CPU seconds at the last sample
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tree-monitor", daemon=True)

    def __enter__(self) -> Self:
        self._cpu = {p.pid: _cpu_seconds(p) for p in process_tree(os.getpid(), sessions=self.sessions)}
        self._busy = _system_busy()
        self.foreign.append((time.perf_counter(), 0.0))
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        procs = process_tree(os.getpid(), sessions=self.sessions)
        self._note_ray(procs)
        rss = {p.pid: _rss(p) for p in procs}
        if sum(rss.values()) > self.peak_rss:
            self.peak_rss = sum(rss.values())
            self.peak_breakdown = sorted(((f"{_label(p)} [{p.pid}]", rss[p.pid]) for p in procs), key=lambda x: -x[1])
        if self.pss_every and self.samples % self.pss_every == 0:
            self.peak_pss = max(self.peak_pss, sum(_pss(p) for p in procs))
        self.peak_procs = max(self.peak_procs, len(procs))
        self._sample_cpu(procs)
        self.samples += 1

    def _note_ray(self, procs: list[Any]) -> None:
        for proc in procs:
            if proc.pid not in self.ray_pids and proc.pid != os.getpid() and _is_ray(proc):
                try:
                    self.ray_pids[proc.pid] = proc.create_time()
                except psutil.Error:
                    pass

    def ray_alive(self) -> list[str]:
        """Ray processes this tree started that are still running, as ``"pid name"``."""
        alive = []
        for pid, created in self.ray_pids.items():
            try:
                proc = psutil.Process(pid)
                if proc.create_time() == created and proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(f"{pid} {_label(proc)}")
            except psutil.Error:  # gone
                continue
        return alive

    def _sample_cpu(self, procs: list[Any]) -> None:
        now = {p.pid: _cpu_seconds(p) for p in procs}
        ours = sum(max(0.0, cpu - self._cpu.get(pid, 0.0)) for pid, cpu in now.items())
        busy = _system_busy()
        foreign = max(0.0, (busy - self._busy) - ours)
        self._cpu, self._busy = now, busy
        self.foreign.append((time.perf_counter(), self.foreign[-1][1] + foreign))

    def foreign_load(self, start: float, end: float) -> float:
        """Mean CPU cores used by other programs between two ``perf_counter`` times."""

        def at(t: float) -> float:
            before = [c for s, c in self.foreign if s <= t]
            return before[-1] if before else 0.0

        return (at(end) - at(start)) / max(end - start, 1e-9)


def wait_for_quiet(max_seconds: float, *, threshold: float = NOISY_CORES, quiet_for: int = 5) -> float:
    """Wait until other programs use under ``threshold`` cores for ``quiet_for`` s in a row.

    Gives up after ``max_seconds`` (0: do not wait). Returns the load of the
    last second measured, so the caller can say how busy the machine was.
    """
    if max_seconds <= 0:
        return float("nan")
    deadline, calm, load = time.monotonic() + max_seconds, 0, float("nan")
    print(f"waiting up to {max_seconds:.0f} s for a quiet machine ...", flush=True)
    while time.monotonic() < deadline and calm < quiet_for:
        before = _system_busy()
        time.sleep(1.0)
        load = _system_busy() - before
        calm = calm + 1 if load < threshold else 0
    print(
        f"machine load before start: {load:.2f} cores ({'quiet' if calm >= quiet_for else 'gave up waiting'})",
        flush=True,
    )
    return load


# ------------------------------------------------------------------ Ray hygiene


def ensure_ray_stopped(monitor: TreeMonitor, *, wait: float = 15.0) -> list[str]:
    """Shut down Ray if this process still holds it; return the Ray processes ``monitor`` saw
    in this process tree that are still alive after ``wait`` seconds (should be none).

    Only processes of this tree are checked: other programs may run their own Ray.
    """
    import ray

    if ray.is_initialized():
        ray.shutdown()
    monitor.sample()
    deadline = time.monotonic() + wait
    left = monitor.ray_alive()
    while left and time.monotonic() < deadline:
        time.sleep(0.5)
        left = monitor.ray_alive()
    return left


# ------------------------------------------------------------------ reporting


def verdict(value: float, target: float) -> str:
    """PASS when ``value <= target``."""
    return "PASS" if value <= target else "MISS"


def print_table(title: str, header: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """Print a plain fixed-width table (no rich: output is meant to be pasted)."""
    cells = [[str(c) for c in header], *[[_cell(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    print(f"\n{title}")
    for n, row in enumerate(cells):
        print(
            "  " + "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        )
        if n == 0:
            print("  " + "  ".join("-" * w for w in widths))


def _cell(value: object) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def write_json(path: Path | None, results: dict[str, Any]) -> None:
    """Write ``results`` to ``path`` (when given) and say so."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"\nwrote {path}")


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import platform

    import torch

    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
