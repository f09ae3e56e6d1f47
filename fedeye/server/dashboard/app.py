"""The dashboard's FastAPI application: token check, pages, JSON API.

Every route is a ``GET``; nothing writes to the store. Every request, pages,
scripts and API alike, needs the access token: as ``?token=`` once (the
server answers with an HttpOnly, SameSite=Strict cookie and a redirect to the
same address without the token, so it does not stay in the address bar or
history), as that cookie, or as ``Authorization: Bearer <token>``. Requests
whose ``Host`` header names another server are refused (DNS rebinding), and
the redirect never leaves this server (no open redirect through ``//host``).

>>> from fastapi.testclient import TestClient
>>> client = TestClient(create_app("sqlite://", token="t0ken"), base_url="http://127.0.0.1")
>>> client.get("/api/runs").status_code
401
>>> client.get("/api/runs", headers={"Authorization": "Bearer t0ken"}).json()
[]
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from fedeye.errors import StoreError
from fedeye.server.dashboard.panels import run_panels, summary_json
from fedeye.server.store import RunStore

STATIC_DIR = Path(__file__).parent / "static"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
ANY_HOST = "*"  # a dashboard bound to every interface (0.0.0.0) cannot know the names it is reached by
TOKEN_COOKIE = "fedeye-dashboard-token"
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_UNAUTHORIZED_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>FedEye dashboard: access token needed</title></head>
<body style="font-family:system-ui,sans-serif;max-width:40rem;margin:4rem auto;color:#1f2933">
<h1>401: access token needed</h1>
<p>This dashboard shows results derived from patient data, so every page needs
the access token printed by <code>fedeye dashboard</code> when it started.</p>
<p>Open the address it printed (it ends in <code>?token=...</code>), or restart it
with <code>fedeye dashboard --token YOUR-TOKEN</code>.</p></body></html>"""

Handler = Callable[[Request], Awaitable[Response]]


def create_app(store_url: str, *, token: str, hosts: Sequence[str] = LOOPBACK_HOSTS) -> FastAPI:
    """Return the read-only dashboard over the run store at ``store_url``.

    Parameters
    ----------
    store_url
        SQLAlchemy URL of the run store (see :func:`~fedeye.server.store.resolve_db_url`).
    token
        The access token every request must carry; never empty.
    hosts
        Names a request's ``Host`` header may give (without port); ``"*"``
        accepts any. See :func:`allowed_hosts`.
    """
    if not token:
        raise ValueError("the dashboard needs a non-empty access token")
    store = RunStore(store_url)
    app = FastAPI(title="FedEye dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    app.middleware("http")(_token_guard(token))
    app.middleware("http")(_host_guard(hosts))  # added last, so it runs first
    _add_pages(app)
    _add_api(app, store)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


# -------------------------------------------------------------------------- hosts


def allowed_hosts(bind_host: str) -> tuple[str, ...]:
    """``Host`` names to accept for a dashboard listening on ``bind_host``.

    >>> allowed_hosts("10.0.0.5")
    ('10.0.0.5', '127.0.0.1', 'localhost', '::1')
    """
    if bind_host in ("0.0.0.0", "::", ""):
        return (ANY_HOST,)
    return tuple(dict.fromkeys((bind_host.strip("[]"), *LOOPBACK_HOSTS)))


def _host_guard(hosts: Sequence[str]) -> Callable[[Request, Handler], Awaitable[Response]]:
    accepted = {h.lower() for h in hosts}

    async def guard(request: Request, call_next: Handler) -> Response:
        if ANY_HOST in accepted or _host_name(request.headers.get("host", "")) in accepted:
            return await call_next(request)
        detail = f"this dashboard answers to {sorted(accepted)} only; open it by one of those names"
        return JSONResponse({"detail": detail}, status_code=400, headers=SECURITY_HEADERS)

    return guard


def _host_name(header: str) -> str:
    try:
        return (urlsplit(f"//{header}").hostname or "").lower()
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return ""


# -------------------------------------------------------------------------- token


def _token_guard(token: str) -> Callable[[Request, Handler], Awaitable[Response]]:
    async def guard(request: Request, call_next: Handler) -> Response:
        given = request.query_params.get("token")
        if given is not None and _same(given, token) and not request.url.path.startswith("/api/"):
            return _cookie_redirect(request, token)
        if not any(_same(candidate, token) for candidate in _candidates(request)):
            return _unauthorized(request)
        response = await call_next(request)
        response.headers.update(SECURITY_HEADERS)
        return response

    return guard


def _candidates(request: Request) -> list[str]:
    found = [request.query_params.get("token"), request.cookies.get(TOKEN_COOKIE)]
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer":
        found.append(credentials.strip())
    return [value for value in found if value]


def _same(given: str, token: str) -> bool:
    return secrets.compare_digest(given.encode(), token.encode())


def _cookie_redirect(request: Request, token: str) -> Response:
    """Swap ``?token=`` for a cookie so the token leaves the address bar."""
    query = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "token"])
    path = "/" + request.url.path.lstrip("/\\")  # "//other.host" would leave this server
    target = path + (f"?{query}" if query else "")
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict", path="/")
    response.headers.update(SECURITY_HEADERS)
    return response


def _unauthorized(request: Request) -> Response:
    headers = {**SECURITY_HEADERS, "WWW-Authenticate": "Bearer"}
    if request.url.path.startswith("/api/"):
        detail = "missing or wrong access token; send it as 'Authorization: Bearer <token>'"
        return JSONResponse({"detail": detail}, status_code=401, headers=headers)
    return Response(_UNAUTHORIZED_PAGE, status_code=401, media_type="text/html", headers=headers)


# -------------------------------------------------------------------------- pages


def _add_pages(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    def runs_page() -> FileResponse:
        return FileResponse(STATIC_DIR / "runs.html")

    @app.get("/runs/{run_id}", include_in_schema=False)
    def run_page(run_id: str) -> FileResponse:
        return FileResponse(STATIC_DIR / "run.html")


# ---------------------------------------------------------------------------- API


def _add_api(app: FastAPI, store: RunStore) -> None:
    @app.get("/api/runs")
    def list_runs() -> Any:
        try:
            return [summary_json(run) for run in store.list_runs()]
        except StoreError as exc:
            return _store_down(exc)

    @app.get("/api/runs/{run_id}")
    def get_run(run_id: str) -> Any:
        try:
            if run_id not in {run.run_id for run in store.list_runs()}:
                detail = f"no run {run_id!r} in this store; the runs list is at /api/runs"
                return JSONResponse({"detail": detail}, status_code=404)
            return run_panels(store.get_run(run_id))
        except StoreError as exc:
            return _store_down(exc)


def _store_down(exc: StoreError) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=503)
