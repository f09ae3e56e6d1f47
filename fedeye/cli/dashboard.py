"""``fedeye dashboard``: serve the read-only web dashboard over a run store.

The lead CLI mounts it with ``app.command("dashboard")(dashboard_command)``.

Access: every page and API call needs a token. Without ``--token`` a fresh one
is generated and printed with the address to open. The server listens on
127.0.0.1 unless ``--host`` says otherwise; a non-loopback ``--host`` (such as
0.0.0.0) is refused unless the token is given explicitly with ``--token``,
because the dashboard shows results derived from patient data and speaks plain
HTTP (put it behind a TLS reverse proxy when other machines must reach it).
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Annotated

import typer
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from fedeye.cli._common import console, exits_cleanly
from fedeye.cli.runs import DbOption, default_store_dir
from fedeye.errors import ConfigError, StoreError
from fedeye.server.store import mask_url, resolve_db_url
from fedeye.web import check_listen_host, check_token

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
TOKEN_ENV_VAR = "FEDEYE_DASHBOARD_TOKEN"
MIN_TOKEN_LENGTH = 16


@exits_cleanly
def dashboard_command(
    db: DbOption = None,
    host: Annotated[
        str, typer.Option(help="Address to listen on; non-loopback needs an explicit --token.")
    ] = DEFAULT_HOST,
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port to listen on.")] = DEFAULT_PORT,
    token: Annotated[
        str | None,
        typer.Option(
            envvar=TOKEN_ENV_VAR,
            help="Access token (default: a fresh random one, printed at start).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Serve a read-only web dashboard of recorded runs (token-protected)."""
    import uvicorn

    from fedeye.server.dashboard.app import create_app
    from fedeye.web import allowed_hosts

    check_listen_host(host, token_given=bool(token), default=DEFAULT_HOST)
    check_token(token, env_var=TOKEN_ENV_VAR)
    url = resolve_db_url(db, default_dir=default_store_dir(), create=False)
    _require_existing_store(url)
    access = token or secrets.token_urlsafe(24)
    app = create_app(url, token=access, hosts=allowed_hosts(host))
    shown_host = f"[{host}]" if ":" in host else host
    console.print(f"FedEye dashboard over [bold]{mask_url(url)}[/] (read-only)")
    console.print(f"open [bold]http://{shown_host}:{port}/?token={access}[/]  (Ctrl+C to stop)", soft_wrap=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", server_header=False)


def _check_token(token: str | None) -> None:
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        raise ConfigError(
            f"--token (or {TOKEN_ENV_VAR}) has {len(token)} character(s); use at least {MIN_TOKEN_LENGTH}, "
            "e.g. python -c 'import secrets; print(secrets.token_urlsafe(24))', or omit it for a random one"
        )


def _require_existing_store(url: str) -> None:
    """A dashboard only reads: refuse a SQLite file that does not exist yet."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return
    if parsed.get_backend_name() == "sqlite" and parsed.database and not Path(parsed.database).exists():
        raise StoreError(
            f"no run store at {parsed.database}; record a run first with `fedeye simulate` or "
            "`fedeye demo`, or point --db at an existing store"
        )
