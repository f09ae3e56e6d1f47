"""A loopback deployment with site workers: a worker killed mid-round costs its site that round, not the run.

Three sites start with `fedeye site start` (each with its warm worker). In
round 2, while site-3's worker trains, it is SIGKILLed: the ClientApp of the
message in flight answers ``failed`` / ``worker-unavailable`` at once, the
round completes with the other two sites, `site start` starts a new worker,
and the next round includes site-3 again.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from fedeye.client.worker import ping
from fedeye.sites.base import open_site
from tests.deploy_runtime.test_loopback import (  # noqa: F401 - the fixture is used by name
    Federation,
    _detail,
    _online,
    _start_coordinator,
    _start_site,
    _wait,
    federation,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="reads worker CPU time from /proc"),
]


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _kill_when_busy(pid: int, fed: Federation, *, timeout: float = 240.0) -> None:
    """SIGKILL ``pid`` once it is using CPU (it is handling a message)."""
    deadline = time.monotonic() + timeout
    before = _cpu_ticks(pid)
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = _cpu_ticks(pid)
        if now - before >= 5:  # >= 50 ms of CPU in 200 ms
            os.kill(pid, signal.SIGKILL)
            return
        before = now
    raise AssertionError(f"the worker never got busy\n{fed.logs()}")


def _run_file(fed: Federation) -> Path:
    path = fed.root / "run.toml"
    path.write_text(  # 20 local epochs: each training message keeps the worker busy for a few seconds
        'name = "worker-kill"\n[model]\narch = "vit-tiny-cpu"\nimg_size = 32\n'
        "[training]\nrounds = 3\nlocal_epochs = 20\nbatch_size = 16\n"
        "[strategy]\nround_timeout = 120.0\nmin_train_nodes = 2\nmin_evaluate_nodes = 2\nmin_available_nodes = 3\n"
        '[output]\ndir = "out"\n'
    )
    return path


def test_killed_worker_fails_its_site_for_one_round_and_comes_back(federation: Federation, tiny_sites: Path) -> None:
    fed = federation
    names = {open_site(d).info.name for d in tiny_sites.iterdir()}
    site3 = open_site(sorted(tiny_sites.iterdir())[2]).info.name
    _start_coordinator(fed)
    for i in (1, 2, 3):
        _start_site(fed, i)
    _wait("three sites online", lambda: _online(fed, 3), fed)
    socket3 = fed.root / "site-3" / "state" / "worker.sock"
    first_worker = ping(socket3)
    assert first_worker is not None, fed.log("site-3")

    launched = fed.fedeye(
        "run", "launch", "--config", str(_run_file(fed)), "--superlink", fed.address, "--ca", "coord/ca.crt"
    )
    assert launched.returncode == 0, launched.stdout + launched.stderr + fed.logs()
    run_id = launched.stdout.split("FedEye run ", 1)[1].split()[0]
    _wait(
        "round 1 evaluated by all sites",
        lambda: (
            len({m.site for m in _detail(fed, run_id).site_metrics if m.server_round == 1 and m.phase == "evaluate"})
            == 3
        ),
        fed,
    )

    # Execute: kill site-3's worker while it trains in round 2
    _kill_when_busy(first_worker, fed)
    _wait("the run to finish", lambda: _detail(fed, run_id).run.status != "running", fed, timeout=300)

    # Assert: round 2 went on without site-3 (failed: worker-unavailable), round 3 has all three
    detail = _detail(fed, run_id)
    assert (detail.run.status, detail.run.rounds_done) == ("finished", 3), (detail.run, fed.logs())
    round2 = {(m.site, m.status, m.reason) for m in detail.site_metrics if m.server_round == 2 and m.phase == "train"}
    assert (site3, "failed", "worker-unavailable") in round2, round2
    assert {s for s, status, _ in round2 if status == "ok"} == names - {site3}
    assert {
        m.site for m in detail.site_metrics if m.server_round == 3 and m.phase == "train" and m.status == "ok"
    } == names
    second_worker = ping(socket3)
    assert second_worker is not None and second_worker != first_worker
    assert "site worker restarted" in fed.log("site-3", tail=None), fed.log("site-3")
