"""The ServerApp's wait for replies: polled more often than Flower's 3 s, and stoppable.

Flower 1.41's deployment grid (``flwr/superlink/grid/http_grid.py``) pushes
a round's messages, then asks the SuperLink for replies every 3 s, a value
it does not let one set, and waits up to the round timeout with no way to be
told to stop. :class:`PollingGrid` wraps the grid a ServerApp receives and
does the same with Flower's public ``push_messages`` and ``pull_messages``
every :data:`POLL_INTERVAL_S`, giving up as soon as an :class:`Interruption`
(a simulation's signal handler) is requested: the next wait raises
:class:`~fedeye.errors.RunInterrupted` in the ServerApp, which records the
run ``interrupted`` and ends. Every other call goes to the wrapped grid.

>>> PollingGrid.__name__
'PollingGrid'
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any, Final

from flwr.app import Message
from flwr.serverapp import Grid

from fedeye.errors import RunInterrupted

POLL_INTERVAL_S: Final = 0.25


class Interruption:
    """A request to stop a run, made by a signal handler and seen by the ServerApp's thread."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signal = ""

    def request(self, signal_name: str) -> None:
        """Ask the run to stop (the first request names the signal)."""
        self.signal = self.signal or signal_name
        self.event.set()

    @property
    def requested(self) -> bool:
        return self.event.is_set()


class PollingGrid:
    """A grid whose ``send_and_receive`` polls for replies every ``interval`` seconds and watches ``stop``."""

    def __init__(self, grid: Grid, *, interval: float = POLL_INTERVAL_S, stop: Interruption | None = None) -> None:
        self._grid = grid
        self.interval = interval
        self._stop = stop

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def _check(self) -> None:
        if self._stop is not None and self._stop.requested:
            raise RunInterrupted(self._stop.signal)

    def get_node_ids(self) -> Iterable[int]:
        self._check()
        return self._grid.get_node_ids()

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Push ``messages``; pull replies until all arrived, ``timeout`` seconds passed, or a stop is requested."""
        self._check()
        waiting = set(self._grid.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while waiting:
            got = list(self._grid.pull_messages(waiting))
            replies.extend(got)
            waiting.difference_update(m.metadata.reply_to_message_id for m in got)
            if not waiting or (deadline is not None and time.monotonic() >= deadline):
                break
            self._check()
            time.sleep(self.interval)
        return replies
