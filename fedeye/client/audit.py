"""Site audit log: one JSON line for every message a site sends out.

:func:`audit_mod` is a Flower ClientApp mod. It lets the ClientApp build its
reply, describes that reply (:func:`describe_reply`) and appends the
description to the site's own audit file before the reply leaves the node.
A hospital's privacy officer can then read, with ``jq`` or
:func:`read_audit`, exactly what left the site: every tensor's name, shape
and dtype, every metric and config value, and a SHA-256 of the payload.

Where the file lives is decided only on the site's side, never by the
coordinator's run config (see :func:`audit_path`). The log fails closed: if
the file cannot be written the mod raises :class:`~fedeye.errors.AuditError`
and the reply is not sent: the ClientApp's outermost mod
(:func:`fedeye.client.incidents.failure_guard_mod`) sends a content-free
``failed`` reply instead and keeps the details in the site's incident log.

Payload hash
    ``payload_sha256`` and ``payload_bytes`` are taken over Flower's own
    protobuf serialisation of the reply, ``SerializeToString(deterministic=True)``
    of ``flwr.common.serde.recorddict_to_proto(reply.content)`` (of
    ``error_to_proto(reply.error)`` for an error reply). Records and array
    items are repeated protobuf fields in insertion order, so the bytes are
    reproducible from the same reply: :func:`payload_bytes` recomputes them.

>>> app = ClientApp(mods=[audit_mod])  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from hashlib import sha256
from pathlib import Path
from typing import Literal, TypedDict

from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord
from flwr.clientapp.typing import ClientAppCallable
from flwr.common.constant import ErrorCode
from flwr.common.serde import recorddict_to_proto
from flwr.common.serde_utils import error_to_proto

from fedeye.client.state import STATE_DIR_KEY, SiteState, fedeye_home, simulated_state
from fedeye.errors import AuditError, FedEyeError
from fedeye.protocol import (
    CONFIG,
    DP_EPSILON,
    NODE_AUDIT_LOG,
    NODE_PARTITION_ID,
    NODE_SITE_DIR,
    RUN_CONFIG,
    RUN_ID,
    SERVER_ROUND,
)
from fedeye.sites.layout import simulated_site_dirs

AUDIT_LOG_KEY = NODE_AUDIT_LOG  # node config key: explicit audit file path
SITE_DIR_KEY = NODE_SITE_DIR  # node config key of the site folder
PARTITION_KEY = NODE_PARTITION_ID  # simulated nodes carry this instead of a site folder
EPSILON_KEY = DP_EPSILON  # reply metric: epsilon spent so far by the site
SERVER_ROUND_KEY = SERVER_ROUND

JSONScalar = str | int | float | bool | None
JSONValue = JSONScalar | list[JSONScalar]


class TensorInfo(TypedDict):
    """Name-free description of one array: its shape and dtype."""

    shape: list[int]
    dtype: str


class AuditEntry(TypedDict):
    """One line of the audit file: everything one outgoing reply carried.

    Non-finite floats are written as the strings ``"NaN"``, ``"Infinity"``
    and ``"-Infinity"`` so every line is strict JSON; bytes config values as
    ``"<N bytes sha256:...>"``.
    """

    time: str  # UTC, ISO 8601
    run_id: int  # Flower's run id
    run: str | None  # FedEye's run id, from the request's config "fedeye-run-id" (None: not sent)
    node_id: int  # the sending node (the reply's src_node_id)
    server_round: int | None  # from the request's config "server-round"
    message_type: str
    status: Literal["ok", "error"]
    error: str | None  # the error reason sent to the coordinator
    records: dict[str, str]  # record name -> ArrayRecord / MetricRecord / ConfigRecord
    arrays: dict[str, dict[str, TensorInfo]]  # record -> tensor name -> shape/dtype
    metrics: dict[str, dict[str, JSONValue]]  # record -> metric name -> value
    configs: dict[str, dict[str, JSONValue]]  # record -> config key -> value
    payload_bytes: int
    payload_sha256: str
    epsilon: float | None  # reply metric "dp-epsilon", else None


class DecisionEntry(TypedDict):
    """One line of the audit file recording a decision on a run (nothing left the site with it)."""

    time: str  # UTC, ISO 8601
    event: Literal["approval"]
    run: str  # the run's key at the site (FedEye run id)
    digest: str  # the request's digest: exact run config and code
    decision: str  # pending, approved or denied
    by: str  # admin, policy
    category: str  # what the coordinator is told when denied
    reason: str  # the site's own words; stays at the site


# ------------------------------------------------------------------ paths


def audit_path(
    node_config: Mapping[str, object], *, home: Path, node_id: int = 0, site_dir: Path | None = None
) -> Path:
    """The audit file of this node, from its node config (and, simulated, the site folder it serves).

    ``audit-log`` if set; else ``audit/audit.jsonl`` in the site's state
    folder (:mod:`fedeye.client.state`): the node's ``state-dir``, or the
    state folder of its site folder (``site-dir``, or for a simulated node
    ``site_dir``); without any of them ``<home>/audit/partition-<k>.jsonl``
    (simulated) or ``node-<node_id>.jsonl``.

    >>> audit_path({"site-dir": "/data/St Aurelia/"}, home=Path("/h"))
    PosixPath('/h/sites/St-Aurelia-38a959e8f88c/audit/audit.jsonl')
    """
    if AUDIT_LOG_KEY in node_config:
        return Path(str(node_config[AUDIT_LOG_KEY])).expanduser()
    if STATE_DIR_KEY in node_config:
        return SiteState(Path(str(node_config[STATE_DIR_KEY])).expanduser()).audit_log
    if SITE_DIR_KEY in node_config:
        site_dir = Path(str(node_config[SITE_DIR_KEY])).expanduser()
    if site_dir is not None:
        return simulated_state(site_dir, home=home).audit_log
    if PARTITION_KEY in node_config:
        stem = f"partition-{node_config[PARTITION_KEY]}"
    else:
        stem = f"node-{node_id}"
    return home / "audit" / f"{stem}.jsonl"


# ------------------------------------------------------------------ pure description


def payload_bytes(reply: Message) -> bytes:
    """Flower's deterministic protobuf serialisation of the reply's payload."""
    proto = recorddict_to_proto(reply.content) if reply.has_content() else error_to_proto(reply.error)
    return bytes(proto.SerializeToString(deterministic=True))


def server_round_of(request: Message) -> int | None:
    """The ``server-round`` of the first config record that has one, else None."""
    for record in request.content.config_records.values():
        if SERVER_ROUND_KEY in record:
            return int(record[SERVER_ROUND_KEY])  # type: ignore[arg-type]
    return None


def _json_value(value: object) -> JSONValue:
    if isinstance(value, list):
        return [_json_scalar(v) for v in value]
    return _json_scalar(value)


def _json_scalar(value: object) -> JSONScalar:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value).replace("inf", "Infinity").replace("nan", "NaN")
    if isinstance(value, bytes):
        return f"<{len(value)} bytes sha256:{sha256(value).hexdigest()}>"
    return value  # type: ignore[return-value]


def _arrays(record: ArrayRecord) -> dict[str, TensorInfo]:
    return {name: TensorInfo(shape=list(a.shape), dtype=str(a.dtype)) for name, a in record.items()}


def _values(record: MetricRecord | ConfigRecord) -> dict[str, JSONValue]:
    return {key: _json_value(value) for key, value in record.items()}


def _epsilon(metrics: dict[str, MetricRecord]) -> float | None:
    for record in metrics.values():
        if EPSILON_KEY in record:
            return float(record[EPSILON_KEY])  # type: ignore[arg-type]
    return None


def run_key_of(request: Message) -> str | None:
    """The FedEye run id a request names in a config record, if any."""
    for record in request.content.config_records.values():
        if RUN_ID in record:
            return str(record[RUN_ID])
    return None


def describe_reply(
    reply: Message, *, server_round: int | None = None, now: datetime | None = None, run: str | None = None
) -> AuditEntry:
    """The audit entry of one outgoing reply (no I/O; ``now`` defaults to UTC now)."""
    payload = payload_bytes(reply)
    content = reply.content if reply.has_content() else None
    when = (now or datetime.now(UTC)).isoformat(timespec="milliseconds")
    return AuditEntry(
        time=when,
        run_id=int(reply.metadata.run_id),
        run=run,
        node_id=int(reply.metadata.src_node_id),
        server_round=server_round,
        message_type=reply.metadata.message_type,
        status="ok" if content is not None else "error",
        error=None if content is not None else reply.error.reason,
        records={k: type(v).__name__ for k, v in content.items()} if content else {},
        arrays={k: _arrays(v) for k, v in content.array_records.items()} if content else {},
        metrics={k: _values(v) for k, v in content.metric_records.items()} if content else {},
        configs={k: _values(v) for k, v in content.config_records.items()} if content else {},
        payload_bytes=len(payload),
        payload_sha256=sha256(payload).hexdigest(),
        epsilon=_epsilon(dict(content.metric_records)) if content else None,
    )


# ------------------------------------------------------------------ file I/O


def make_private_dirs(folder: Path) -> None:
    """Create ``folder`` and its missing parents, each with mode 0700.

    Safe when several sites create the same folder at once (simulated sites
    start together): a folder another process made first is fine.
    """
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    for path in reversed(missing):
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:  # another site made it between our check and mkdir
            if not path.is_dir():
                raise


def _open_append(path: Path) -> int:
    try:
        make_private_dirs(path.parent)
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    except OSError as err:
        raise AuditError(
            f"cannot write the site audit log {path}: {err.strerror or err}. Make the folder writable, or "
            f"start the SuperNode with --node-config \"{AUDIT_LOG_KEY}='/writable/path/audit.jsonl'\""
        ) from err


def ensure_audit_file(path: Path) -> None:
    """Create ``path`` (0600, parents 0700) if needed; :class:`AuditError` if impossible."""
    os.close(_open_append(path))


def append_entry(path: Path, entry: AuditEntry) -> None:
    """Append ``entry`` as one JSON line with a single write, then fsync."""
    line = (json.dumps(entry, allow_nan=False, separators=(",", ":")) + "\n").encode()
    fd = _open_append(path)
    try:
        os.write(fd, line)
        os.fsync(fd)
    except OSError as err:
        raise AuditError(f"cannot append to the site audit log {path}: {err.strerror or err}") from err
    finally:
        os.close(fd)


def append_decision(path: Path, entry: DecisionEntry) -> None:
    """Append a decision on a run (approval) to the audit file."""
    append_entry(path, entry)  # type: ignore[arg-type]  # one JSON line, like every entry


def read_audit(path: Path) -> list[AuditEntry]:
    """Every outgoing message's entry of an audit file, oldest first."""
    return [e for e in _read_lines(path) if "event" not in e]  # type: ignore[misc]


def read_decisions(path: Path) -> list[DecisionEntry]:
    """Every decision on a run recorded in an audit file, oldest first."""
    return [e for e in _read_lines(path) if e.get("event") == "approval"]  # type: ignore[misc]


def _read_lines(path: Path) -> list[dict[str, object]]:
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        return []
    except OSError as err:
        raise AuditError(f"cannot read the audit log {path}: {err.strerror or err}") from err
    return [_parse_line(path, number, line) for number, line in enumerate(raw.splitlines(), start=1) if line.strip()]


def _parse_line(path: Path, number: int, line: bytes) -> dict[str, object]:
    """One audit line as its JSON object; a damaged line raises :class:`AuditError` naming it."""
    try:
        entry = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        entry, reason = None, f"{type(err).__name__}: {err}"
    else:
        reason = f"a JSON {type(entry).__name__}"
    if not isinstance(entry, dict):
        raise AuditError(
            f"line {number} of the audit log {path} is not a JSON object ({reason}): the file was damaged or "
            "edited. FedEye only appends to it; keep a copy for your records, then remove or repair that line"
        )
    return entry


# ------------------------------------------------------------------ the mod


def _flower_reason(err: Exception) -> str:
    """The error reason Flower's runtime sends for an exception (run_clientapp.py)."""
    return str(type(err)) + ":<'" + str(err) + "'>"


def audit_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Flower mod: log every outgoing reply of this node, then return it unchanged.

    The audit file is checked before the ClientApp runs, so a site with an
    unwritable log fails before training. If the ClientApp raises, the
    error reply Flower will send is logged and the exception re-raised.
    """
    site_dir = simulated_site_of(msg, context.node_config)
    path = audit_path(context.node_config, home=fedeye_home(), node_id=context.node_id, site_dir=site_dir)
    ensure_audit_file(path)
    server_round, run = server_round_of(msg), run_key_of(msg)
    try:
        reply = call_next(msg, context)
    except Exception as err:
        append_entry(path, _describe_failure(msg, err, server_round=server_round, run=run))
        raise
    append_entry(path, describe_reply(reply, server_round=server_round, run=run))
    return reply


def simulated_site_of(msg: Message, node_config: Mapping[str, object]) -> Path | None:
    """A simulated node's site folder: the ``partition-id``-th folder under the run's ``data.root``."""
    if SITE_DIR_KEY in node_config or PARTITION_KEY not in node_config:
        return None
    try:
        config = msg.content.config_records[CONFIG]
        root = json.loads(str(config[RUN_CONFIG]))["data"]["root"]
        return simulated_site_dirs(Path(str(root)))[int(str(node_config[PARTITION_KEY]))]
    except (KeyError, ValueError, TypeError, IndexError, FedEyeError):
        return None  # the ClientApp reports what is wrong with the run config; the log still gets written


def _describe_failure(msg: Message, err: Exception, *, server_round: int | None, run: str | None) -> AuditEntry:
    error = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=_flower_reason(err)), reply_to=msg)
    return describe_reply(error, server_round=server_round, run=run)
