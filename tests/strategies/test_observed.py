"""Every FedEye strategy judges replies before aggregating them."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from flwr.app import ConfigRecord

from fedeye.config import StrategyConfig
from fedeye.strategies import build_strategy, list_strategies
from fedeye.strategies.base import BudgetExhausted
from tests.strategies.conftest import FakeGrid, array_record, reply

GLOBAL = {"w": np.zeros((2, 2), np.float32)}


class Seen:
    def __init__(self) -> None:
        self.calls: list[tuple[int, str, list[str]]] = []

    def on_round_start(self, server_round: int, phase: str, num_sites: int) -> None:
        pass

    def on_replies(self, server_round: int, phase: str, replies: list[Any], verdicts: list[Any]) -> None:
        self.calls.append((server_round, phase, [v.status for v in verdicts]))


def _strategy(name: str, observer: Seen, **cfg: Any) -> Any:
    strategy = build_strategy(StrategyConfig(name=name, min_train_nodes=1, min_available_nodes=1, **cfg), observer=observer)
    strategy.global_arrays = array_record(GLOBAL)
    return strategy


@pytest.mark.parametrize("name", list_strategies())
def test_non_finite_and_oversized_updates_are_rejected_not_aggregated(name: str) -> None:
    seen = Seen()
    strategy = _strategy(name, seen, max_update_norm=10.0)
    replies = [
        reply(1, arrays={"w": np.ones((2, 2), np.float32)}, loss=0.5),
        reply(2, arrays={"w": np.full((2, 2), np.nan, np.float32)}, loss=0.1),
        reply(3, arrays={"w": np.full((2, 2), 100.0, np.float32)}, loss=0.1),
        reply(4, arrays={"w": np.full((2, 2), 3.0, np.float32)}, loss=0.7, **{"dp-epsilon": 1.0}),
    ]
    arrays, metrics = strategy.aggregate_train(1, replies)

    assert seen.calls == [(1, "train", ["ok", "rejected", "rejected", "ok"])]
    assert arrays is not None
    w = arrays["w"].numpy()
    assert np.allclose(w, w.flat[0]) and 1.0 <= w.flat[0] <= 3.0  # a weighted mean of the two accepted updates only
    assert metrics is not None and set(metrics) == {"loss"}  # metrics cut to the shared names


@pytest.mark.parametrize("name", list_strategies())
def test_site_that_left_for_budget_is_not_sampled_again(name: str, flower_task: None) -> None:
    seen = Seen()
    strategy = _strategy(name, seen)
    strategy.aggregate_train(1, [reply(1, arrays=GLOBAL), reply(2, status="left-budget")])
    assert seen.calls[0][2] == ["ok", "left-budget"]

    messages = strategy.configure_train(2, array_record(GLOBAL), ConfigRecord(), FakeGrid([1, 2]))
    assert [m.metadata.dst_node_id for m in messages] == [1]

    strategy.aggregate_train(2, [reply(1, status="left-budget")])
    with pytest.raises(BudgetExhausted):
        strategy.configure_train(3, array_record(GLOBAL), ConfigRecord(), FakeGrid([1, 2]))
