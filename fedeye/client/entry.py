"""The ClientApp component Flower loads: forwards to the site worker, or runs in-process.

Flower starts a fresh ``flwr-clientapp`` process for every message of a
deployed site. When the SuperNode's node config says ``worker = true``
(``fedeye site start`` without ``--no-worker``), :data:`app` sends the
message and its ``Context`` to the site worker (:mod:`fedeye.client.worker`)
over ``<state-dir>/worker.sock`` and returns its reply, setting
``Context.state`` to the worker's: this path imports neither torch, timm nor
:mod:`fedeye.client.app`. If the worker cannot be reached or dies mid-message,
the reply says so (status ``failed``, category ``worker-unavailable``, no
arrays, ``num-examples`` 0) and the site is reported failed for that round
instead of hanging it. Without a worker (simulation, ``--no-worker``) the
real ClientApp :data:`fedeye.client.app.app` runs in this process.

With a ``state-dir`` each message appends one timing line to
``<state-dir>/logs/messages.jsonl`` (the site's own log; nothing of it is
sent): when the process started, when the reply was handed back to Flower,
and how long the handler took.

>>> isinstance(app, ClientApp)
True
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Final

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedeye.client import frames
from fedeye.client.worker import worker_socket_path
from fedeye.protocol import (
    METRICS,
    NODE_SITE_NAME,
    NODE_STATE_DIR,
    NODE_WORKER,
    NUM_EXAMPLES,
    SITE,
    SITE_CATEGORY,
    SITE_INCIDENT,
    SITE_NAME,
    SITE_REASON,
    SITE_STATUS,
    FailureCategory,
    SiteStatus,
)

CONNECT_TIMEOUT_S: Final = 10.0
REPLY_TIMEOUT_S: Final = 24 * 3600.0  # a worker that dies closes the socket at once; this only bounds a hung one
TIMINGS_FILE: Final = Path("logs") / "messages.jsonl"
_IMPORTED_AT: Final = time.time()  # when Flower loaded this component


class SiteClientApp(ClientApp):
    """FedEye's ClientApp as Flower loads it (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()

    def __call__(self, message: Message, context: Context) -> Message:
        state_dir = _state_dir(context)
        uses_worker = bool(context.node_config.get(NODE_WORKER, False))
        if uses_worker and state_dir is not None:
            reply, handler_s = forward(message, context, socket_path=worker_socket_path(state_dir))
        elif uses_worker:
            reply, handler_s = (
                unavailable_reply(message, context, reason=f"node config 'worker' is set without '{NODE_STATE_DIR}'"),
                0.0,
            )
        else:
            reply, handler_s = _in_process(message, context)
        if state_dir is not None:
            _log_timing(state_dir, message, worker=uses_worker, handler_s=handler_s)
        return reply


def _in_process(message: Message, context: Context) -> tuple[Message, float]:
    from fedeye.client.app import app as site_app  # torch, timm: only without a worker

    started = time.perf_counter()
    reply = site_app(message, context)
    return reply, time.perf_counter() - started


def _state_dir(context: Context) -> Path | None:
    value = context.node_config.get(NODE_STATE_DIR)
    return None if value in (None, "") else Path(str(value))


def forward(
    message: Message, context: Context, *, socket_path: Path, max_frame_bytes: int = frames.DEFAULT_MAX_FRAME_BYTES
) -> tuple[Message, float]:
    """Have the worker on ``socket_path`` handle ``message``; return its reply and handler seconds.

    ``context.state`` becomes the worker's updated state. Never raises for a
    missing or dying worker: the reply then says ``worker-unavailable``.
    """
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(CONNECT_TIMEOUT_S)
            sock.connect(str(socket_path))
            sock.settimeout(REPLY_TIMEOUT_S)
            frames.send_header(sock, kind=frames.KIND_MESSAGE)
            frames.send_frame(sock, frames.encode_message(message))
            frames.send_frame(sock, frames.encode_context(context))
            header = frames.recv_header(sock)
            if not header.get("ok"):
                return _refused_reply(message, context, header), 0.0
            reply = frames.decode_message(frames.recv_frame(sock, max_bytes=max_frame_bytes))
            state = frames.decode_state(frames.recv_frame(sock, max_bytes=max_frame_bytes))
    except (OSError, frames.FrameError) as err:
        return unavailable_reply(message, context, reason=f"the site worker did not answer ({type(err).__name__})"), 0.0
    context.state = state
    return reply, float(header.get("handler-s", 0.0))


def unavailable_reply(message: Message, context: Context, *, reason: str) -> Message:
    """A ``failed`` / ``worker-unavailable`` reply: no arrays, ``num-examples`` 0."""
    return failed_reply(message, context, category=FailureCategory.WORKER_UNAVAILABLE, reason=reason)


def failed_reply(
    message: Message, context: Context, *, category: FailureCategory, reason: str, incident: str | None = None
) -> Message:
    """A reply that reports this site failed the message (``reason`` must be site-safe: no paths)."""
    site = ConfigRecord(
        {
            SITE_NAME: str(context.node_config.get(NODE_SITE_NAME, f"node-{context.node_id}")),
            SITE_STATUS: SiteStatus.FAILED.value,
            SITE_CATEGORY: category.value,
            SITE_REASON: reason,
        }
    )
    if incident:
        site[SITE_INCIDENT] = incident
    content = RecordDict({METRICS: MetricRecord({NUM_EXAMPLES: 0}), SITE: site})
    return Message(content=content, reply_to=message)


def _refused_reply(message: Message, context: Context, header: dict[str, object]) -> Message:
    try:
        category = FailureCategory(str(header.get("category")))
    except ValueError:
        category = FailureCategory.INTERNAL
    incident = header.get("incident")
    return failed_reply(
        message,
        context,
        category=category,
        reason="the site worker could not handle the message",
        incident=str(incident) if incident else None,
    )


def process_started_at() -> float:
    """When this process started (Unix time; Linux ``/proc``), else when this module was imported."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])  # field 22: start, since boot
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return _IMPORTED_AT
    return time.time() - age


def _log_timing(state_dir: Path, message: Message, *, worker: bool, handler_s: float) -> None:
    config = message.content.config_records.get("config") if message.has_content() else None
    entry = {
        "run": message.metadata.run_id,
        "type": message.metadata.message_type,
        "worker": worker,
        "round": None if config is None else config.get("server-round"),
        "split": None if config is None else config.get("split"),
        "started": process_started_at(),
        "imported": _IMPORTED_AT,
        "replied": time.time(),
        "handler-s": handler_s,
    }
    path = state_dir / TIMINGS_FILE
    try:
        path.parent.mkdir(mode=0o700, exist_ok=True)
        with path.open("a") as out:
            out.write(json.dumps(entry) + "\n")
    except OSError:
        pass  # timings are a diagnostic; never fail a message over them


app = SiteClientApp()
