"""``fedeye runs list`` and ``fedeye runs show``, driven through typer's CliRunner."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import typer
from sqlmodel import Session
from typer.testing import CliRunner

from fedeye.cli.runs import (
    build_runs_app,
    flatten_config,
    format_duration,
    metric_names,
)
from fedeye.fairness.operating_point import Calibration
from fedeye.fairness.reliability import RunReliability, reliability_diagram
from fedeye.server.models import RunRow
from fedeye.server.store import RunStore

WIDE = {"COLUMNS": "250"}  # rich reads the terminal width from here
SITES = {
    "moorfields": {
        "auc": 0.8123,
        "accuracy": 0.75,
        "sensitivity": 0.7,
        "specificity": 0.8,
        "loss": 0.51,
        "num-examples": 120,
    },
    "aravind": {
        "auc": 0.7011,
        "accuracy": 0.66,
        "sensitivity": 0.6,
        "specificity": 0.72,
        "loss": 0.63,
        "num-examples": 80,
    },
}


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.delenv("FEDEYE_DB", raising=False)
    return CliRunner()


@pytest.fixture
def app(tmp_path: Path) -> typer.Typer:
    """A small app that mounts the runs sub-app the way the lead CLI does."""
    root = typer.Typer()
    root.add_typer(build_runs_app(default_dir=tmp_path / "home"), name="runs")
    return root


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'runs.db'}"


def _record_run(db: str, model: Path) -> str:
    store = RunStore(db)
    run_id = store.create_run(
        name="dr-screening",
        strategy="fedprox",
        config={"strategy": {"name": "fedprox", "proximal-mu": 0.1}, "num-rounds": 3},
        num_rounds=3,
        num_sites=2,
    )
    for server_round in (1, 2):
        store.record_round(run_id, server_round=server_round, train_metrics={"loss": 0.9}, num_sites_trained=2)
        for node_id, (site, metrics) in enumerate(SITES.items(), start=2**63):
            store.record_site_metrics(
                run_id,
                server_round=server_round,
                phase="evaluate",
                site=site,
                node_id=node_id,
                num_examples=int(metrics["num-examples"]),
                metrics=metrics,
            )
        store.record_round(run_id, server_round=server_round, eval_metrics={"auc": 0.7654}, num_sites_evaluated=2)
    model.write_bytes(b"final weights")
    store.record_artifact(run_id, server_round=2, kind="final-model", path=model)
    store.finish_run(run_id, status="finished")
    return run_id


def test_list_shows_runs(runner: CliRunner, app: typer.Typer, db: str, tmp_path: Path) -> None:
    run_id = _record_run(db, tmp_path / "final.pt")

    result = runner.invoke(app, ["runs", "list", "--db", db], env=WIDE)

    assert result.exit_code == 0, result.output
    assert run_id in result.output
    assert "dr-screening" in result.output
    assert "finished" in result.output
    assert "2/3" in result.output


def test_list_json(runner: CliRunner, app: typer.Typer, db: str, tmp_path: Path) -> None:
    run_id = _record_run(db, tmp_path / "final.pt")

    result = runner.invoke(app, ["runs", "list", "--db", db, "--json"])

    assert result.exit_code == 0, result.output
    (run,) = json.loads(result.stdout)
    assert run["run_id"] == run_id
    assert run["rounds_done"] == 2 and run["status"] == "finished"
    assert run["duration_s"] >= 0


def test_list_reads_db_from_environment(runner: CliRunner, app: typer.Typer, db: str, tmp_path: Path) -> None:
    run_id = _record_run(db, tmp_path / "final.pt")

    result = runner.invoke(app, ["runs", "list", "--json"], env={"FEDEYE_DB": db})

    assert [r["run_id"] for r in json.loads(result.stdout)] == [run_id]


def test_list_empty_default_store(runner: CliRunner, app: typer.Typer, tmp_path: Path) -> None:
    result = runner.invoke(app, ["runs", "list"])

    assert result.exit_code == 0, result.output
    assert "No runs recorded yet" in result.output
    assert (tmp_path / "home" / "fedeye.db").exists()


def test_show_renders_rounds_sites_and_model(runner: CliRunner, app: typer.Typer, db: str, tmp_path: Path) -> None:
    run_id = _record_run(db, tmp_path / "final.pt")

    result = runner.invoke(app, ["runs", "show", run_id[:-1], "--db", db], env=WIDE)

    assert result.exit_code == 0, result.output
    out = result.output
    assert run_id in out and "fedprox" in out and "proximal-mu" in out
    assert "eval auc" in out and "0.765" in out
    assert "evaluation of round 2" in out
    for header in ("n images", "auc", "accuracy", "sensitivity", "specificity", "loss"):
        assert header in out
    assert "moorfields" in out and "0.812" in out and "120" in out
    assert str((tmp_path / "final.pt").resolve()) in out


def test_show_json(runner: CliRunner, app: typer.Typer, db: str, tmp_path: Path) -> None:
    run_id = _record_run(db, tmp_path / "final.pt")

    result = runner.invoke(app, ["runs", "show", run_id, "--db", db, "--json"])

    assert result.exit_code == 0, result.output
    detail = json.loads(result.stdout)
    assert detail["run"]["run_id"] == run_id
    assert detail["config"]["strategy"]["proximal-mu"] == 0.1
    assert [r["server_round"] for r in detail["rounds"]] == [1, 2]
    assert detail["site_metrics"][0]["node_id"] >= 2**63
    assert detail["artifacts"][0]["kind"] == "final-model"


def test_show_unknown_run_exits_1(runner: CliRunner, app: typer.Typer, db: str) -> None:
    RunStore(db).close()  # an existing, empty store
    result = runner.invoke(app, ["runs", "show", "r-nope", "--db", db])

    assert result.exit_code == 1
    assert "no run 'r-nope'" in result.stderr
    assert "fedeye runs list" in result.stderr
    assert result.stdout == ""


def test_bad_db_url_exits_1(runner: CliRunner, app: typer.Typer) -> None:
    result = runner.invoke(app, ["runs", "list", "--db", "nosuchdb://x/y"])

    assert result.exit_code == 1
    assert "cannot open run store nosuchdb://x/y" in result.stderr


@pytest.mark.parametrize("given", ["{tmp}/typo/runs.db", "sqlite:///{tmp}/typo/runs.db", "{tmp}/runs-typo.db"])
def test_mistyped_db_path_is_refused_and_nothing_created(
    runner: CliRunner, app: typer.Typer, tmp_path: Path, given: str
) -> None:
    result = runner.invoke(app, ["runs", "list", "--db", given.format(tmp=tmp_path)])

    assert result.exit_code == 1 and "no run store at" in result.stderr and "Traceback" not in result.output
    assert not (tmp_path / "typo").exists() and not (tmp_path / "runs-typo.db").exists()


def test_show_running_run_without_results(runner: CliRunner, app: typer.Typer, db: str) -> None:
    run_id = RunStore(db).create_run(name="fresh", strategy="fedavg", config={}, num_rounds=5, num_sites=3)

    result = runner.invoke(app, ["runs", "show", run_id, "--db", db], env=WIDE)

    assert result.exit_code == 0, result.output
    assert "running" in result.output and "0/5" in result.output


def test_format_duration() -> None:
    from datetime import timedelta

    assert format_duration(timedelta(seconds=12)) == "12s"
    assert format_duration(timedelta(minutes=2, seconds=5)) == "2m05s"
    assert format_duration(timedelta(hours=1, minutes=2, seconds=3)) == "1h02m03s"


def test_metric_names_shows_known_ones_only_and_drops_num_examples() -> None:
    names = metric_names([{"zeta": 1.0, "loss": 0.1, "num-examples": 3.0}, None, {"auc": 0.5}])

    assert names == ["auc", "loss"]


def test_metric_names_falls_back_to_all_when_none_is_known() -> None:
    assert metric_names([{"zeta": 1.0, "alpha": 2.0, "num-examples": 3.0}]) == ["alpha", "zeta"]


def test_flatten_config() -> None:
    assert flatten_config({"a": {"b": 1, "c": "x"}, "d": [1, 2], "e": {}}) == [
        ("a.b", "1"),
        ("a.c", "x"),
        ("d", "[1, 2]"),
        ("e", "{}"),
    ]


def test_run_of_a_dead_process_shows_stale(runner: CliRunner, app: typer.Typer, db: str) -> None:
    store = RunStore(db)
    run_id = store.create_run(name="killed", strategy="fedavg", config={}, num_rounds=3, num_sites=2)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    with Session(store._write_engine) as session, session.begin():
        row = session.get(RunRow, run_id)
        assert row is not None
        row.owner_pid = gone.pid

    listed = runner.invoke(app, ["runs", "list", "--db", db, "--json"])
    shown = runner.invoke(app, ["runs", "show", run_id, "--db", db], env=WIDE)

    assert json.loads(listed.stdout)[0]["status"] == "stale"
    assert "stale" in shown.stdout and "it will not finish by itself" in shown.stdout


def test_failed_site_shows_its_category_and_incident(runner: CliRunner, app: typer.Typer, db: str) -> None:
    store = RunStore(db)
    run_id = store.create_run(name="r", strategy="fedavg", config={}, num_rounds=1, num_sites=2)
    store.record_site_metrics(
        run_id,
        server_round=1,
        phase="evaluate",
        site="site-a",
        node_id=1,
        num_examples=0,
        metrics={},
        status="failed",
        reason="data-error (incident abc123abc123)",
    )
    shown = runner.invoke(app, ["runs", "show", run_id, "--db", db], env=WIDE)
    assert "failed: data-error (incident abc123abc123)" in shown.stdout


@pytest.mark.parametrize(("bias", "shown_bias"), [(0.3, "0.300"), (None, "0.000")])  # None: a run before the bias
def test_show_reports_rates_at_the_operating_point_with_intervals(
    runner: CliRunner, app: typer.Typer, db: str, bias: float | None, shown_bias: str
) -> None:
    store = RunStore(db)
    run_id = store.create_run(name="op", strategy="fedavg", config={}, num_rounds=1, num_sites=1)
    metrics = {"auc": 0.9, "threshold": 0.42, "temperature": 1.7, "ece": 0.2, "ece-calibrated": 0.05}
    if bias is not None:
        metrics["bias"] = bias
    for rate in ("sensitivity", "specificity", "balanced-accuracy", "ppv", "npv"):
        metrics.update({rate: 0.8, f"{rate}-ci-low": 0.7, f"{rate}-ci-high": 0.9})
    store.record_site_metrics(
        run_id, server_round=1, phase="test", site="moorfields", node_id=3, num_examples=50, metrics=metrics
    )

    result = runner.invoke(app, ["runs", "show", run_id, "--db", db], env=WIDE)

    assert result.exit_code == 0, result.output
    assert f"operating point (p >= 0.420 after bias {shown_bias}, temperature 1.700)" in result.output
    assert "0.800 [0.700, 0.900]" in result.output and "0.200 -> 0.050" in result.output


def _record_reliability(db: str, *, calibrated: bool) -> tuple[str, RunReliability]:
    """A run whose final test kept two sites' reliability bins (bins 0.1-0.2 and 0.8-0.9 only)."""
    labels = np.array([0] * 9 + [1] + [0] * 2 + [1] * 8)
    p1 = np.array([0.15] * 10 + [0.85] * 10)
    calibration = Calibration(bias=0.0, temperature=2.0) if calibrated else None
    diagram = reliability_diagram(labels, np.column_stack([1 - p1, p1]), calibration)
    reliability = RunReliability.from_sites({"moorfields": diagram, "aravind": diagram})
    store = RunStore(db)
    run_id = store.create_run(name="cal", strategy="fedavg", config={}, num_rounds=1, num_sites=2)
    store.record_reliability(run_id, reliability.to_json())
    return run_id, reliability


def test_show_prints_the_pooled_reliability_diagram_before_and_after(
    runner: CliRunner, app: typer.Typer, db: str
) -> None:
    run_id, reliability = _record_reliability(db, calibrated=True)
    after = reliability.pooled.after
    assert after is not None

    result = runner.invoke(app, ["runs", "show", run_id, "--db", db], env=WIDE)

    assert result.exit_code == 0, result.output
    out = result.output
    ece = f"ECE {reliability.pooled.before.ece():.3f} -> {after.ece():.3f}"
    assert "reliability of the final model, 2 sites pooled (before -> after calibration; " + ece in out
    assert "bin\timages\tmean predicted\tobserved rate" in out
    rows = {cells[0]: cells[1:] for cells in (line.split("\t") for line in out.splitlines()) if cells[0][:2] == "0."}
    assert list(rows) == [f"{b / 10:.1f}-{(b + 1) / 10:.1f}" for b in range(10)]
    # 2 x 10 images at p = 0.15 (2 positives) and at 0.85 (16 positives); temperature 2 pulls both towards 0.5
    assert rows["0.1-0.2"] == ["20 -> 0", "0.150 -> -", "0.100 -> -"]
    assert rows["0.8-0.9"] == ["20 -> 0", "0.850 -> -", "0.800 -> -"]
    assert rows["0.0-0.1"] == ["0 -> 0", "- -> -", "- -> -"]
    low = next(b for b, n in enumerate(after.images) if n)  # where the calibrated p = 0.15 images went
    assert rows[f"{low / 10:.1f}-{(low + 1) / 10:.1f}"][0] == f"0 -> {after.images[low]}"


def test_show_reliability_without_calibration_has_one_stage(runner: CliRunner, app: typer.Typer, db: str) -> None:
    run_id, reliability = _record_reliability(db, calibrated=False)

    out = runner.invoke(app, ["runs", "show", run_id, "--db", db], env=WIDE).output

    assert f"ECE {reliability.pooled.before.ece():.3f}, no calibration recorded" in out
    assert "0.1-0.2\t20\t0.150\t0.100" in out.splitlines()


def test_show_notes_a_run_without_a_reliability_diagram(
    runner: CliRunner, app: typer.Typer, db: str, tmp_path: Path
) -> None:
    run_id = _record_run(db, tmp_path / "final.pt")

    result = runner.invoke(app, ["runs", "show", run_id, "--db", db], env=WIDE)

    assert result.exit_code == 0, result.output
    assert "reliability diagram: none recorded for this run" in result.output
    assert "reliability of the final model" not in result.output


def test_show_json_has_each_sites_reliability_bins(runner: CliRunner, app: typer.Typer, db: str) -> None:
    run_id, reliability = _record_reliability(db, calibrated=True)

    result = runner.invoke(app, ["runs", "show", run_id, "--db", db, "--json"])

    assert result.exit_code == 0, result.output
    stored = json.loads(result.stdout)["reliability"]
    assert RunReliability.from_json(stored) == reliability
    assert stored["sites"]["moorfields"]["before"]["images"][1] == 10
