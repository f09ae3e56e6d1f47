"""A site's own page (``fedeye site dashboard``): what runs asked for its data, what each did, what left.

Read-only, loopback by default, with the same token rules and look as the
coordinator's dashboard (:mod:`fedeye.web`). It reads only the site's own
records: its approval requests, its audit log of outgoing messages, its
privacy ledger and data cache when present. Decisions are taken with
``fedeye site approve`` / ``deny``, not here (the page never writes).

>>> from fastapi.testclient import TestClient  # doctest: +SKIP
>>> TestClient(create_site_app(site_home(Path("site")), token="t" * 24)).get("/api/site").status_code  # doctest: +SKIP
401
"""

from __future__ import annotations

from dataclasses import asdict
from functools import lru_cache
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from fedeye.client.admin import SiteHome, run_rows
from fedeye.client.audit import AuditEntry, read_audit, read_decisions
from fedeye.client.status import SiteStatusReport, site_status
from fedeye.protocol import SITE, SITE_STATUS
from fedeye.web import protect

STATIC_DIR = Path(__file__).parent / "site_static"
RECENT = 50  #: outgoing messages shown


def create_site_app(home: SiteHome, *, token: str) -> FastAPI:
    """The site page over ``home``'s records."""
    app = FastAPI(title="FedEye site", docs_url=None, redoc_url=None, openapi_url=None)
    protect(app, token=token)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "site.html")

    @app.get("/api/site")
    def site() -> dict[str, Any]:
        return site_json(home)

    @app.get("/api/check")
    def check() -> dict[str, Any]:
        return _data_check(str(home.config.data or home.folder))

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def site_json(home: SiteHome) -> dict[str, Any]:
    """Everything the site page shows, from the site's own records."""
    rows = run_rows(home)
    status = site_status(home.folder, latest=0)
    return {
        "site": {
            "folder": str(home.folder),
            "deployed": home.deployed,
            "approval": home.config.approval.mode,
            "epsilon_per_run": home.config.privacy.epsilon,
        },
        "privacy": _privacy(status),
        "runtime": status.runtime,
        "pending": [asdict(r) for r in rows if r.status == "pending"],
        "runs": [asdict(r) for r in rows],
        "decisions": list(reversed(read_decisions(home.audit_log)))[:RECENT],
        "outgoing": [_outgoing(e) for e in reversed(read_audit(home.audit_log)[-RECENT:])],
    }


def _privacy(status: SiteStatusReport) -> dict[str, Any]:
    """Epsilon spent per run and over the site's lifetime (its ledger), against the policy's two budgets."""
    return {
        "accountant": status.accountant,
        "run_budget": status.run_budget,
        "lifetime_budget": status.lifetime_budget,
        "lifetime_epsilon": status.lifetime_epsilon,
        "delta": status.lifetime_delta,
        "runs": [
            {"run": r.run, "rounds": len(r.rounds), "epsilon": r.epsilon, "delta": r.delta, "booked": r.booked}
            for r in status.runs
        ],
    }


def _outgoing(entry: AuditEntry) -> dict[str, Any]:
    tensors = [name for record in entry["arrays"].values() for name in record]
    metrics = {k: v for record in entry["metrics"].values() for k, v in record.items()}
    return {
        "time": entry["time"],
        "run": entry.get("run") or f"flower-{entry['run_id']}",
        "round": entry["server_round"],
        "type": entry["message_type"],
        "status": _site_status(entry),
        "bytes": entry["payload_bytes"],
        "tensors": len(tensors),
        "tensor_names": tensors[:8],
        "metrics": metrics,
        "epsilon": entry["epsilon"],
    }


def _site_status(entry: AuditEntry) -> str:
    """The status the site declared in the reply (ok, awaiting-approval, ...), or the error."""
    if entry["status"] != "ok":
        return entry["status"]
    return str(entry["configs"].get(SITE, {}).get(SITE_STATUS, "ok"))


@lru_cache(maxsize=4)
def _data_check(data: str) -> dict[str, Any]:
    """The site data check (decodes every image once; cached for the page's lifetime)."""
    from fedeye.sites.check import check_site

    report = check_site(Path(data))
    summary = report.summary
    return {
        "ok": report.ok,
        "format": report.format_name,
        "images": summary.num_samples if summary else 0,
        "patients": summary.num_patients if summary else 0,
        "per_split": summary.per_split if summary else {},
        "problems": [str(p) for p in report.problems][:20],
    }
