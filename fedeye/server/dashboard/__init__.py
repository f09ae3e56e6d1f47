"""``fedeye dashboard``: a read-only web view of the run store.

:func:`create_app` builds the FastAPI application; :mod:`.panels` turns a
:class:`~fedeye.server.store.RunDetail` into the JSON each panel draws (pure
functions, no I/O); ``static/`` holds the page's own scripts and styles (no
CDN, nothing fetched from elsewhere).
"""

from __future__ import annotations

from fedeye.server.dashboard.app import create_app
from fedeye.web import TOKEN_COOKIE

__all__ = ["TOKEN_COOKIE", "create_app"]
