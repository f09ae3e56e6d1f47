"""The long-lived FedEye site worker: torch, the model and the site's data stay warm.

Flower 1.41 runs every message of a deployed site in a fresh
``flwr-clientapp`` process (SuperExec's subprocess executor starts one per
task; ``flwr/supernode/runtime/run_clientapp.py`` handles one message, then
exits). Importing torch and timm, building the model and decoding the site's
images then happen on every message: about 5 s of a 7.5 s train message for
0.3-0.5 s of compute. ``fedeye site start`` therefore starts this worker
beside the SuperNode and restarts it if it dies. The ClientApp Flower starts
per message (:mod:`fedeye.client.entry`, which does not import torch) sends
the message and its ``Context`` here over a Unix socket in the site's state
folder and hands the worker's reply and updated ``Context.state`` back to
Flower, so the SuperNode still owns ``Context.state`` exactly as before.

Why not something Flower offers
    * ``flower-supernode --isolation process`` only moves SuperExec out of
      the SuperNode (one runs ``flower-superexec`` yourself); SuperExec still
      starts one ``flwr-clientapp`` process per task.
    * SuperExec's warm executor pools (``warm_executor_*.py``) exist only in
      the Kubernetes executor, only for the task types ``flwr-agentapp``,
      ``flwr-model`` and ``flwr-connector`` (not ClientApps), and each warm
      Pod still runs one task: they hide container start-up, not the Python
      process's imports and caches.
    * A persistent ClientApp is an open request (flwrlabs/flower#3670);
      Flower's docs call ClientApp objects stateless.
    Hence a FedEye process of our own, behind Flower's supported ClientApp
    interface, with nothing of Flower patched.

Trust
    The worker treats what arrives on its socket as untrusted: the socket is
    0600 in a 0700 folder and a peer of another uid is refused (SO_PEERCRED);
    every frame is bounded (``--max-frame-mb``) and every read has a timeout;
    the frames must parse as Flower objects; one message runs at a time. The
    ClientApp process runs the code of the coordinator's FAB, so the worker
    ignores the node config the request carries and uses the one
    ``fedeye site start`` gave it, and runs the site's own installed
    :data:`fedeye.client.app.app` (with its audit mod: every reply is logged
    at the site before it leaves the worker).

Device
    The handlers pick the device with :func:`fedeye.models.select_device` and
    train under :func:`fedeye.models.device.autocast_context`, so with CUDA the
    worker keeps the model on the GPU between messages and trains in mixed
    precision; without CUDA (as on the machine this was measured on) it runs
    on the CPU.

>>> settings = WorkerSettings(state_dir=Path("/srv/site/state"), node_config={"site-dir": "/data/site"})
>>> worker_socket_path(settings.state_dir).name
'worker.sock'
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import socketserver
import stat
import struct
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Final

from fedeye.client import frames
from fedeye.client.state import SiteState
from fedeye.errors import DeploymentError
from fedeye.protocol import FailureCategory

if TYPE_CHECKING:
    from flwr.app import Context, Message
    from flwr.app.user_config import UserConfigValue
    from flwr.clientapp import ClientApp

log = logging.getLogger("fedeye.worker")

SOCKET_NAME: Final = "worker.sock"
DEFAULT_READ_TIMEOUT_S: Final = 60.0
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def worker_socket_path(state_dir: Path) -> Path:
    """Where a site's worker listens: ``<state-dir>/worker.sock``."""
    return SiteState(state_dir).worker_socket


@dataclass(frozen=True)
class WorkerSettings:
    """How one site's worker runs."""

    state_dir: Path  #: the site's state folder (0700); the socket goes in it
    node_config: dict[str, UserConfigValue] = field(
        default_factory=dict
    )  #: the SuperNode's node config, from `site start`
    max_frame_bytes: int = frames.DEFAULT_MAX_FRAME_BYTES  #: longest frame accepted
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S  #: timeout of every read from a peer

    @property
    def socket_path(self) -> Path:
        return worker_socket_path(self.state_dir)


class SiteWorker(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """Serves FedEye ClientApp messages on a Unix socket, one message at a time.

    Parameters
    ----------
    settings : WorkerSettings
        Socket folder, node config and limits.
    app : flwr.clientapp.ClientApp
        The ClientApp to run (the site's :data:`fedeye.client.app.app`).
    """

    daemon_threads = True
    allow_reuse_address = False

    def __init__(self, settings: WorkerSettings, app: ClientApp) -> None:
        self.settings = settings
        self.app = app
        self.lock = threading.Lock()
        path = settings.socket_path
        _prepare_socket_folder(settings.state_dir, path)
        super().__init__(str(path), _Connection)
        path.chmod(0o600)

    def verify_request(self, request: socket.socket | tuple[bytes, socket.socket], client_address: object) -> bool:
        """Refuse peers of another user (Linux SO_PEERCRED; elsewhere the 0600 socket alone guards)."""
        if not isinstance(request, socket.socket) or not hasattr(socket, "SO_PEERCRED"):
            return True
        pid, uid, _ = _PEERCRED.unpack(request.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
        if uid != os.getuid():
            log.warning(
                "refused a connection from pid %d of uid %d (this worker serves uid %d only)", pid, uid, os.getuid()
            )
            return False
        return True

    def server_close(self) -> None:
        super().server_close()
        self.settings.socket_path.unlink(missing_ok=True)

    def run_message(self, message: Message, context: Context) -> frames.WorkerReply:
        """Run the ClientApp on one message with the site's own node config."""
        if self.settings.node_config and dict(context.node_config) != self.settings.node_config:
            log.warning("the request's node config differs from this site's; using the site's")
        context.node_config = dict(self.settings.node_config) or context.node_config
        started = time.perf_counter()
        reply = self.app(message, context)
        return frames.WorkerReply(reply, context.state, time.perf_counter() - started)


def _prepare_socket_folder(state_dir: Path, path: Path) -> None:
    """Make ``state_dir`` 0700 and ours; remove a stale socket, refuse a live one."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = state_dir.stat()
    if info.st_uid != os.getuid():
        raise DeploymentError(
            f"{state_dir}: owned by uid {info.st_uid}, not by this user ({os.getuid()}); "
            "run the site as the state folder's owner or give the site its own state folder"
        )
    if stat.S_IMODE(info.st_mode) != 0o700:
        state_dir.chmod(0o700)
    if not path.exists() and not path.is_symlink():
        return
    if not stat.S_ISSOCK(path.lstat().st_mode):
        raise DeploymentError(f"{path}: exists and is not a socket; move it away and start the site again")
    if _answers(path):
        raise DeploymentError(
            f"{path}: another site worker is serving on it; stop it first (or give this site its own state folder)"
        )
    path.unlink()


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(2.0)
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


class _Connection(socketserver.BaseRequestHandler):
    """One peer's request: read it, run it under the worker's lock, answer."""

    server: SiteWorker

    def handle(self) -> None:
        sock: socket.socket = self.request
        settings = self.server.settings
        sock.settimeout(settings.read_timeout_s)
        try:
            header = frames.recv_header(sock)
            if header.get("kind") == frames.KIND_PING:
                frames.send_header(sock, ok=True, pid=os.getpid())
                return
            if header.get("kind") != frames.KIND_MESSAGE:
                raise frames.FrameError(f"unknown request kind {str(header.get('kind'))[:40]!r}")
            with self.server.lock:
                self._serve_message(sock, max_bytes=settings.max_frame_bytes)
        except frames.FrameError as err:
            log.warning("refused a request: %s", err)
            _try_send_failure(sock, FailureCategory.INTERNAL, incident=None)
        except OSError as err:  # the peer went away while we answered
            log.warning("lost the peer: %s", err)

    def _serve_message(self, sock: socket.socket, *, max_bytes: int) -> None:
        message = frames.decode_message(frames.recv_frame(sock, max_bytes=max_bytes))
        context = frames.decode_context(frames.recv_frame(sock, max_bytes=max_bytes))
        if not message.has_content():
            raise frames.FrameError("the message has no content")
        kind = message.metadata.message_type
        try:
            result = self.server.run_message(message, context)
        except Exception:  # noqa: BLE001 - a failing handler must not take the worker down; the traceback stays here
            incident = uuid.uuid4().hex[:12]
            log.exception("incident %s: the ClientApp raised on a %s message", incident, kind)
            _try_send_failure(sock, FailureCategory.INTERNAL, incident=incident)
            return
        log.info("%s message of run %d handled in %.3f s", kind, context.run_id, result.handler_seconds)
        frames.send_header(sock, ok=True, **{"handler-s": result.handler_seconds})
        frames.send_frame(sock, frames.encode_message(result.message))
        frames.send_frame(sock, frames.encode_state(result.state))


def _try_send_failure(sock: socket.socket, category: FailureCategory, *, incident: str | None) -> None:
    try:
        frames.send_header(sock, ok=False, category=category.value, incident=incident)
    except OSError:
        pass


# --- the worker process ----------------------------------------------------------------------


def serve(settings: WorkerSettings) -> None:
    """Import the ClientApp (torch, timm), listen, and serve until SIGTERM or SIGINT."""
    from fedeye.client.app import app

    worker = SiteWorker(settings, app)

    def stop(signum: int, _frame: FrameType | None) -> None:
        log.info("signal %d: stopping", signum)
        threading.Thread(target=worker.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info(
        "site worker pid %d ready on %s (PYTHONPATH=%s, fedeye from %s)",
        os.getpid(),
        settings.socket_path,
        os.environ.get("PYTHONPATH", ""),
        Path(__file__).resolve().parents[1],
    )
    try:
        worker.serve_forever(poll_interval=0.5)
    finally:
        worker.server_close()


def ping(path: Path, *, timeout_s: float = 2.0) -> int | None:
    """The worker's pid if a worker answers on ``path``, else None."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout_s)
            sock.connect(str(path))
            frames.send_header(sock, kind=frames.KIND_PING)
            header = frames.recv_header(sock)
    except (OSError, frames.FrameError):
        return None
    return int(header["pid"]) if header.get("ok") and isinstance(header.get("pid"), int) else None


def _parse_args(argv: list[str] | None) -> WorkerSettings:
    parser = argparse.ArgumentParser(
        prog="python -m fedeye.client.worker", description="FedEye's site worker (started by `fedeye site start`)."
    )
    parser.add_argument(
        "--state-dir", type=Path, required=True, help="The site's state folder; the socket is STATE_DIR/worker.sock."
    )
    parser.add_argument("--node-config-json", default="{}", help="The SuperNode's node config as a JSON object.")
    parser.add_argument(
        "--max-frame-mb",
        type=float,
        default=frames.DEFAULT_MAX_FRAME_BYTES / 2**20,
        help="Largest frame accepted, MiB.",
    )
    parser.add_argument(
        "--read-timeout", type=float, default=DEFAULT_READ_TIMEOUT_S, help="Seconds any read from a peer may take."
    )
    args = parser.parse_args(argv)
    node_config = json.loads(args.node_config_json)
    if not isinstance(node_config, dict):
        parser.error("--node-config-json must be a JSON object")
    return WorkerSettings(
        state_dir=args.state_dir.resolve(),
        node_config=node_config,
        max_frame_bytes=int(args.max_frame_mb * 2**20),
        read_timeout_s=args.read_timeout,
    )


def main(argv: list[str] | None = None) -> None:
    """``python -m fedeye.client.worker --state-dir DIR --node-config-json JSON``."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    serve(_parse_args(argv))


if __name__ == "__main__":
    main()
