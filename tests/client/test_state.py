"""A site's state folder: where it is, its layout, private modes, race-free creation."""

from __future__ import annotations

import multiprocessing
import os
import stat
import threading
from pathlib import Path

import pytest

from fedeye.client.site import SiteJob
from fedeye.client.state import (
    STATE_DIR_KEY,
    STATE_MARKER,
    SiteState,
    deployment_state,
    simulated_state,
    site_state_for,
    state_key,
)
from fedeye.config import RunConfig
from fedeye.sites.cache import list_entries


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _folders(state: SiteState) -> list[Path]:
    return [state.root, state.cache_dir, state.audit_dir, state.logs_dir]


def test_layout() -> None:
    state = SiteState(Path("/srv/site-a/state"))

    assert state.cache_dir == Path("/srv/site-a/state/cache")
    assert state.ledger_path == Path("/srv/site-a/state/ledger.sqlite")
    assert state.audit_log == Path("/srv/site-a/state/audit/audit.jsonl")
    assert state.worker_socket == Path("/srv/site-a/state/worker.sock")
    assert state.logs_dir == Path("/srv/site-a/state/logs")


def test_deployment_state_is_beside_site_toml(tmp_path: Path) -> None:
    assert deployment_state(tmp_path / "site.toml").root == tmp_path.resolve() / "state"


def test_simulated_state_lives_under_fedeye_home_keyed_by_the_site_path(
    tmp_path: Path, test_fedeye_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "data" / "St Aurelia"
    site.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)

    by_absolute = simulated_state(site)
    by_relative = simulated_state(Path("data/St Aurelia"))
    other = simulated_state(tmp_path / "elsewhere" / "St Aurelia")

    assert by_absolute == by_relative  # the same folder, however it is spelled
    assert by_absolute.root.parent == test_fedeye_home / "sites"
    assert by_absolute.root.name.startswith("St-Aurelia-") and len(by_absolute.root.name) == len("St-Aurelia-") + 12
    assert other != by_absolute  # same folder name, other path


def test_node_config_state_dir_wins(tmp_path: Path) -> None:
    state = site_state_for(tmp_path / "data", {STATE_DIR_KEY: str(tmp_path / "mine")})

    assert state.root == tmp_path / "mine" and state.cache_dir.is_dir()


def test_without_state_dir_the_home_rule_applies(tmp_path: Path) -> None:
    state = site_state_for(tmp_path / "data", {"partition-id": 0})

    assert state == simulated_state(tmp_path / "data") and state.root.is_dir()


def test_ensure_makes_every_folder_0700_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        state = SiteState(tmp_path / "state").ensure()
    finally:
        os.umask(old)

    assert {_mode(p) for p in _folders(state)} == {0o700}
    assert (state.root / STATE_MARKER).is_file()


def test_ensure_tightens_an_existing_folder(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir(mode=0o755)

    state = SiteState(tmp_path / "state").ensure()

    assert _mode(state.root) == 0o700


def test_many_threads_create_one_state_folder(tmp_path: Path) -> None:
    errors: list[BaseException] = []
    state = SiteState(tmp_path / "deep" / "state")

    def create() -> None:
        try:
            state.ensure()
        except BaseException as err:  # collected for the assertion below
            errors.append(err)

    threads = [threading.Thread(target=create) for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert not errors
    assert {_mode(p) for p in _folders(state)} == {0o700}


def _ensure_in_process(root: str) -> None:
    SiteState(Path(root)).ensure()


def test_many_processes_create_one_state_folder(tmp_path: Path) -> None:
    root = tmp_path / "deep" / "state"
    context = multiprocessing.get_context("fork")  # no re-import: the race is in makedirs and chmod
    processes = [context.Process(target=_ensure_in_process, args=(str(root),)) for _ in range(6)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=120)

    assert [p.exitcode for p in processes] == [0] * 6
    assert {_mode(p) for p in _folders(SiteState(root))} == {0o700}


def test_key_is_stable(tmp_path: Path) -> None:
    assert state_key(tmp_path / "a") == state_key(tmp_path / "a") != state_key(tmp_path / "b")


def test_site_job_datasets_come_from_the_state_folder_cache(tiny_sites: Path) -> None:
    cfg = RunConfig.model_validate({"data": {"root": str(tiny_sites)}, "model": {"img_size": 32}})
    job = SiteJob.resolve(cfg, {"partition-id": 1})

    data = job.dataset("val")

    assert job.state == simulated_state(tiny_sites / "site-2")
    entries = {e.split: (e.image_size, e.count) for e in list_entries(job.state.cache_dir)}
    assert set(entries) == {"train", "val", "test"} and entries["val"] == (32, len(data))


def test_site_job_prepares_images_the_way_the_run_says_not_the_site(tiny_sites: Path) -> None:
    """model.preprocess overrides the site's own; unset, the site's own stays."""
    raw = {"data": {"root": str(tiny_sites)}, "model": {"img_size": 32, "preprocess": "fov-crop+clahe"}}
    job = SiteJob.resolve(RunConfig.model_validate(raw), {"partition-id": 0})
    plain = SiteJob.resolve(RunConfig.model_validate({**raw, "model": {"img_size": 32}}), {"partition-id": 0})

    data, site_own = job.dataset("val"), plain.dataset("val")

    assert (data.preprocess, site_own.preprocess) == ("fov-crop+clahe", "none")
    assert not (data[0][0] == site_own[0][0]).all()  # other pixels reach the model
    entries = {(e.split, e.preprocess) for e in list_entries(job.state.cache_dir)}
    assert ("val", "fov-crop+clahe") in entries and ("val", "none") in entries  # cached apart
