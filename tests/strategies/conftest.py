"""Helpers to drive strategies without a Flower run: a fake grid and reply messages."""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, Metadata, MetricRecord, RecordDict
from flwr.app.message.message import make_message
from flwr.supercore.task_identity import TaskIdentity


class FakeGrid:
    """The part of Flower's Grid that strategies' configure_* use."""

    def __init__(self, node_ids: list[int]) -> None:
        self.node_ids = node_ids

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)


@pytest.fixture
def flower_task() -> Iterator[None]:
    """Messages can only be built inside a task; pretend to be the ServerApp's."""
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


def array_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(v) for k, v in arrays.items()})


def reply(
    node_id: int, *, arrays: dict[str, np.ndarray] | None = None, status: str = "ok", n: int = 10, **metrics: float
) -> Message:
    """A site's training reply as it reaches the coordinator."""
    metadata = Metadata(
        run_id=1,
        message_id="",
        src_node_id=node_id,
        dst_node_id=0,
        reply_to_message_id="m",
        group_id="",
        created_at=time.time(),
        ttl=60.0,
        message_type=MessageType.TRAIN,
    )
    content = RecordDict(
        {
            "metrics": MetricRecord({"num-examples": n, **metrics}),
            "site": ConfigRecord({"name": f"site-{node_id}", "status": status}),
        }
    )
    if arrays is not None:
        content["arrays"] = array_record(arrays)
    return make_message(metadata, content=content)
