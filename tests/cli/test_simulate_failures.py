"""`fedeye simulate` fails loudly: a run whose sites all fail exits 1 with its reason; Ctrl-C leaves it interrupted."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedeye.server.store import RunStore
from tests.conftest import tiny_run_toml

SECRET = "MRN-483920-Doe"


def _simulate(run_file: Path, home: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "COLUMNS": "200", "FEDEYE_HOME": str(home)}
    return subprocess.Popen(
        [sys.executable, "-m", "fedeye.cli", "simulate", "--config", str(run_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def _two_sites(tiny_sites: Path, root: Path) -> Path:
    for name in ("site-1", "site-2"):
        shutil.copytree(tiny_sites / name, root / name)
    return root


@pytest.mark.slow
def test_run_whose_sites_all_fail_exits_1_with_the_reason(tmp_path: Path, tiny_sites: Path) -> None:
    sites = _two_sites(tiny_sites, tmp_path / SECRET)
    for site in sites.iterdir():  # a site policy the site cannot read: a config-error at the site, every message
        (site / "fedeye-site.toml").write_text("[privacy]\nnot_a_setting = 1\n")
    run_file = tiny_run_toml(tmp_path / "run.toml", sites=sites, out=tmp_path / "out", rounds=1)

    proc = _simulate(run_file, tmp_path / "home")
    out, err = proc.communicate(timeout=600)

    assert proc.returncode == 1, out + err
    assert "round 1: 0 of 2 sites trained, min_train_nodes = 2; failed: " in err and "config-error (incident " in err
    assert "Traceback" not in out + err
    (run,) = RunStore(f"sqlite:///{tmp_path / 'out' / 'fedeye.db'}").list_runs()
    assert run.status == "failed" and run.error is not None and run.error.startswith("round 1: 0 of 2")
    detail = RunStore(f"sqlite:///{tmp_path / 'out' / 'fedeye.db'}").get_run(run.run_id)
    assert not [m for m in detail.site_metrics if SECRET in repr(m)]


@pytest.mark.slow
def test_ctrl_c_during_simulate_leaves_the_run_interrupted(tmp_path: Path, tiny_sites: Path) -> None:
    sites = _two_sites(tiny_sites, tmp_path / "sites")
    run_file = tiny_run_toml(tmp_path / "run.toml", sites=sites, out=tmp_path / "out", rounds=30)
    db = tmp_path / "out" / "fedeye.db"
    proc = _simulate(run_file, tmp_path / "home")
    try:
        run_id = _wait_for_first_round(db, proc)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=180)
    finally:
        proc.kill()

    assert proc.returncode == 130, out + err
    assert "interrupted" in err and "Traceback" not in out + err
    run = RunStore(f"sqlite:///{db}").get_run(run_id).run
    assert run.status == "interrupted" and run.error == "the run was interrupted by SIGINT"
    assert run.rounds_done < 30


def _wait_for_first_round(db: Path, proc: subprocess.Popen[str], timeout: float = 300) -> str:
    """The run id, once the run's first round has site replies recorded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if db.is_file():
            runs = RunStore(f"sqlite:///{db}").list_runs()
            if runs and RunStore(f"sqlite:///{db}").site_metrics(runs[0].run_id):
                return runs[0].run_id
        time.sleep(0.5)
    raise AssertionError("the first round never started")
