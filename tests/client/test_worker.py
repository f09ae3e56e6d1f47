"""The site worker and the forwarding ClientApp: same replies, owner-only socket, untrusted input refused."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, Metadata, RecordDict
from flwr.app.message.message import make_message
from flwr.clientapp import ClientApp

from fedeye.client import frames
from fedeye.client.entry import app as entry_app
from fedeye.client.entry import forward
from fedeye.client.worker import SiteWorker, WorkerSettings, ping, worker_socket_path
from fedeye.protocol import SiteStatus, site_field, site_status

REPO = Path(__file__).resolve().parents[2]


def _metadata(message_type: str) -> Metadata:
    return Metadata(
        run_id=1,
        message_id="m1",
        src_node_id=0,
        dst_node_id=7,
        reply_to_message_id="",
        group_id="1",
        created_at=time.time(),
        ttl=600.0,
        message_type=message_type,
    )


def _request(tiny_sites: Path, message_type: str = MessageType.TRAIN) -> Message:
    from fedeye.config import RunConfig
    from fedeye.models import build_model

    cfg = RunConfig.model_validate(
        {"data": {"root": str(tiny_sites)}, "model": {"img_size": 32}, "training": {"batch_size": 16, "augment": False}}
    )
    config = ConfigRecord({"run-config": cfg.to_json(), "server-round": 1})
    arrays = ArrayRecord(build_model(cfg.model).state_dict())
    return make_message(_metadata(message_type), content=RecordDict({"arrays": arrays, "config": config}))


def _context(node_config: dict[str, str | int | bool], state: RecordDict | None = None) -> Context:
    return Context(run_id=1, node_id=7, node_config=node_config, state=state or RecordDict(), run_config={})


class _EchoApp(ClientApp):
    """Replies with the request's config and marks the state: no torch needed."""

    def __call__(self, message: Message, context: Context) -> Message:
        context.state["seen"] = ConfigRecord({"node-config": json.dumps(dict(context.node_config))})
        return Message(content=RecordDict({"config": message.content["config"]}), reply_to=message)


def _serve(settings: WorkerSettings, app: ClientApp) -> Iterator[SiteWorker]:
    worker = SiteWorker(settings, app)
    thread = threading.Thread(target=worker.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.shutdown()
        worker.server_close()
        thread.join(timeout=10)


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """A short state folder (Unix socket paths are limited to about 100 bytes)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="fe-", dir="/tmp") as tmp:
        yield Path(tmp) / "state"


@pytest.fixture
def echo_worker(state_dir: Path) -> Iterator[SiteWorker]:
    settings = WorkerSettings(
        state_dir=state_dir, node_config={"site-dir": "/site/own"}, max_frame_bytes=1 << 20, read_timeout_s=2.0
    )
    yield from _serve(settings, _EchoApp())


def _small_request() -> Message:
    return make_message(
        _metadata(MessageType.TRAIN),
        content=RecordDict(
            {
                "arrays": ArrayRecord({"w": Array(np.ones((2, 3), dtype=np.float32))}),
                "config": ConfigRecord({"server-round": 2}),
            }
        ),
    )


def test_forwarded_train_reply_equals_the_in_process_reply(tiny_sites: Path, state_dir: Path) -> None:
    from fedeye.client.app import app as site_app

    node_config: dict[str, str | int | bool] = {"site-dir": str(tiny_sites / "site-2")}
    request = _request(tiny_sites)
    expected = site_app(request, _context(node_config))
    for worker in _serve(WorkerSettings(state_dir=state_dir, node_config=dict(node_config)), site_app):
        reply, handler_s = forward(
            request, _context({**node_config, "worker": True}), socket_path=worker.settings.socket_path
        )

    assert handler_s > 0
    assert reply.metadata.reply_to_message_id == request.metadata.message_id
    assert set(reply.content.keys()) == set(expected.content.keys()) == {"arrays", "metrics", "site"}
    assert dict(reply.content["site"]) == dict(expected.content["site"])
    got, want = reply.content["metrics"], expected.content["metrics"]
    assert {k: v for k, v in got.items() if k != "train-seconds"} == {
        k: v for k, v in want.items() if k != "train-seconds"
    }
    for name, array in expected.content["arrays"].items():
        np.testing.assert_array_equal(reply.content["arrays"][name].numpy(), array.numpy())


def test_worker_hands_back_the_state_and_uses_its_own_node_config(echo_worker: SiteWorker) -> None:
    context = _context({"site-dir": "/elsewhere", "worker": True}, state=RecordDict({"kept": ConfigRecord({"x": 1})}))
    reply, _ = forward(_small_request(), context, socket_path=echo_worker.settings.socket_path)

    assert reply.content["config"]["server-round"] == 2
    assert set(context.state.keys()) == {"kept", "seen"}
    assert json.loads(str(context.state["seen"]["node-config"])) == {"site-dir": "/site/own"}


def test_socket_is_owner_only(echo_worker: SiteWorker, state_dir: Path) -> None:
    path = worker_socket_path(state_dir)
    assert stat.S_ISSOCK(path.stat().st_mode)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700


def _raw(path: Path, *chunks: bytes) -> dict[str, object]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        for chunk in chunks:
            sock.sendall(chunk)
        return frames.recv_header(sock)


def _frame(payload: bytes) -> bytes:
    return frames.HEADER.pack(len(payload)) + payload


MESSAGE_HEADER = _frame(b'{"v": 1, "kind": "message"}')


@pytest.mark.parametrize(
    "chunks",
    [
        [b"\xff" * 8],  # a header frame of 2**64 - 1 bytes
        [_frame(b"hello")],  # a header that is not JSON
        [_frame(b'{"v": 99}')],  # another version
        [_frame(b'{"v": 1, "kind": "shell"}')],  # unknown kind
        [MESSAGE_HEADER, frames.HEADER.pack((1 << 20) + 1)],  # a message over the worker's cap
        [MESSAGE_HEADER, _frame(b"\x0a\xff\xff\xff")],  # not protobuf
    ],
    ids=["huge-header", "not-json", "version", "kind", "oversized", "not-protobuf"],
)
def test_garbage_and_oversized_frames_are_refused_and_the_worker_lives_on(
    echo_worker: SiteWorker, chunks: list[bytes]
) -> None:
    answer = _raw(echo_worker.settings.socket_path, *chunks)

    assert answer["ok"] is False
    assert ping(echo_worker.settings.socket_path) == os.getpid()
    reply, _ = forward(_small_request(), _context({"worker": True}), socket_path=echo_worker.settings.socket_path)
    assert reply.content["config"]["server-round"] == 2


def test_a_truncated_request_times_out_without_blocking_others(echo_worker: SiteWorker) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as idle:
        idle.connect(str(echo_worker.settings.socket_path))
        idle.sendall(MESSAGE_HEADER + frames.HEADER.pack(100) + b"abc")
        assert ping(echo_worker.settings.socket_path) == os.getpid()  # other peers are served meanwhile
        reply, _ = forward(_small_request(), _context({"worker": True}), socket_path=echo_worker.settings.socket_path)
    assert site_status(reply.content) is SiteStatus.OK


def test_worker_dying_mid_message_gives_a_failed_reply(state_dir: Path) -> None:
    state_dir.mkdir(mode=0o700)
    path = worker_socket_path(state_dir)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def die_after_reading() -> None:
        conn, _ = listener.accept()
        conn.recv(1 << 16)
        conn.close()  # like a worker killed while it trains

    thread = threading.Thread(target=die_after_reading, daemon=True)
    thread.start()
    reply, _ = forward(_small_request(), _context({"worker": True, "site-name": "eye-clinic"}), socket_path=path)
    thread.join(timeout=10)
    listener.close()

    assert site_status(reply.content) is SiteStatus.FAILED
    assert site_field(reply.content, "category") == "worker-unavailable"
    assert site_field(reply.content, "name") == "eye-clinic"
    assert "arrays" not in reply.content
    assert reply.content["metrics"]["num-examples"] == 0


def test_entry_app_without_a_running_worker_replies_failed(state_dir: Path) -> None:
    state_dir.mkdir(mode=0o700)
    reply = entry_app(_small_request(), _context({"worker": True, "state-dir": str(state_dir)}))

    assert site_field(reply.content, "category") == "worker-unavailable"
    assert (state_dir / "logs" / "messages.jsonl").is_file()  # timings stay at the site


def test_forwarding_path_imports_no_torch(state_dir: Path) -> None:
    code = (
        "import sys, numpy as np, time\n"
        "from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, Metadata, RecordDict\n"
        "from flwr.app.message.message import make_message\n"
        "from fedeye.client.entry import app\n"
        "md = Metadata(run_id=1, message_id='m', src_node_id=0, dst_node_id=7, reply_to_message_id='', group_id='1',"
        " created_at=time.time(), ttl=60.0, message_type='train')\n"
        "msg = make_message(md, content=RecordDict({'arrays': ArrayRecord({'w': Array(np.ones(3))}), 'config': ConfigRecord({'server-round': 1})}))\n"
        f"ctx = Context(run_id=1, node_id=7, node_config={{'worker': True, 'state-dir': {str(state_dir)!r}}}, state=RecordDict(), run_config={{}})\n"
        "reply = app(msg, ctx)\n"
        "print(sorted(m for m in ('torch', 'timm', 'fedeye.client.app', 'fedeye.client.site') if m in sys.modules))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, check=True
    )

    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout + done.stderr
