"""Failures stay at the site: an exception becomes a ``failed`` reply and a local incident.

When a handler of the ClientApp raises, the reply that leaves the site says
only *that* it failed, *what kind* of failure it was (a
:class:`~fedeye.protocol.FailureCategory`) and a site-local incident id: no
exception text, no file path (paths often carry patient identifiers), no
arrays, ``num-examples`` 0. The details (exception type, message, traceback)
go to ``incidents.jsonl`` in the site's state folder, where the site admin
finds them by incident id.

:func:`contains_failures` wraps a handler (inside the audit mod, so the audit
log sees the failed reply); :func:`failure_guard_mod` is the outermost mod, for
the rare failure of a mod itself (an unwritable audit log): Flower's own error
reply would carry the exception text, so it never gets to build one.

>>> FAILURE_REASONS[FailureCategory.DATA_ERROR].format(incident="0123456789ab")
"the site's data failed a check; see incident 0123456789ab in the site's log"
"""

from __future__ import annotations

import functools
import json
import logging
import os
import secrets
import sys
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp.typing import ClientAppCallable

from fedeye import protocol as p
from fedeye.client.audit import make_private_dirs, server_round_of
from fedeye.client.state import fedeye_home, simulated_state
from fedeye.errors import ConfigError, ModelError, SiteDataError

INCIDENT_FILE = "incidents.jsonl"
INCIDENT_HEX = 12  # hex characters of an incident id

FAILURE_REASONS: Mapping[p.FailureCategory, str] = {
    p.FailureCategory.DATA_ERROR: "the site's data failed a check; see incident {incident} in the site's log",
    p.FailureCategory.CONFIG_ERROR: "the site's configuration does not fit this run; see incident {incident} in the site's log",
    p.FailureCategory.MODEL_ERROR: "the model could not be loaded or does not fit at the site; see incident {incident} in the site's log",
    p.FailureCategory.OUT_OF_MEMORY: "the site ran out of memory; see incident {incident} in the site's log",
    p.FailureCategory.BUDGET: "the site's privacy budget stopped the work; see incident {incident} in the site's log",
    p.FailureCategory.WORKER_UNAVAILABLE: "the site's worker was unavailable; see incident {incident} in the site's log",
    p.FailureCategory.INTERNAL: "an internal error at the site; see incident {incident} in the site's log",
}

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SiteIdentity:
    """What a site knows about itself when a message fails: its display name and folder, if they resolve."""

    name: str | None = None
    folder: Path | None = None


Identify = Callable[[Message, Context], SiteIdentity]
Handler = Callable[[Message, Context], Message]


# ------------------------------------------------------------------ pure parts


def failure_category(err: BaseException) -> p.FailureCategory:
    """The category FedEye reports for ``err`` (anything unexpected is ``internal``)."""
    if isinstance(err, SiteDataError):
        return p.FailureCategory.DATA_ERROR
    if isinstance(err, ConfigError):
        return p.FailureCategory.CONFIG_ERROR
    if isinstance(err, ModelError):
        return p.FailureCategory.MODEL_ERROR
    if isinstance(err, MemoryError) or _is_torch_oom(err):
        return p.FailureCategory.OUT_OF_MEMORY
    return p.FailureCategory.INTERNAL


def _is_torch_oom(err: BaseException) -> bool:
    torch = sys.modules.get("torch")  # never import torch here: a forwarding process may not have it loaded
    oom = getattr(torch, "OutOfMemoryError", None)
    return isinstance(oom, type) and isinstance(err, oom)


def new_incident_id() -> str:
    """A random site-local incident id (12 hex characters)."""
    return secrets.token_hex(INCIDENT_HEX // 2)


def failure_reply(msg: Message, *, category: p.FailureCategory, incident: str, site_name: str | None) -> Message:
    """The reply of a failed message: status, category, incident id, a fixed reason; no arrays."""
    site = ConfigRecord(
        {
            p.SITE_STATUS: p.SiteStatus.FAILED.value,
            p.SITE_CATEGORY: category.value,
            p.SITE_INCIDENT: incident,
            p.SITE_REASON: FAILURE_REASONS[category].format(incident=incident),
        }
    )
    if site_name:
        site[p.SITE_NAME] = site_name
    content = RecordDict({p.METRICS: MetricRecord({p.NUM_EXAMPLES: 0}), p.SITE: site})
    return Message(content=content, reply_to=msg)


def incident_entry(
    msg: Message, err: BaseException, *, category: p.FailureCategory, incident: str, now: datetime | None = None
) -> dict[str, Any]:
    """The incident log line of one failure: everything the coordinator is not told."""
    return {
        "time": (now or datetime.now(UTC)).isoformat(timespec="milliseconds"),
        "incident": incident,
        "category": category.value,
        "run_id": int(msg.metadata.run_id),
        "server_round": server_round_of(msg),
        "message_type": msg.metadata.message_type,
        "error_type": f"{type(err).__module__}.{type(err).__qualname__}",
        "message": str(err),
        "traceback": "".join(traceback.format_exception(err)),
    }


# ------------------------------------------------------------------ state folder and log


def _state_dir(node_config: Mapping[str, object], site_folder: Path | None, *, node_id: int) -> Path:
    """The site's state folder (:mod:`fedeye.client.state`), where its incident log lives.

    A node whose site folder does not resolve uses ``$FEDEYE_HOME/sites/node-<node_id>``.
    """
    if p.NODE_STATE_DIR in node_config:
        return Path(str(node_config[p.NODE_STATE_DIR])).expanduser()
    if site_folder is None:
        return fedeye_home() / "sites" / f"node-{node_id}"
    return simulated_state(site_folder).root


def record_incident(state_dir: Path, entry: Mapping[str, Any]) -> Path:
    """Append ``entry`` to ``<state_dir>/incidents.jsonl`` (0600) with one write; returns the file."""
    make_private_dirs(state_dir)
    path = state_dir / INCIDENT_FILE
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (json.dumps(entry, default=str) + "\n").encode())
    finally:
        os.close(fd)
    return path


def read_incidents(state_dir: Path) -> list[dict[str, Any]]:
    """Every incident of a site, oldest first (none if the site never failed)."""
    path = state_dir / INCIDENT_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ------------------------------------------------------------------ the wrappers


def contain(msg: Message, context: Context, err: Exception, identify: Identify) -> Message:
    """Log ``err`` as an incident at the site and return the failed reply that may leave it."""
    category, incident = failure_category(err), new_incident_id()
    site = identify(msg, context)
    folder = _state_dir(context.node_config, site.folder, node_id=context.node_id)
    try:
        record_incident(folder, incident_entry(msg, err, category=category, incident=incident))
    except OSError as log_err:  # the reply still leaves without details; the site's console keeps them
        _log.error("incident %s: cannot write %s (%s)", incident, folder / INCIDENT_FILE, log_err, exc_info=err)
    return failure_reply(msg, category=category, incident=incident, site_name=site.name)


def contains_failures(identify: Identify) -> Callable[[Handler], Handler]:
    """Decorator for a ClientApp handler: any exception becomes a failed reply (see the module docstring).

    ``identify`` names the site and its folder for the reply and the incident
    log; it must not raise.
    """

    def wrap(handler: Handler) -> Handler:
        @functools.wraps(handler)
        def guarded(msg: Message, context: Context) -> Message:
            try:
                return handler(msg, context)
            except Exception as err:  # noqa: BLE001  (kept whole in the site's incident log)
                return contain(msg, context, err, identify)

        return guarded

    return wrap


def failure_guard_mod(identify: Identify) -> Callable[[Message, Context, ClientAppCallable], Message]:
    """Outermost ClientApp mod: a mod that raises (the audit log) also yields a failed reply, not Flower's error text."""

    def guard(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
        try:
            return call_next(msg, context)
        except Exception as err:  # noqa: BLE001  (kept whole in the site's incident log)
            return contain(msg, context, err, identify)

    return guard
