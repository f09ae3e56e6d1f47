"""Resume and dropout on the coordinator: resume points, round numbering, Flower run links, missing sites."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

import pytest
import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MessageType,
    Metadata,
    MetricRecord,
)
from flwr.app.message.message import make_message
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedeye.errors import FederationError
from fedeye.server.federation import RoundsAfter, resume_point
from fedeye.server.recorder import RunRecorder
from fedeye.server.store import RunStore
from tests.server.conftest import site_reply


@pytest.fixture
def store(tmp_path: Path) -> RunStore:
    return RunStore(f"sqlite:///{tmp_path / 's.db'}")


def _run(store: RunStore) -> str:
    return store.create_run(name="t", strategy="fedavg", config={}, num_rounds=3, num_sites=3)


def _reply(node_id: int, site: str) -> Message:
    return site_reply(node_id, site, loss=0.5, **{"num-examples": 10})


def _unreachable() -> Message:
    """The error reply the SuperLink makes for a node it could not reach."""
    meta = Metadata(
        run_id=1,
        message_id="",
        src_node_id=SUPERLINK_NODE_ID,
        dst_node_id=SUPERLINK_NODE_ID,
        reply_to_message_id="m",
        group_id="",
        created_at=time.time(),
        ttl=60.0,
        message_type=MessageType.TRAIN,
    )
    return make_message(meta, error=Error(code=ErrorCode.NODE_UNAVAILABLE, reason="node unavailable"))


# --- the store: Flower run links and reopening -------------------------------------------


def test_flower_runs_are_linked_in_order(store: RunStore) -> None:
    run_id = _run(store)
    store.link_flower_run(run_id, flower_run_id=2**64 - 5, first_round=1)
    store.link_flower_run(run_id, flower_run_id=42, first_round=3, note="resumed after round 2")
    assert store.run_for_flower_run(2**64 - 5) == run_id and store.run_for_flower_run(7) is None
    links = store.get_run(run_id).flower_runs
    assert [(f.flower_run_id, f.first_round, f.note) for f in links] == [
        (2**64 - 5, 1, None),
        (42, 3, "resumed after round 2"),
    ]


def test_reopen_sets_running_and_returns_what_it_was(store: RunStore) -> None:
    run_id = _run(store)
    store.finish_run(run_id, status="failed", error="KeyboardInterrupt")
    assert store.reopen_run(run_id) == ("failed", "KeyboardInterrupt")
    run = store.get_run(run_id).run
    assert (run.status, run.error, run.ended_at) == ("running", None, None)


# --- resume points ------------------------------------------------------------------------


def _checkpoint(store: RunStore, run_id: str, path: Path, server_round: int) -> Path:
    path.write_bytes(b"weights of round %d" % server_round)
    store.record_artifact(run_id, server_round=server_round, kind="checkpoint", path=path)
    return path


def test_resume_point_is_the_last_checkpoint(store: RunStore, tmp_path: Path) -> None:
    run_id = _run(store)
    _checkpoint(store, run_id, tmp_path / "r1.pt", 1)
    last = _checkpoint(store, run_id, tmp_path / "r2.pt", 2)
    point = resume_point(store, run_id)
    assert (point.completed_round, point.checkpoint) == (2, last.resolve())


def test_resume_point_needs_a_completed_round(store: RunStore) -> None:
    with pytest.raises(FederationError, match="no completed round to resume from.*fedeye run launch"):
        resume_point(store, _run(store))


def test_resume_point_refuses_a_changed_checkpoint(store: RunStore, tmp_path: Path) -> None:
    run_id = _run(store)
    path = _checkpoint(store, run_id, tmp_path / "r1.pt", 1)
    path.write_bytes(b"something else")
    with pytest.raises(FederationError, match="missing or changed since it was recorded"):
        resume_point(store, run_id)


# --- round numbering after a resume ---------------------------------------------------------


class _Rounds(Strategy):
    """A strategy that only notes the round numbers it is called with."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.seen.append(("configure_train", server_round))
        return []

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        self.seen.append(("aggregate_train", server_round))
        return None, None

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.seen.append(("configure_evaluate", server_round))
        return []

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        self.seen.append(("aggregate_evaluate", server_round))
        return None

    def summary(self) -> None:
        return None


class _NoGrid:
    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        return list(messages)


def test_flower_start_numbers_rounds_on_after_the_resume_point() -> None:
    inner = _Rounds()
    evaluated: list[int] = []
    RoundsAfter(inner, 2).start(
        grid=_NoGrid(),
        initial_arrays=ArrayRecord({"w": torch.zeros(1)}),
        num_rounds=2,  # type: ignore[arg-type]
        evaluate_fn=lambda rnd, _arrays: evaluated.append(rnd),  # type: ignore[func-returns-value]
    )
    assert sorted({r for _, r in inner.seen}) == [3, 4]
    assert ("configure_train", 3) in inner.seen and ("aggregate_evaluate", 4) in inner.seen
    assert evaluated == [0, 1, 2]  # Flower's own count: the checkpointer adds the offset


# --- sites that disappear -----------------------------------------------------------------


def test_missing_node_is_recorded_under_its_earlier_name(store: RunStore) -> None:
    run_id = _run(store)
    recorder = RunRecorder(store, run_id)
    recorder.on_replies(1, "train", [_reply(11, "Riverside"), _reply(12, "Hillcrest")])
    recorder.on_missing(2, "train", [12, 99])
    recorder.on_replies(2, "train", [_reply(11, "Riverside"), _unreachable()])
    rows = [(m.server_round, m.site, m.node_id, m.status) for m in store.site_metrics(run_id) if m.server_round == 2]
    assert sorted(rows) == [(2, "Hillcrest", 12, "missing"), (2, "Riverside", 11, "ok"), (2, "node 99", 99, "missing")]
    assert store.get_run(run_id).rounds[1].num_sites_trained == 1


def test_a_resumed_recorder_names_missing_sites_from_the_store(store: RunStore) -> None:
    run_id = _run(store)
    RunRecorder(store, run_id).on_replies(1, "train", [_reply(12, "Hillcrest")])
    RunRecorder(store, run_id).on_missing(3, "train", [12])  # a new ServerApp process after a resume
    missing = [m for m in store.site_metrics(run_id) if m.status == "missing"]
    assert [(m.site, m.reason) for m in missing] == [
        ("Hillcrest", "no reply within the round timeout; the round went on without Hillcrest")
    ]
