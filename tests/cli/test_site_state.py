"""Per-site state of a run, as `fedeye run status` shows it."""

from __future__ import annotations

import pytest

from fedeye.cli.site_state import site_states
from fedeye.server.store import RunStore


@pytest.fixture
def store() -> RunStore:
    return RunStore("sqlite://")


def _states(store: RunStore, run_id: str, online: dict[int, bool] | None = None) -> dict[str, str]:
    return {row.site: row.state for row in site_states(store.get_run(run_id), online=online)}


def _record(store: RunStore, run_id: str, rnd: int, phase: str, site: str, node: int, status: str = "ok") -> None:
    store.record_site_metrics(
        run_id,
        server_round=rnd,
        phase=phase,
        site=site,
        node_id=node,  # type: ignore[arg-type]
        num_examples=1,
        metrics={},
        status=status,
    )  # type: ignore[arg-type]


def test_states_while_running(store: RunStore) -> None:
    run_id = store.create_run(name="r", strategy="fedavg", config={}, num_rounds=3, num_sites=4)
    for node, site in ((1, "a"), (2, "b"), (3, "c"), (4, "d")):
        _record(store, run_id, 1, "train", site, node)
    _record(store, run_id, 2, "train", "b", 2, "missing")
    _record(store, run_id, 2, "train", "c", 3, "left-budget")
    _record(store, run_id, 2, "train", "d", 4, "failed")
    assert _states(store, run_id) == {"a": "training", "b": "missing", "c": "left-budget", "d": "failed"}
    # with Flower's node list: b is back online, a went offline, node 5 is connected but has not taken part yet
    assert _states(store, run_id, online={1: False, 2: True, 5: True}) == {
        "a": "missing",
        "b": "online",
        "c": "left-budget",
        "d": "failed",
        "node 5": "online",
    }


def test_states_after_the_run(store: RunStore) -> None:
    run_id = store.create_run(name="r", strategy="fedavg", config={}, num_rounds=1, num_sites=2)
    _record(store, run_id, 1, "train", "a", 1)
    _record(store, run_id, 1, "test", "a", 1)
    _record(store, run_id, 1, "train", "b", 2)
    store.finish_run(run_id, status="finished")
    assert _states(store, run_id) == {"a": "finished", "b": "ended"}


def test_a_site_waiting_for_its_admin_shows_it_until_it_trains(store: RunStore) -> None:
    run_id = store.create_run(name="r", strategy="fedavg", config={}, num_rounds=3, num_sites=2)
    _record(store, run_id, 1, "train", "a", 1)
    _record(store, run_id, 1, "train", "b", 2, "awaiting-approval")
    assert _states(store, run_id)["b"] == "awaiting-approval"
    _record(store, run_id, 2, "train", "b", 2)
    assert _states(store, run_id)["b"] == "training"
