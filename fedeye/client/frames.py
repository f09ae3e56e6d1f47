"""The site worker's wire format: length-prefixed frames over a local socket.

A frame is an 8-byte big-endian length followed by that many bytes. One
exchange between the per-message ClientApp (:mod:`fedeye.client.entry`) and
the site worker (:mod:`fedeye.client.worker`) is:

request
    a JSON header (``{"v": 1, "kind": "message"}``), then the Flower
    ``Message`` and the ``Context`` the ClientApp got, each in Flower's own
    protobuf serialisation (``flwr.common.serde.message_to_proto``,
    ``context_to_proto``). ``{"kind": "ping"}`` has no further frames.
reply
    a JSON header (``{"v": 1, "ok": true, "handler-s": 0.4}``), then the reply
    ``Message`` and the updated ``Context.state`` (``recorddict_to_proto``);
    or ``{"v": 1, "ok": false, "category": ..., "incident": ...}`` alone when
    the worker could not handle the message (details in the worker's log).

Both ends refuse a frame longer than their cap before reading its body, and
every read has a timeout, so a peer cannot make the other allocate or wait
without bound. This module imports Flower's serde but never torch.

>>> from flwr.app import RecordDict
>>> state = decode_state(encode_state(RecordDict()))
>>> len(state)
0
"""

from __future__ import annotations

import json
import socket
import struct
from dataclasses import dataclass
from typing import Any, Final

from flwr.app import Context, Message, RecordDict
from flwr.common.serde import (
    context_from_proto,
    context_to_proto,
    message_from_proto,
    message_to_proto,
    recorddict_from_proto,
    recorddict_to_proto,
)
from flwr.proto.message_pb2 import Context as ProtoContext  # pylint: disable=E0611
from flwr.proto.message_pb2 import Message as ProtoMessage  # pylint: disable=E0611
from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict  # pylint: disable=E0611
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]

from fedeye.errors import FedEyeError

VERSION: Final = 1
HEADER: Final = struct.Struct("!Q")
MAX_HEADER_BYTES: Final = 64 * 1024  #: a JSON header is small; anything longer is refused
DEFAULT_MAX_FRAME_BYTES: Final = 512 * 1024 * 1024  #: a ViT-B model with its optimizer-free state fits many times
KIND_MESSAGE: Final = "message"
KIND_PING: Final = "ping"


class FrameError(FedEyeError):
    """A peer sent something that is not a valid frame sequence (too long, truncated, unparsable)."""


@dataclass(frozen=True)
class WorkerReply:
    """What the worker sends back: the reply message and the state to hand to the SuperNode."""

    message: Message
    state: RecordDict
    handler_seconds: float  #: time the ClientApp's handler took in the worker


# --- frames ----------------------------------------------------------------------------------


def send_frame(sock: socket.socket, payload: bytes) -> None:
    """Send one frame (length, then payload)."""
    sock.sendall(HEADER.pack(len(payload)))
    sock.sendall(payload)


def recv_frame(sock: socket.socket, *, max_bytes: int) -> bytes:
    """Read one frame of at most ``max_bytes``; the socket's timeout bounds every read.

    Raises
    ------
    FrameError
        The peer closed the connection, announced a frame over ``max_bytes``, or timed out.
    """
    (length,) = HEADER.unpack(_recv_exactly(sock, HEADER.size))
    if length > max_bytes:
        raise FrameError(f"frame of {length} bytes refused: the limit is {max_bytes} bytes")
    return _recv_exactly(sock, length)


def _recv_exactly(sock: socket.socket, count: int) -> bytes:
    buffer = bytearray(count)
    view, got = memoryview(buffer), 0
    while got < count:
        try:
            read = sock.recv_into(view[got:], min(count - got, 4 * 1024 * 1024))
        except TimeoutError:
            raise FrameError(f"timed out after {got} of {count} bytes") from None
        if read == 0:
            raise FrameError(f"connection closed after {got} of {count} bytes")
        got += read
    return bytes(buffer)


def send_header(sock: socket.socket, **fields: Any) -> None:
    """Send a JSON header frame (``v`` is added)."""
    send_frame(sock, json.dumps({"v": VERSION, **fields}).encode())


def recv_header(sock: socket.socket) -> dict[str, Any]:
    """Read a JSON header frame and check its version."""
    raw = recv_frame(sock, max_bytes=MAX_HEADER_BYTES)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise FrameError("the header frame is not JSON") from None
    if not isinstance(header, dict) or header.get("v") != VERSION:
        raise FrameError(f"unsupported header (expected a JSON object with v = {VERSION})")
    return header


# --- Flower objects ----------------------------------------------------------------------------


def encode_message(message: Message) -> bytes:
    """A Flower message in Flower's protobuf serialisation."""
    return bytes(message_to_proto(message).SerializeToString())


def decode_message(raw: bytes) -> Message:
    """The inverse of :func:`encode_message`; refuses bytes that do not parse."""
    proto = ProtoMessage()
    try:
        proto.ParseFromString(raw)
        return message_from_proto(proto)
    except (DecodeError, ValueError, TypeError, KeyError) as err:
        raise FrameError(f"the message frame does not parse as a Flower message ({type(err).__name__})") from None


def encode_context(context: Context) -> bytes:
    """A Flower context (run id, node id, node config, state, run config) in protobuf."""
    return bytes(context_to_proto(context).SerializeToString())


def decode_context(raw: bytes) -> Context:
    """The inverse of :func:`encode_context`; refuses bytes that do not parse."""
    proto = ProtoContext()
    try:
        proto.ParseFromString(raw)
        return context_from_proto(proto)
    except (DecodeError, ValueError, TypeError, KeyError) as err:
        raise FrameError(f"the context frame does not parse as a Flower context ({type(err).__name__})") from None


def encode_state(state: RecordDict) -> bytes:
    """A context's state record dict in protobuf."""
    return bytes(recorddict_to_proto(state).SerializeToString())


def decode_state(raw: bytes) -> RecordDict:
    """The inverse of :func:`encode_state`."""
    proto = ProtoRecordDict()
    try:
        proto.ParseFromString(raw)
        return recorddict_from_proto(proto)
    except (DecodeError, ValueError, TypeError, KeyError) as err:
        raise FrameError(f"the state frame does not parse as a Flower record dict ({type(err).__name__})") from None
