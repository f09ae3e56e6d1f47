"""FedYogi: Yogi on the coordinator over the sites' averaged update (Flower's class)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flwr.serverapp.strategy import FedYogi as FlowerFedYogi

from fedeye.strategies.base import ObservedStrategy, register_strategy, sampling_kwargs
from fedeye.strategies.fedadam import KeepDtype

if TYPE_CHECKING:
    from fedeye.config import StrategyConfig


@register_strategy("fedyogi")
class FedYogi(ObservedStrategy, KeepDtype, FlowerFedYogi):
    """FedYogi (Reddi et al., "Adaptive Federated Optimization", ICLR 2021).

    Like :class:`~fedeye.strategies.fedadam.FedAdam`, with Yogi's additive
    second-moment update, which grows the effective step more slowly when
    sites disagree. ``strategy.server_lr`` is Flower's ``eta``.

    >>> from fedeye.config import StrategyConfig
    >>> FedYogi.from_config(StrategyConfig()).eta
    0.01
    """

    @classmethod
    def from_config(cls, cfg: StrategyConfig) -> FedYogi:
        return cls(
            **sampling_kwargs(cfg),
            eta=cfg.server_lr,
        )
