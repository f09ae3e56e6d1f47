"""Run approval in a real deployment: a site in manual mode keeps its data out until its admin approves.

Three sites start with `fedeye site start`; site-3's `site.toml` says
``[approval] mode = "manual"``. The run is launched as usual:

1. site-3 answers round 1 with ``awaiting-approval`` (the coordinator's store
   and `fedeye run status` show it; the round goes on with the other two);
   the request waits in `fedeye site runs`;
2. the admin runs `fedeye site approve RUN --dir site-3`: site-3 trains from
   a later round on; its audit log holds the decision.

Simulation is covered by tests/client/test_approval.py and the site page's
browser test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedeye.sites.base import open_site
from tests.deploy_runtime.test_loopback import (  # noqa: F401 - the fixture is used by name
    Federation,
    _detail,
    _online,
    _run_file,
    _start_coordinator,
    _start_site,
    _wait,
    federation,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="finds Flower's detached processes through /proc"),
]


def _train_status(fed: Federation, run_id: str, site: str) -> dict[int, str]:
    """Round -> the status site-3's train reply was recorded with."""
    return {
        m.server_round: m.status for m in _detail(fed, run_id).site_metrics if m.site == site and m.phase == "train"
    }


def test_a_manual_site_waits_for_its_admin_then_joins(federation: Federation, tiny_sites: Path) -> None:
    fed = federation
    site3 = open_site(sorted(tiny_sites.iterdir())[2]).info.name
    site_toml = fed.root / "site-3" / "site.toml"
    site_toml.write_text(site_toml.read_text() + '\n[approval]\nmode = "manual"\n')
    _start_coordinator(fed)
    for i in (1, 2, 3):
        _start_site(fed, i)
    _wait("three sites online", lambda: _online(fed, 3), fed)

    # Execute 1: launch; site-3 is asked and waits for its admin
    launched = fed.fedeye(
        "run", "launch", "--config", str(_run_file(fed, rounds=3)), "--superlink", fed.address, "--ca", "coord/ca.crt"
    )
    assert launched.returncode == 0, launched.stdout + launched.stderr + fed.logs()
    run_id = launched.stdout.split("FedEye run ", 1)[1].split()[0]
    _wait("site-3's round-1 answer", lambda: 1 in _train_status(fed, run_id, site3), fed)

    # Assert 1: the coordinator records it, and the site lists the request as pending
    assert _train_status(fed, run_id, site3)[1] == "awaiting-approval"
    status = fed.fedeye("run", "status", run_id, "--db", str(fed.root / "out" / "fedeye.db"))
    assert status.returncode == 0 and "awaiting-approval" in status.stdout, status.stdout + status.stderr
    listed = fed.fedeye("site", "runs", "--dir", "site-3", "--json")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    rows = {row["run"]: row for row in json.loads(listed.stdout)}
    assert rows[run_id]["status"] == "pending" and rows[run_id]["name"] == "loopback", rows

    # Execute 2: the admin approves
    approved = fed.fedeye("site", "approve", run_id, "--dir", "site-3")
    assert approved.returncode == 0, approved.stdout + approved.stderr
    _wait("the run to finish", lambda: _detail(fed, run_id).run.status != "running", fed, timeout=400)

    # Assert 2: site-3 trained in a later round; nothing it sent before the approval held a model
    detail = _detail(fed, run_id)
    assert (detail.run.status, detail.run.rounds_done) == ("finished", 3), (detail.run, fed.logs())
    trained = _train_status(fed, run_id, site3)
    assert any(status == "ok" for rnd, status in trained.items() if rnd > 1), trained
    first_ok = min(rnd for rnd, status in trained.items() if status == "ok")
    assert all(trained[rnd] == "awaiting-approval" for rnd in trained if rnd < first_ok), trained
    listed = json.loads(fed.fedeye("site", "runs", "--dir", "site-3", "--json").stdout)
    row = next(r for r in listed if r["run"] == run_id)
    assert row["status"] == "approved" and row["rounds_joined"] == sum(s == "ok" for s in trained.values()), row
