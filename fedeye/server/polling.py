"""The ServerApp's wait for replies, polled more often than Flower's 3 s.

Flower 1.41's deployment grid (``flwr/superlink/grid/http_grid.py``) pushes
a round's messages, then asks the SuperLink for replies every 3 s, a value
it does not let one set. :class:`PollingGrid` wraps the grid a ServerApp
receives and does the same with Flower's public ``push_messages`` and
``pull_messages`` every :data:`POLL_INTERVAL_S`; every other call goes to the
wrapped grid.

>>> PollingGrid.__name__
'PollingGrid'
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, Final

from flwr.app import Message
from flwr.serverapp import Grid

POLL_INTERVAL_S: Final = 0.25


class PollingGrid:
    """A grid whose ``send_and_receive`` polls for replies every ``interval`` seconds."""

    def __init__(self, grid: Grid, *, interval: float = POLL_INTERVAL_S) -> None:
        self._grid = grid
        self.interval = interval

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Push ``messages``; pull replies until all arrived or ``timeout`` seconds passed."""
        waiting = set(self._grid.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while waiting:
            got = list(self._grid.pull_messages(waiting))
            replies.extend(got)
            waiting.difference_update(m.metadata.reply_to_message_id for m in got)
            if not waiting or (deadline is not None and time.monotonic() >= deadline):
                break
            time.sleep(self.interval)
        return replies

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)
