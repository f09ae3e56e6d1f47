"""Every FedEye strategy judges replies before aggregating them."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from flwr.app import ConfigRecord

from fedeye.config import StrategyConfig
from fedeye.models.prompt_arrays import EXPERT_KEY
from fedeye.strategies import build_strategy, list_strategies
from fedeye.strategies.base import BudgetExhausted, TooFewSites
from tests.strategies.conftest import FakeGrid, array_record, reply

GLOBAL = {"w": np.zeros((2, 2), np.float32), "domain_prompts.tokens": np.zeros((4, 1, 2), np.float32)}
NODES = [1, 2, 3, 4]


class Seen:
    def __init__(self) -> None:
        self.calls: list[tuple[int, str, list[str]]] = []

    def on_round_start(self, server_round: int, phase: str, num_sites: int) -> None:
        pass

    def on_replies(self, server_round: int, phase: str, replies: list[Any], verdicts: list[Any]) -> None:
        self.calls.append((server_round, phase, [v.status for v in verdicts]))


def _strategy(name: str, observer: Seen, **cfg: Any) -> Any:
    """A strategy that has sent round 1 to NODES (server optimisers and expert banks need that)."""
    settings = {"min_train_nodes": 1, "min_available_nodes": 1, **cfg}
    strategy = build_strategy(StrategyConfig(name=name, **settings), observer=observer)
    list(strategy.configure_train(1, array_record(GLOBAL), ConfigRecord(), FakeGrid(NODES)))
    return strategy


def _update(name: str, value: float) -> dict[str, np.ndarray]:
    """A site's training update in the strategy's format, every entry ``value``."""
    w = np.full((2, 2), value, np.float32)
    if name == "prompt-experts":  # a site sends its own expert row, not the bank
        return {"w": w, EXPERT_KEY: np.full((1, 2), value, np.float32)}
    return {"w": w, "domain_prompts.tokens": np.full((4, 1, 2), value, np.float32)}


@pytest.mark.parametrize("name", list_strategies())
def test_non_finite_and_oversized_updates_are_rejected_not_aggregated(name: str, flower_task: None) -> None:
    seen = Seen()
    strategy = _strategy(name, seen, max_update_norm=20.0)
    good = [
        reply(1, arrays=_update(name, 1.0), loss=0.5),
        reply(4, arrays=_update(name, 3.0), loss=0.7, **{"dp-epsilon": 1.0}),
    ]
    bad = [reply(2, arrays=_update(name, np.nan), loss=0.1), reply(3, arrays=_update(name, 100.0), loss=0.1)]
    arrays, metrics = strategy.aggregate_train(1, [good[0], *bad, good[1]])

    assert seen.calls == [(1, "train", ["ok", "rejected", "rejected", "ok"])]
    assert arrays is not None and set(arrays) == set(GLOBAL)
    # the result is exactly what the accepted replies alone give
    clean, _ = _strategy(name, Seen()).aggregate_train(1, good)
    assert clean is not None
    for key in GLOBAL:
        np.testing.assert_array_equal(arrays[key].numpy(), clean[key].numpy())
    w = arrays["w"].numpy()
    assert np.all(np.isfinite(w)) and np.allclose(w, w.flat[0]) and 0.0 < w.flat[0] <= 3.0
    assert metrics is not None and set(metrics) == {"loss"}  # metrics cut to the shared names


@pytest.mark.parametrize("name", list_strategies())
def test_site_that_left_for_budget_is_not_sampled_again(name: str, flower_task: None) -> None:
    seen = Seen()
    strategy = _strategy(name, seen)
    strategy.aggregate_train(1, [reply(1, arrays=_update(name, 0.5)), reply(2, status="left-budget")])
    assert seen.calls[0][2] == ["ok", "left-budget"]

    messages = strategy.configure_train(2, array_record(GLOBAL), ConfigRecord(), FakeGrid([1, 2]))
    assert [m.metadata.dst_node_id for m in messages] == [1]

    strategy.aggregate_train(2, [reply(1, status="left-budget")])
    with pytest.raises(BudgetExhausted):
        strategy.configure_train(3, array_record(GLOBAL), ConfigRecord(), FakeGrid([1, 2]))


@pytest.mark.parametrize("name", list_strategies())
def test_silent_sites_are_reported_missing(name: str, flower_task: None) -> None:
    missing: list[tuple[int, str, list[int]]] = []
    seen = Seen()
    seen.on_missing = lambda r, phase, nodes: missing.append((r, phase, nodes))  # type: ignore[attr-defined]
    strategy = _strategy(name, seen)
    arrays, _ = strategy.aggregate_train(1, [reply(2, arrays=_update(name, 1.0)), reply(4, arrays=_update(name, 2.0))])
    assert missing == [(1, "train", [1, 3])]
    assert arrays is not None  # the round completes with the sites that answered


@pytest.mark.parametrize("name", list_strategies())
def test_new_global_model_keeps_the_dtypes(name: str, flower_task: None) -> None:
    strategy = _strategy(name, Seen())
    arrays, _ = strategy.aggregate_train(1, [reply(1, arrays=_update(name, 1.0)), reply(2, arrays=_update(name, 2.0))])
    assert arrays is not None
    assert {k: arrays[k].numpy().dtype for k in GLOBAL} == {k: v.dtype for k, v in GLOBAL.items()}


@pytest.mark.parametrize("name", ["fedavg", "prompt-experts"])
def test_sites_silent_in_evaluation_are_reported_missing(name: str, flower_task: None) -> None:
    missing: list[tuple[int, str, list[int]]] = []
    seen = Seen()
    seen.on_missing = lambda r, phase, nodes: missing.append((r, phase, nodes))  # type: ignore[attr-defined]
    strategy = _strategy(name, seen)
    list(strategy.configure_evaluate(1, array_record(GLOBAL), ConfigRecord(), FakeGrid(NODES)))
    strategy.aggregate_evaluate(1, [reply(3, auc=0.8), reply(4, auc=0.7)])
    assert missing == [(1, "evaluate", [1, 2])]


def _failed(node_id: int) -> Any:
    msg = reply(node_id, status="failed", n=0)
    msg.content["site"]["category"] = "data-error"
    msg.content["site"]["incident"] = "0a1b2c3d4e5f"
    msg.content["site"]["reason"] = "see /data/MRN-1234"  # a site's own text is never taken
    return msg


@pytest.mark.parametrize("name", list_strategies())
def test_round_with_fewer_trained_sites_than_min_train_nodes_fails_the_run(name: str, flower_task: None) -> None:
    seen = Seen()
    strategy = _strategy(name, seen, min_train_nodes=2)
    strategy.num_sampled = 3
    with pytest.raises(TooFewSites) as caught:
        strategy.aggregate_train(2, [reply(1, arrays=_update(name, 0.1)), _failed(2), _failed(3)])
    assert str(caught.value) == (
        "round 2: 1 of 3 sites trained, min_train_nodes = 2; failed: site-2 data-error (incident 0a1b2c3d4e5f); "
        "failed: site-3 data-error (incident 0a1b2c3d4e5f)"
    )
    assert seen.calls[-1] == (2, "train", ["ok", "failed", "failed"])  # recorded before the run fails


@pytest.mark.parametrize("name", ["fedavg", "fedadam"])
def test_run_file_may_ask_to_continue_with_too_few_sites(name: str, flower_task: None) -> None:
    strategy = _strategy(name, Seen(), min_train_nodes=2, on_too_few_sites="continue")
    arrays, _ = strategy.aggregate_train(1, [reply(1, arrays=_update(name, 0.1)), _failed(2)])
    assert arrays is not None  # Flower's own behaviour: whatever arrived is aggregated


def test_sites_leaving_for_budget_do_not_fail_the_round(flower_task: None) -> None:
    strategy = _strategy("fedavg", Seen(), min_train_nodes=2)
    arrays, _ = strategy.aggregate_train(1, [reply(1, arrays=_update("fedavg", 0.1)), reply(2, status="left-budget")])
    assert arrays is not None


def test_failed_evaluation_reply_is_not_averaged(flower_task: None) -> None:
    seen = Seen()
    strategy = _strategy("fedavg", seen, min_evaluate_nodes=1)
    metrics = strategy.aggregate_evaluate(1, [reply(1, auc=0.8), _failed(2)])
    assert metrics is not None and metrics["auc"] == pytest.approx(0.8)
    assert seen.calls[-1] == (1, "evaluate", ["ok", "failed"])
