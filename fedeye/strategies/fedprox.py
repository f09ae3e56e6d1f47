"""FedProx, as Flower implements it, observed by FedEye."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flwr.serverapp.strategy import FedProx as FlowerFedProx

from fedeye.strategies.base import ObservedStrategy, register_strategy, sampling_kwargs

if TYPE_CHECKING:
    from fedeye.config import StrategyConfig


@register_strategy("fedprox")
class FedProx(ObservedStrategy, FlowerFedProx):
    """FedProx (Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020).

    The server is FedAvg; Flower's :class:`flwr.serverapp.strategy.FedProx`
    sends ``proximal-mu`` in every training config and each site adds
    ``mu/2 * ||w - w_global||^2`` over its trainable weights to its loss
    (:func:`fedeye.client.training.train_local`), which keeps heterogeneous
    sites from drifting far from the global model. ``strategy.proximal_mu``
    sets mu.

    >>> from fedeye.config import StrategyConfig
    >>> FedProx.from_config(StrategyConfig(proximal_mu=0.1)).proximal_mu
    0.1
    """

    @classmethod
    def from_config(cls, cfg: StrategyConfig) -> FedProx:
        return cls(
            **sampling_kwargs(cfg),
            proximal_mu=cfg.proximal_mu,
        )
