"""FairFedAvg: q-FFL weights favour high-loss sites; q = 0 is FedAvg."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import fedeye.strategies.fairfedavg
from fedeye.config import StrategyConfig
from fedeye.strategies import build_strategy
from fedeye.strategies.fairfedavg import FairFedAvg, qffl_weights
from tests.strategies.conftest import array_record, reply

GLOBAL = {"w": np.zeros((2, 2), np.float32)}


def _strategy(q: float | None = None) -> Any:
    strategy = build_strategy(StrategyConfig(name="fairfedavg", min_train_nodes=1, min_available_nodes=1))
    if q is not None:
        strategy.q = q
    strategy.global_arrays = array_record(GLOBAL)
    return strategy


def test_weights_hand_case_and_q_zero_is_fedavg() -> None:
    assert qffl_weights([0.5, 1.0], [10, 10], q=1.0) == pytest.approx([1 / 3, 2 / 3])
    assert qffl_weights([0.5, 1.0], [10, 30], q=0.0) == pytest.approx([0.25, 0.75])
    assert qffl_weights([0.2, 0.4], [1, 1], q=2.0) == pytest.approx([0.2, 0.8])


def test_larger_q_moves_weight_to_the_worst_site() -> None:
    losses, n = [0.3, 0.5, 0.9], [100, 100, 100]
    worst = [qffl_weights(losses, n, q=q)[2] for q in (0.0, 1.0, 2.0, 5.0)]
    assert worst == sorted(worst) and worst[0] == pytest.approx(1 / 3) and worst[-1] > 0.9


def test_invalid_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="q >= 0"):
        qffl_weights([0.5], [1], q=-1.0)
    with pytest.raises(ValueError, match="equal length"):
        qffl_weights([0.5, 0.2], [1], q=1.0)


def test_aggregate_favours_the_high_loss_site() -> None:
    replies = [
        reply(1, arrays={"w": np.full((2, 2), 1.0, np.float32)}, n=10, loss=0.2),
        reply(2, arrays={"w": np.full((2, 2), 3.0, np.float32)}, n=10, loss=0.8),
    ]
    arrays, metrics = _strategy(q=1.0).aggregate_train(1, replies)
    assert arrays is not None and np.allclose(arrays["w"].numpy(), 0.2 * 1.0 + 0.8 * 3.0)
    assert metrics is not None and metrics["loss"] == pytest.approx(0.5)  # metrics still weighted by num-examples


def test_q_zero_equals_fedavg() -> None:
    replies = [
        reply(1, arrays={"w": np.full((2, 2), 1.0, np.float32)}, n=30, loss=0.2),
        reply(2, arrays={"w": np.full((2, 2), 3.0, np.float32)}, n=10, loss=0.8),
    ]
    fair, _ = _strategy(q=0.0).aggregate_train(1, replies)
    plain, _ = build_strategy(StrategyConfig(min_train_nodes=1, min_available_nodes=1)).aggregate_train(1, replies)
    assert np.allclose(fair["w"].numpy(), plain["w"].numpy())


def test_replies_without_loss_fall_back_to_fedavg_weights() -> None:
    replies = [
        reply(1, arrays={"w": np.full((2, 2), 1.0, np.float32)}, n=30),
        reply(2, arrays={"w": np.full((2, 2), 3.0, np.float32)}, n=10),
    ]
    arrays, _ = _strategy(q=5.0).aggregate_train(1, replies)
    assert np.allclose(arrays["w"].numpy(), 1.5)


def test_from_config_defaults_and_mro() -> None:
    strategy = FairFedAvg.from_config(StrategyConfig(min_train_nodes=3))
    assert strategy.q == fedeye.strategies.fairfedavg.DEFAULT_Q and strategy.min_train_nodes == 3
    names = [c.__name__ for c in FairFedAvg.__mro__]
    assert names.index("ObservedStrategy") < names.index("_LossWeightedFedAvg") < names.index("FedAvg", 2)


def test_under_client_level_dp_sites_weigh_equally() -> None:
    """The noise is calibrated to an unweighted mean: loss weights would raise one site's share above 1/m."""
    replies = [
        reply(1, arrays={"w": np.full((2, 2), 1.0, np.float32)}, n=30, loss=0.2),
        reply(2, arrays={"w": np.full((2, 2), 3.0, np.float32)}, n=10, loss=0.8),
    ]
    strategy = _strategy(q=5.0)
    strategy.equal_weights = True  # what wrap_client_dp sets
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None and np.allclose(arrays["w"].numpy(), 2.0)
