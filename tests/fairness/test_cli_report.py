"""``fedeye report RUN_ID --out DIR`` driven through typer's CliRunner."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from fedeye.cli.report import report_command
from fedeye.server.store import RunStore
from tests.fairness.conftest import fill_store


@pytest.fixture
def app() -> typer.Typer:
    """Mounted the way the lead CLI does: ``app.command("report")(report_command)``."""
    root = typer.Typer()
    root.command("report")(report_command)
    root.command("other")(lambda: None)  # keep typer in multi-command mode, like the real CLI
    return root


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.delenv("FEDEYE_DB", raising=False)
    return CliRunner()


def test_report_command_writes_the_report(app: typer.Typer, runner: CliRunner, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    with RunStore(db) as store:
        run_id = fill_store(store)
    result = runner.invoke(app, ["report", run_id[:12], "--out", str(tmp_path / "rep"), "--db", db])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "rep" / "report.html").is_file() and (tmp_path / "rep" / "report.md").is_file()
    assert "report.html" in result.output


def test_db_from_environment(app: typer.Typer, runner: CliRunner, tmp_path: Path) -> None:
    db = str(tmp_path / "env.db")
    with RunStore(f"sqlite:///{db}") as store:
        run_id = fill_store(store, with_privacy=False)
    result = runner.invoke(app, ["report", run_id, "--out", str(tmp_path / "rep")], env={"FEDEYE_DB": db})
    assert result.exit_code == 0, result.output


def test_unknown_run_id_exits_1_with_a_message(app: typer.Typer, runner: CliRunner, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    RunStore(db).close()
    result = runner.invoke(app, ["report", "r-nope", "--out", str(tmp_path / "rep"), "--db", db])
    assert result.exit_code == 1
    assert "error" in result.output and "r-nope" in result.output
    assert not (tmp_path / "rep").exists()


def test_out_is_a_file_exits_1(app: typer.Typer, runner: CliRunner, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'runs.db'}"
    with RunStore(db) as store:
        run_id = fill_store(store, with_privacy=False)
    (tmp_path / "file").write_text("x")
    result = runner.invoke(app, ["report", run_id, "--out", str(tmp_path / "file"), "--db", db])
    assert result.exit_code == 1 and "existing file" in result.output
