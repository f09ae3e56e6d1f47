"""A Flower Grid that calls the ClientApp in this process: for benchmarks that run many federations.

The Simulation Engine starts Ray, its actors and a SuperLink state for every
run (about 20 s before the first round on two cores). The leave-one-site-out
benchmark runs dozens of short federations, so it drives the *same*
ServerApp body (:func:`fedeye.server.federation.run_federation`, the real
strategies) and the *same* ClientApp (mods included) through this grid,
which hands each message straight to the ClientApp with the node's own
persistent Flower ``Context``. What it leaves out is the transport: no
gRPC, no serialisation between processes, no parallel sites. Bytes are
counted as the serialised size of each message's arrays.
"""

from __future__ import annotations

import itertools
import time
import traceback
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from fedeye.protocol import SERVER_ROUND

#: Flower's error code for an exception raised inside a ClientApp.
CLIENT_APP_RAISED_EXCEPTION = 3


@dataclass
class Traffic:
    """Bytes of model arrays per node and round, in each direction."""

    down: dict[tuple[int, str], int] = field(default_factory=lambda: defaultdict(int))
    up: dict[tuple[int, str], int] = field(default_factory=lambda: defaultdict(int))

    def per_site_round(self, phase: str = "train") -> tuple[float, float]:
        """Mean bytes (coordinator -> site, site -> coordinator) per site per round of ``phase``."""
        down = [v for (_, g), v in self.down.items() if g.endswith(phase)]
        up = [v for (_, g), v in self.up.items() if g.endswith(phase)]
        return (sum(down) / max(len(down), 1), sum(up) / max(len(up), 1))


def arrays_nbytes(content: RecordDict) -> int:
    """Serialised bytes of every array in a message's content."""
    return sum(len(array.data) for record in content.array_records.values() for array in record.values())


class InlineGrid(Grid):
    """Flower ``Grid`` whose nodes are ClientApp calls in this process (see the module docstring).

    Parameters
    ----------
    app : ClientApp
        The ClientApp every node runs.
    node_configs : Mapping of int to dict
        Node id -> that node's node config (e.g. ``{"partition-id": 0}``).
    run_id : int
        The Flower run id the messages carry.
    """

    def __init__(self, app: ClientApp, node_configs: Mapping[int, dict[str, Any]], *, run_id: int = 1) -> None:
        self._app = app
        self._run = Run.create_empty(run_id)
        self._contexts = {
            node: Context(run_id=run_id, node_id=node, node_config=dict(cfg), state=RecordDict(), run_config={})
            for node, cfg in node_configs.items()
        }
        self._replies: dict[str, Message] = {}
        self.traffic = Traffic()
        self.seconds: dict[str, float] = defaultdict(float)  # wall time of each round's phase ("<round>/<phase>")

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid4())
            msg.metadata.__dict__["_run_id"] = self._run.run_id
            group = f"{_round_of(msg)}/{msg.metadata.message_type}"
            node = msg.metadata.dst_node_id
            self.traffic.down[(node, group)] += arrays_nbytes(msg.content)
            start = time.perf_counter()
            reply = self._call(msg)
            self.seconds[group] += time.perf_counter() - start
            if not reply.has_error():
                self.traffic.up[(node, group)] += arrays_nbytes(reply.content)
            self._replies[msg.metadata.message_id] = reply
            ids.append(msg.metadata.message_id)
        return ids

    def _call(self, msg: Message) -> Message:
        """Run the ClientApp; an exception becomes an error reply, as Flower's runtime makes it."""
        try:
            with _as_task(msg.metadata.dst_node_id):
                reply = self._app(msg, self._contexts[msg.metadata.dst_node_id])
        except Exception as err:  # noqa: BLE001  (the site's failure is the coordinator's data)
            reason = f"{type(err).__name__}: {err}\n{traceback.format_exc(limit=3)}"
            return Message(Error(code=CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg)
        return reply

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in list(message_ids) if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return list(self.pull_messages(self.push_messages(messages)))


_task_ids = itertools.count(1)


def _round_of(msg: Message) -> str:
    """The server round a message belongs to (strategies put it in the config), else its group id."""
    config = msg.content.config_records.get("config")
    return str(config[SERVER_ROUND]) if config is not None and SERVER_ROUND in config else msg.metadata.group_id


@contextmanager
def _as_task(node_id: int, run_id: int | None = None) -> Iterator[None]:
    """Messages are built inside a Flower task: act as one of ``node_id`` (and ``run_id``), then restore."""
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity._task_id, TaskIdentity._node_id = next(_task_ids), node_id
    if run_id is not None:
        TaskIdentity._run_id = run_id
    try:
        yield
    finally:
        TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


def serverapp_task(run_id: int = 1) -> AbstractContextManager[None]:
    """Act as a ServerApp task of ``run_id`` (node 0) while a benchmark drives the strategy."""
    return _as_task(0, run_id)
