"""The one way FedEye waits for something outside it: poll a check until it answers or time runs out.

>>> calls = iter([None, None, "ready"])
>>> wait_until(lambda: next(calls), timeout=5, interval=0)
'ready'
>>> wait_until(lambda: None, timeout=0, interval=0) is None
True
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(
    check: Callable[[], T | None], *, timeout: float, interval: float, on_wait: Callable[[], None] | None = None
) -> T | None:
    """Call ``check`` every ``interval`` seconds until it returns something other than None.

    Returns that value, or None when ``timeout`` seconds passed first (``check``
    runs at least once). ``on_wait`` runs before each sleep (a progress note).
    """
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found is not None or time.monotonic() >= deadline:
            return found
        if on_wait is not None:
            on_wait()
        time.sleep(interval)
