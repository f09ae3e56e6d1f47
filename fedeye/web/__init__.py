"""What FedEye's two web pages share: the token check, security headers, look, and where they may listen.

The coordinator's dashboard (:mod:`fedeye.server.dashboard`) and a site's own
page (:mod:`fedeye.client.site_dashboard`) both build on this, so neither
imports the other. Every request, pages, scripts and API alike, needs the
access token: as ``?token=`` once (the server answers with an HttpOnly,
SameSite=Strict cookie and a redirect to the same path without the token, so
it does not stay in the address bar or history), as that cookie, or as
``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import ipaddress
import secrets
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from fedeye.errors import ConfigError

COMMON_STATIC = Path(__file__).parent / "static"  #: the shared stylesheet and icon, served at /common
TOKEN_COOKIE = "fedeye-dashboard-token"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
ANY_HOST = "*"  # a page bound to every interface (0.0.0.0) cannot know the names it is reached by
MIN_TOKEN_LENGTH = 16
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
<title>FedEye: access token needed</title></head>
<body style="font-family:system-ui,sans-serif;max-width:40rem;margin:4rem auto;color:#1f2933">
<h1>401: access token needed</h1>
<p>This page shows results derived from patient data, so every page needs
the access token printed by the command that started it.</p>
<p>Open the address it printed (it ends in <code>?token=...</code>), or restart it
with <code>--token YOUR-TOKEN</code>.</p></body></html>"""

Handler = Callable[[Request], Awaitable[Response]]


def protect(app: FastAPI, *, token: str, hosts: Sequence[str] = LOOPBACK_HOSTS) -> None:
    """Require ``token`` on every request of ``app``, answer only to ``hosts``, serve the shared look at ``/common``.

    ``hosts``: names a request's ``Host`` header may give (without port);
    ``"*"`` accepts any (see :func:`allowed_hosts`). Requests naming another
    server are refused (DNS rebinding).
    """
    if not token:
        raise ValueError("a FedEye web page needs a non-empty access token")
    app.middleware("http")(_token_guard(token))
    app.middleware("http")(_host_guard(hosts))  # added last, so it runs first
    app.mount("/common", StaticFiles(directory=COMMON_STATIC), name="common")


def allowed_hosts(bind_host: str) -> tuple[str, ...]:
    """``Host`` names to accept for a page listening on ``bind_host``.

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
        detail = f"this page answers to {sorted(accepted)} only; open it by one of those names"
        return JSONResponse({"detail": detail}, status_code=400, headers=SECURITY_HEADERS)

    return guard


def _host_name(header: str) -> str:
    try:
        return (urlsplit(f"//{header}").hostname or "").lower()
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return ""


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


def check_token(token: str | None, *, env_var: str) -> None:
    """Refuse a given token shorter than :data:`MIN_TOKEN_LENGTH` characters.

    Raises
    ------
    ConfigError
        The token is too short to resist guessing.
    """
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        raise ConfigError(
            f"--token (or {env_var}) has {len(token)} character(s); use at least {MIN_TOKEN_LENGTH}, "
            "e.g. python -c 'import secrets; print(secrets.token_urlsafe(24))', or omit it for a random one"
        )


def check_listen_host(host: str, *, token_given: bool, default: str = "127.0.0.1") -> None:
    """Refuse a non-loopback address unless the token was given explicitly.

    Raises
    ------
    ConfigError
        ``host`` is reachable from other machines and no ``--token`` was given.
    """
    if is_loopback(host) or token_given:
        return
    raise ConfigError(
        f"--host {host!r} is reachable from other machines and the page shows results derived from patient "
        "data over plain HTTP; pass --token YOUR-TOKEN explicitly to expose it (ideally behind a TLS reverse "
        f"proxy), or keep the default --host {default}"
    )


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
