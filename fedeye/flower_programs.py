"""Shelling out to Flower: ``flower-superlink``, ``flower-supernode`` and ``flwr``.

FedEye does not reimplement Flower's Deployment Engine; it starts Flower's
own programs with the right flags and reads ``flwr ... --format json``.
Everything here is I/O at the edge: processes, sockets, files.

- :func:`run_foreground` runs a Flower server in the foreground, forwards
  SIGTERM/SIGINT to it and returns its exit code.
- :func:`save_connection` writes a SuperLink connection into Flower's own
  ``$FLWR_HOME/config.toml`` (Flower 1.41 keeps connections there, not in
  ``pyproject.toml``), so ``flwr`` commands can name it.
- :func:`flwr_json` runs one ``flwr`` command and returns its JSON answer.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import tomllib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from fedeye._atomic import atomic_write_text
from fedeye.errors import DeploymentError
from fedeye.wait import wait_until

FLWR_TIMEOUT_S = 120.0
TAIL_LINES = 60
NOT_READY_HINT = "is the coordinator running (`fedeye coordinator start`) and is the address right?"


# --- addresses -----------------------------------------------------------------------


@dataclass(frozen=True)
class Address:
    """A ``host:port`` as given on the command line."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def wildcard(self) -> bool:
        """Binds every interface (0.0.0.0 or ::): not an address to connect to."""
        return self.host in ("0.0.0.0", "::", "")


def parse_address(text: str, *, option: str) -> Address:
    """Read ``HOST:PORT`` (IPv6 as ``[::1]:PORT``).

    Raises
    ------
    DeploymentError
        Naming ``option`` and the expected form.
    """
    match = re.fullmatch(r"\[(?P<v6>[0-9A-Fa-f:.]+)\]:(?P<p6>\d+)|(?P<host>[^\s:\[\]]+):(?P<port>\d+)", text.strip())
    port = int(match["p6"] or match["port"]) if match else 0
    if match is None or not 0 < port < 65536:
        raise DeploymentError(
            f"{option} {text!r} is not HOST:PORT; give e.g. {option} 127.0.0.1:9092 (IPv6: [::1]:9092)"
        )
    return Address(host=match["v6"] or match["host"], port=port)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that is free right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def accepts_connections(address: Address, *, timeout_s: float = 2.0) -> bool:
    """Whether a TCP connection to ``address`` opens (a wildcard bind is tried on loopback; TLS is Flower's to check)."""
    host = "127.0.0.1" if address.wildcard else address.host
    try:
        with socket.create_connection((host, address.port), timeout=timeout_s):
            return True
    except OSError:
        return False


def wait_for_port(address: Address, *, proc: subprocess.Popen[bytes], timeout_s: float = 120.0) -> bool:
    """Wait until ``address`` accepts TCP connections; False if ``proc`` exits first or time runs out."""

    def listening() -> bool | None:
        if proc.poll() is not None:
            return False
        return True if accepts_connections(address, timeout_s=1.0) else None

    return bool(wait_until(listening, timeout=timeout_s, interval=0.3))


# --- programs and their environment ---------------------------------------------------


def flower_program(name: str) -> str:
    """The path of a Flower program of this environment (beside this Python), else from PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise DeploymentError(
            f"{name} not found beside {sys.executable} or on PATH; install FedEye with `pip install -e .` (it brings flwr)"
        )
    return found


SUPEREXEC_POLL_INTERVAL_S = "0.2"  # Flower's default is 1.0; the only polling interval Flower 1.41 lets us set


def flower_env() -> dict[str, str]:
    """The environment for Flower programs: this environment's programs first, no runtime dependency installs."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"  # the FAB runs on this environment's packages
    env.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    # SuperExec (started by the SuperNode and by the SuperLink) looks for new tasks every second by default
    env.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", SUPEREXEC_POLL_INTERVAL_S)
    return env


@dataclass(frozen=True)
class Finished:
    """How a foreground Flower program ended."""

    code: int  # its exit code; 128 + N when signal N ended it, as a shell reports it
    tail: str  # the last lines it printed (Flower's own exit code, e.g. "Exit Code: 305", is only printed)


def run_foreground(
    command: Sequence[str], *, after_start: Callable[[subprocess.Popen[bytes]], None] | None = None
) -> Finished:
    """Run ``command`` until it exits, passing its output through and forwarding SIGTERM and SIGINT to it.

    ``after_start`` runs once the process has started (e.g. to register sites
    once the SuperLink listens).
    """
    proc = subprocess.Popen(list(command), env=flower_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    copier = threading.Thread(target=_pass_through, args=(proc, tail), daemon=True)
    copier.start()

    def forward(signum: int, _frame: FrameType | None) -> None:
        if proc.poll() is None:
            proc.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        if after_start is not None:
            after_start(proc)
        code = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if proc.poll() is None:  # after_start raised: do not leave the server behind
            proc.terminate()
            proc.wait()
    copier.join(timeout=5)
    return Finished(code=128 - code if code < 0 else code, tail="".join(tail))


def _pass_through(proc: subprocess.Popen[bytes], tail: deque[str]) -> None:
    """Copy the program's output to ours line by line, keeping the last lines."""
    if proc.stdout is None:  # not started with stdout=PIPE
        return
    for raw in iter(proc.stdout.readline, b""):
        sys.stdout.buffer.write(raw)
        sys.stdout.buffer.flush()
        tail.append(raw.decode(errors="replace"))


# --- Flower's connection file -----------------------------------------------------------


def flwr_home() -> Path:
    """Flower's home folder: ``$FLWR_HOME``, else ``~/.flwr``."""
    from flwr.supercore.utils import get_flwr_home

    return get_flwr_home()


def connection_name(address: Address) -> str:
    """The name FedEye gives the SuperLink connection for ``address`` in Flower's config."""
    return "fedeye-" + re.sub(r"[^A-Za-z0-9]+", "-", str(address)).strip("-")


def save_connection(address: Address, *, root_certificates: Path | None) -> str:
    """Add or update the connection to ``address`` in ``$FLWR_HOME/config.toml``; return its name.

    ``root_certificates`` None means an insecure (plain HTTP) connection.
    Other connections in the file are kept.
    """
    import tomli_w
    from flwr.cli.constant import DEFAULT_FLOWER_CONFIG_TOML

    path = flwr_home() / "config.toml"
    text = path.read_text() if path.is_file() else DEFAULT_FLOWER_CONFIG_TOML
    try:
        config = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise DeploymentError(f"{path}: not valid TOML ({err}); fix or remove the file (Flower recreates it)") from None
    name = connection_name(address)
    entry: dict[str, Any] = {"address": str(address)}
    if root_certificates is None:
        entry["insecure"] = True
    else:
        entry["root-certificates"] = str(root_certificates.resolve())
    config.setdefault("superlink", {})[name] = entry
    _write_atomic(path, tomli_w.dumps(config))
    return name


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)


# --- flwr commands ----------------------------------------------------------------------


def flwr_json(*args: str, cwd: Path | None = None, timeout_s: float = FLWR_TIMEOUT_S) -> dict[str, Any]:
    """Run ``flwr ARGS --format json`` and return its answer.

    Raises
    ------
    DeploymentError
        ``flwr`` failed, timed out, or answered ``"success": false`` (its
        message is passed on).
    """
    command = [flower_program("flwr"), *args, "--format", "json"]
    try:
        done = subprocess.run(
            command, env=flower_env(), cwd=cwd, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired:
        raise DeploymentError(
            f"`flwr {' '.join(args)}` did not answer within {timeout_s:.0f} s; {NOT_READY_HINT}"
        ) from None
    answer = _json_answer(done.stdout)
    if answer is None or not answer.get("success", False):
        message = (answer or {}).get("error-message") or (done.stderr or done.stdout).strip()[-2000:]
        raise DeploymentError(f"`flwr {' '.join(args)}` failed: {message.strip()}")
    return answer


def _json_answer(stdout: str) -> dict[str, Any] | None:
    start = stdout.find("{")
    try:
        answer = json.loads(stdout[start:]) if start >= 0 else None
    except json.JSONDecodeError:
        return None
    return answer if isinstance(answer, dict) else None


def register_node(public_key: Path, *, name: str, connection: str) -> int | None:
    """Register a site's public key with the SuperLink; its Flower node id, or None if it was registered already."""
    try:
        answer = flwr_json("supernode", "register", str(public_key), connection, "--name", name)
    except DeploymentError as err:
        if "already in use" in str(err):
            return None
        raise
    return int(answer["node-id"])
