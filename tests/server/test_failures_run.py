"""Whole runs in one process (InlineGrid): a failing site's text never reaches the coordinator; too few sites fail the run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from flwr.app import Message

from fedeye.client.app import app as client_app
from fedeye.client.audit import payload_bytes
from fedeye.client.incidents import read_incidents
from fedeye.compose.inline import InlineGrid, serverapp_task
from fedeye.config import RunConfig
from fedeye.errors import FederationError, RunInterrupted
from fedeye.server.federation import create_run, run_federation
from fedeye.server.polling import Interruption, PollingGrid
from fedeye.server.store import RunStore

SECRET = "MRN-483920-Doe"


def _break(site: Path) -> None:
    """Make a site's manifest name a missing image (its SiteDataError then quotes the site's path)."""
    manifest = site / "manifest.csv"
    lines = manifest.read_text().splitlines()
    lines[1] = lines[1].replace(".png", "-gone.png", 1)
    manifest.write_text("\n".join(lines) + "\n")


class RecordingGrid(InlineGrid):
    """An InlineGrid that keeps every reply the sites sent."""

    sent: list[Message]

    def _call(self, msg: Message) -> Message:
        reply = super()._call(msg)
        self.__dict__.setdefault("sent", []).append(reply)
        return reply


def _run(
    tmp_path: Path, tiny_sites: Path, broken: list[str], **strategy: object
) -> tuple[RunStore, str, RecordingGrid]:
    sites = {}
    for name in ("site-1", "site-2", "site-3"):
        folder = tmp_path / (f"{SECRET}-{name}" if name in broken else name)
        sites[name] = shutil.copytree(tiny_sites / name, folder)
        if name in broken:
            _break(folder)
    cfg = RunConfig.model_validate(
        {
            "model": {"img_size": 32},
            "training": {"rounds": 1, "batch_size": 16},
            "strategy": {"min_train_nodes": 2, "min_evaluate_nodes": 1, **strategy},
            "output": {"dir": str(tmp_path / "out")},
        }
    )
    nodes = {
        100 + i: {"site-dir": str(folder), "state-dir": str(tmp_path / "state" / name)}
        for i, (name, folder) in enumerate(sites.items())
    }
    grid = RecordingGrid(client_app, nodes)
    store = RunStore(f"sqlite:///{tmp_path / 'runs.db'}")
    run_id = create_run(store, cfg, num_sites=3)
    with serverapp_task():
        try:
            run_federation(grid, cfg, store=store, run_id=run_id)
        except FederationError:
            pass
    return store, run_id, grid


def _leaks(store: RunStore, run_id: str, grid: RecordingGrid) -> list[str]:
    detail = store.get_run(run_id)
    texts = [repr(detail.run), *(repr(m) for m in detail.site_metrics), *(repr(r) for r in detail.rounds)]
    found = [t for t in texts if SECRET in t or "gone.png" in t]
    found += [repr(r) for r in grid.sent if SECRET.encode() in payload_bytes(r)]
    return found


def test_failing_site_leaves_its_path_at_the_site(tmp_path: Path, tiny_sites: Path) -> None:
    store, run_id, grid = _run(tmp_path, tiny_sites, broken=["site-2"])

    detail = store.get_run(run_id)
    assert detail.run.status == "finished"  # two of three sites trained: min_train_nodes = 2 is met
    failed = [m for m in detail.site_metrics if m.status == "failed"]
    assert failed and {m.phase for m in failed} == {"train", "evaluate", "test"}
    (incident,) = {m.reason.split("incident ")[1].rstrip(")") for m in failed if m.phase == "train"}  # type: ignore[union-attr]
    assert all(m.reason and m.reason.startswith("data-error (incident ") for m in failed)
    assert _leaks(store, run_id, grid) == []
    logged = read_incidents(tmp_path / "state" / "site-2")
    assert incident in {i["incident"] for i in logged} and all(SECRET in i["message"] for i in logged)


def test_run_with_too_few_trained_sites_fails_with_a_clear_reason(tmp_path: Path, tiny_sites: Path) -> None:
    store, run_id, grid = _run(tmp_path, tiny_sites, broken=["site-2", "site-3"])

    run = store.get_run(run_id).run
    assert run.status == "failed"
    assert run.error is not None and run.error.startswith(
        "round 1: 1 of 3 sites trained, min_train_nodes = 2; failed: "
    )
    assert run.error.count("data-error (incident ") == 2
    assert _leaks(store, run_id, grid) == []


def test_run_file_may_continue_with_too_few_sites(tmp_path: Path, tiny_sites: Path) -> None:
    store, run_id, _ = _run(tmp_path, tiny_sites, broken=["site-2", "site-3"], on_too_few_sites="continue")
    assert store.get_run(run_id).run.status == "finished"


def test_stop_request_ends_the_run_interrupted(tmp_path: Path, tiny_sites: Path) -> None:
    cfg = RunConfig.model_validate(
        {
            "data": {"root": str(tiny_sites)},
            "model": {"img_size": 32},
            "training": {"rounds": 2},
            "output": {"dir": str(tmp_path)},
        }
    )
    stop = Interruption()
    grid = InlineGrid(client_app, {1: {"partition-id": 0}, 2: {"partition-id": 1}})
    store = RunStore(f"sqlite:///{tmp_path / 'runs.db'}")
    run_id = create_run(store, cfg, num_sites=2)
    stop.request("SIGINT")
    with serverapp_task(), pytest.raises(RunInterrupted):
        run_federation(PollingGrid(grid, stop=stop, interval=0.1), cfg, store=store, run_id=run_id)  # type: ignore[arg-type]
    run = store.get_run(run_id).run
    assert (run.status, run.error) == ("interrupted", "the run was interrupted by SIGINT")
