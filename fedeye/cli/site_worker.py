"""``fedeye site start`` keeps the site worker (:mod:`fedeye.client.worker`) running beside the SuperNode.

:class:`WorkerSupervisor` starts ``python -m fedeye.client.worker`` with the
site's node config, writes its output to ``<state-dir>/logs/worker.log``,
and starts it again whenever it exits (a message in flight when it died is
answered ``worker-unavailable`` by the ClientApp; the next one finds the new
worker). :meth:`WorkerSupervisor.stop` ends it with the site.

>>> supervisor = WorkerSupervisor(state_dir=Path("/srv/site/state"), node_config={"site-dir": "/data/site"})
>>> supervisor.log_path.name
'worker.log'
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Final

from fedeye.cli._common import console, err_console
from fedeye.client.worker import ping, worker_socket_path
from fedeye.errors import DeploymentError

READY_TIMEOUT_S: Final = 180.0  # importing torch and timm on a busy machine
RESTART_DELAY_S: Final = 1.0
MAX_RESTART_DELAY_S: Final = 30.0
STOP_TIMEOUT_S: Final = 15.0


class WorkerSupervisor:
    """Runs one site's worker process and restarts it when it exits."""

    def __init__(self, *, state_dir: Path, node_config: dict[str, str | bool]) -> None:
        self.state_dir = state_dir
        self.node_config = node_config
        self.restarts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # no new worker once stop() has begun
        self._thread = threading.Thread(target=self._keep_running, name="fedeye-site-worker", daemon=True)

    @property
    def log_path(self) -> Path:
        return self.state_dir / "logs" / "worker.log"

    @property
    def socket_path(self) -> Path:
        return worker_socket_path(self.state_dir)

    def command(self) -> list[str]:
        """``python -m fedeye.client.worker`` for this site."""
        return [
            sys.executable,
            "-m",
            "fedeye.client.worker",
            "--state-dir",
            str(self.state_dir),
            "--node-config-json",
            json.dumps(self.node_config),
        ]

    def start(self, *, ready_timeout: float = READY_TIMEOUT_S) -> int:
        """Start the worker and wait until it answers on its socket; return its pid."""
        self.log_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._proc = self._spawn()
        self._thread.start()
        deadline = time.monotonic() + ready_timeout
        while (pid := ping(self.socket_path)) is None:
            if time.monotonic() > deadline:
                self.stop()
                raise DeploymentError(
                    f"the site worker did not start within {ready_timeout:.0f} s; see {self.log_path}"
                )
            time.sleep(0.2)
        return pid

    def _spawn(self) -> subprocess.Popen[bytes]:
        with self.log_path.open("ab") as log:
            return subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))

    def _keep_running(self) -> None:
        delay = RESTART_DELAY_S
        while (proc := self._proc) is not None and not self._stopping.is_set():
            started = time.monotonic()
            code = proc.wait()
            if self._stopping.is_set():
                return
            delay = RESTART_DELAY_S if time.monotonic() - started > 60 else min(delay * 2, MAX_RESTART_DELAY_S)
            err_console.print(
                f"[yellow]the site worker exited (code {code})[/]; starting it again in {delay:.0f} s (log: {self.log_path})"
            )
            if self._stopping.wait(delay):
                return
            with self._lock:
                if self._stopping.is_set():
                    return
                self._proc = self._spawn()
                self.restarts += 1
            console.print(f"site worker restarted (pid {self._proc.pid})")

    def stop(self) -> None:
        """Stop restarting, then end the worker (SIGTERM, SIGKILL after a grace period)."""
        with self._lock:
            self._stopping.set()
            proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
