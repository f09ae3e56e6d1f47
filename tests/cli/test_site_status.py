"""`fedeye site status`: a site's spending and audit, read from its own files."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedeye.cli.main import app
from fedeye.client.audit import AuditEntry, append_entry
from fedeye.client.ledger import SiteLedger
from fedeye.client.state import deployment_state, simulated_state
from fedeye.privacy.ledger import LedgerEntry, epsilon_per_run, lifetime_epsilon

runner = CliRunner()


@pytest.fixture(autouse=True)
def site_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FEDEYE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _entry(run: str, rnd: int, sigma: float = 1.0) -> LedgerEntry:
    return LedgerEntry(
        run=run,
        server_round=rnd,
        noise_multiplier=sigma,
        sample_rate=0.2,
        steps=5,
        delta=1e-3,
        accountant="rdp",
        data_fingerprint="f" * 64,
        recorded_at=datetime(2025, 5, 1, tzinfo=UTC),
    )


def _fill(ledger: SiteLedger) -> list[LedgerEntry]:
    entries = [_entry("r-a", 1), _entry("r-a", 2), _entry("r-b", 1, sigma=1.5)]
    for entry in entries:
        ledger.append(entry)
    return entries


def _audit_entry(run_id: int) -> AuditEntry:
    return AuditEntry(
        time="2025-05-01T00:00:00.000+00:00",
        run_id=run_id,
        run=None,
        node_id=7,
        server_round=1,
        message_type="train",
        status="ok",
        error=None,
        records={},
        arrays={},
        metrics={},
        configs={},
        payload_bytes=123,
        payload_sha256="0" * 64,
        epsilon=0.5,
    )


def test_simulated_site_status_json_shows_runs_and_lifetime(tiny_sites: Path, tmp_path: Path) -> None:
    site = tiny_sites / "site-2"
    state = simulated_state(site).ensure()
    entries = _fill(SiteLedger(state.ledger_path))
    append_entry(state.audit_log, _audit_entry(42))

    result = runner.invoke(app, ["site", "status", str(site), "--json"])

    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert (
        report["kind"] == "simulation"
        and report["runtime"]["worker"] == "not running"
        and report["runtime"]["cache"].startswith("not built")
    )
    per_run = epsilon_per_run(entries, accountant="rdp")
    assert [(r["run"], r["rounds"]) for r in report["runs"]] == [("r-a", [1, 2]), ("r-b", [1])]
    assert [r["epsilon"] for r in report["runs"]] == pytest.approx([per_run["r-a"], per_run["r-b"]])
    assert report["lifetime_epsilon"] == pytest.approx(lifetime_epsilon(entries, accountant="rdp"))
    assert report["audit_runs"] == [42] and report["audit"][0]["payload_bytes"] == 123


def test_deployment_site_status_reads_the_init_folder(tiny_sites: Path, tmp_path: Path) -> None:
    init = tmp_path / "site"
    init.mkdir()
    (init / "node.pub").write_text("ecdsa-sha2-nistp384 AAAA\n")
    (init / "site.toml").write_text(
        f'data = "{tiny_sites / "site-1"}"\naudit_log = "{init / "audit.jsonl"}"\n'
        "[privacy]\nepsilon = 3.0\nlifetime_epsilon = 10.0\n"
    )
    _fill(SiteLedger(deployment_state(init / "site.toml").ensure().ledger_path))

    result = runner.invoke(app, ["site", "status", str(init)])  # piped: plain text

    assert result.exit_code == 0, result.output
    assert "site: site (deployment)" in result.output
    assert "budgets: per run 3, lifetime 10" in result.output
    assert "r-a: epsilon" in result.output and "r-b: epsilon" in result.output
    assert "lifetime epsilon: " in result.output and " of 10" in result.output


def test_a_folder_that_is_not_a_site_exits_1(tmp_path: Path) -> None:
    result = runner.invoke(app, ["site", "status", str(tmp_path)])
    assert result.exit_code == 1
    assert "is not a site" in " ".join(result.output.split())
