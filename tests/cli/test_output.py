"""Tables readable when piped or in a narrow terminal, and --json on every table command.

Driven through the real ``fedeye`` app (typer's CliRunner: stdout is not a
terminal) and once through a subprocess whose stdout is a pipe.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console
from rich.text import Text
from typer.testing import CliRunner

from fedeye.cli._common import Column, print_table
from fedeye.cli.main import app
from fedeye.server.store import RunStore
from tests.conftest import tiny_run_toml

LONG_NAME = "a-rather-long-run-name-for-the-moorfields-and-aravind-glaucoma-screening-study"
NARROW = {"COLUMNS": "40"}


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.delenv("FEDEYE_DB", raising=False)
    return CliRunner()


@pytest.fixture
def db(tmp_path: Path) -> str:
    """A store with two finished runs, one with a long name and site results."""
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    with RunStore(url) as store:
        for name in (LONG_NAME, "short"):
            run_id = store.create_run(name=name, strategy="fedavg", config={"rounds": 1}, num_rounds=1, num_sites=1)
            store.record_site_metrics(
                run_id,
                server_round=1,
                phase="evaluate",
                site="Moorfields Eye Hospital",
                node_id=1,
                num_examples=10,
                metrics={"auc": 0.75},
            )
            store.finish_run(run_id, status="finished")
    return url


def _runs(db: str) -> list[tuple[str, str]]:
    """``(run id, name)``, newest first."""
    with RunStore(db) as store:
        return [(run.run_id, run.name) for run in store.list_runs()]


def _run_ids(db: str) -> list[str]:
    return [run_id for run_id, _ in _runs(db)]


def test_runs_list_piped_prints_full_ids_and_names(runner: CliRunner, db: str) -> None:
    # Execute: a narrow COLUMNS must not matter when stdout is not a terminal
    result = runner.invoke(app, ["runs", "list", "--db", db], env=NARROW)

    # Assert: one tab-separated line per run, nothing cut
    assert result.exit_code == 0, result.output
    lines = [line.split("\t") for line in result.output.splitlines() if not line.startswith("#")]
    assert lines[0] == ["id", "name", "status", "strategy", "sites", "rounds", "started", "duration"]
    assert [(row[0], row[1]) for row in lines[1:]] == _runs(db)
    assert "…" not in result.output


def test_runs_list_through_a_pipe(db: str, tmp_path: Path) -> None:
    env = {**os.environ, "COLUMNS": "30", "FEDEYE_DB": db}
    proc = subprocess.run(
        [sys.executable, "-m", "fedeye.cli", "runs", "list"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    for run_id in _run_ids(db):
        assert f"{run_id}\t" in proc.stdout
    assert f"\t{LONG_NAME}\t" in proc.stdout


def test_runs_show_piped_keeps_every_value(runner: CliRunner, db: str) -> None:
    run_id, name = next(run for run in _runs(db) if run[1] == LONG_NAME)
    result = runner.invoke(app, ["runs", "show", run_id, "--db", db], env=NARROW)
    assert result.exit_code == 0, result.output
    assert f"run\t{run_id}  ({name})" in result.output
    assert "Moorfields Eye Hospital\tok\t10\t0.750" in result.output


@pytest.mark.parametrize("args", [["runs", "list"], ["runs", "show", "RUN"]])
def test_runs_json_parses(runner: CliRunner, db: str, args: list[str]) -> None:
    args = [_run_ids(db)[0] if a == "RUN" else a for a in args]
    result = runner.invoke(app, [*args, "--db", db, "--json"], env=NARROW)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)


def test_site_check_json_parses(runner: CliRunner, tiny_sites: Path) -> None:
    result = runner.invoke(app, ["site", "check", str(tiny_sites / "site-1"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] is True and report["summary"]["num_samples"] == 40 and report["problems"] == []


def test_site_check_json_lists_problems_and_exits_1(runner: CliRunner, tmp_path: Path) -> None:
    site = tmp_path / "bad"
    (site / "images").mkdir(parents=True)
    (site / "manifest.csv").write_text("image,label,patient_id\nimages/missing.png,0,p1\n")
    result = runner.invoke(app, ["site", "check", str(site), "--json"])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False and report["problems"][0]["row"] == 2


@pytest.mark.parametrize("command", ["simulate", "demo", "evaluate"])
def test_table_commands_offer_json(runner: CliRunner, command: str) -> None:
    """These train or load a model (run end to end in test_main); here: the option exists."""
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert "--json" in result.output


# ------------------------------------------------------------------ the helper


def _render(*, terminal: bool, width: int, title: str | None = "runs") -> str:
    buffer = io.StringIO()
    out = Console(file=buffer, force_terminal=terminal, width=width, color_system=None)
    rows: list[list[str | Text]] = [
        ["r-20261203-092435-50aa", Text("finished", style="green"), "a [bold] name\twith a tab"]
    ]
    print_table(["id", "status", Column("name", justify="right")], rows, title=title, target=out)
    return buffer.getvalue()


def test_plain_text_when_not_a_terminal() -> None:
    assert _render(terminal=False, width=20).splitlines() == [
        "# runs",
        "id\tstatus\tname",
        "r-20261203-092435-50aa\tfinished\ta [bold] name with a tab",
    ]


def test_wide_terminal_gets_a_table_and_narrow_one_a_block_per_row() -> None:
    wide, narrow = _render(terminal=True, width=200), _render(terminal=True, width=30)
    assert "┃ id" in wide and "r-20261203-092435-50aa" in wide and "a [bold] name" in wide
    assert "┃" not in narrow
    assert "id      r-20261203-092435-50aa" in narrow and "status  finished" in narrow


def test_json_rows_default_to_one_object_per_row(capsys: pytest.CaptureFixture[str]) -> None:
    print_table(["id", "status"], [["r-1", Text("ok", style="green")]], as_json=True)
    assert json.loads(capsys.readouterr().out) == [{"id": "r-1", "status": "ok"}]


@pytest.mark.slow
def test_simulate_json_keeps_progress_off_stdout(tmp_path: Path, tiny_sites: Path) -> None:
    run_file = tiny_run_toml(tmp_path / "run.toml", sites=tiny_sites, out=tmp_path / "out", rounds=1)
    proc = subprocess.run(
        [sys.executable, "-m", "fedeye.cli", "simulate", "--config", str(run_file), "--json"],
        check=False,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)  # nothing but the JSON on stdout
    assert result["run_id"] in _run_ids(result["store"])
    assert len(result["sites"]) == 3 and all(site["num-examples"] > 0 for site in result["sites"])
    assert all(0.0 <= site["auc"] <= 1.0 for site in result["sites"])
