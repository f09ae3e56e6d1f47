"""Federated Averaging, as Flower implements it, observed by FedEye."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flwr.serverapp.strategy import FedAvg as FlowerFedAvg

from fedeye.strategies.base import ObservedStrategy, register_strategy, sampling_kwargs

if TYPE_CHECKING:
    from fedeye.config import StrategyConfig


@register_strategy("fedavg")
class FedAvg(ObservedStrategy, FlowerFedAvg):
    """FedAvg (McMahan et al., 2017, https://arxiv.org/abs/1602.05629).

    Sites' arrays are averaged weighted by ``num-examples``; Flower's
    :class:`flwr.serverapp.strategy.FedAvg` does the work.

    >>> from fedeye.config import StrategyConfig
    >>> FedAvg.from_config(StrategyConfig(min_train_nodes=3)).min_train_nodes
    3
    """

    @classmethod
    def from_config(cls, cfg: StrategyConfig) -> FedAvg:
        return cls(**sampling_kwargs(cfg))
