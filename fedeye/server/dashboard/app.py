"""The dashboard's FastAPI application: token check, pages, JSON API.

Every route is a ``GET``; nothing writes to the store. Every request needs
the access token, and only this server's names are answered (see :mod:`fedeye.web`).

>>> from fastapi.testclient import TestClient
>>> client = TestClient(create_app("sqlite://", token="t0ken"), base_url="http://127.0.0.1")
>>> client.get("/api/runs").status_code
401
>>> client.get("/api/runs", headers={"Authorization": "Bearer t0ken"}).json()
[]
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from fedeye.errors import StoreError
from fedeye.server.dashboard.panels import run_panels, summary_json
from fedeye.server.store import RunStore
from fedeye.web import LOOPBACK_HOSTS, protect

STATIC_DIR = Path(__file__).parent / "static"


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
    store = RunStore(store_url)
    app = FastAPI(title="FedEye dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    protect(app, token=token, hosts=hosts)
    _add_pages(app)
    _add_api(app, store)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


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
