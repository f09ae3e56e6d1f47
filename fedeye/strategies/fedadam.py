"""FedAdam: Adam on the coordinator over the sites' averaged update (Flower's class)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flwr.serverapp.strategy import FedAdam as FlowerFedAdam

from fedeye.strategies.base import ObservedStrategy, register_strategy, sampling_kwargs

if TYPE_CHECKING:
    from fedeye.config import StrategyConfig


@register_strategy("fedadam")
class FedAdam(ObservedStrategy, FlowerFedAdam):
    """FedAdam (Reddi et al., "Adaptive Federated Optimization", ICLR 2021).

    The sites' FedAvg average minus the current global model is a
    pseudo-gradient that an Adam optimiser on the coordinator applies with
    step size ``strategy.server_lr`` (Flower's ``eta``). Flower's default eta
    of 0.1 suits SGD-trained CNNs; with transformers whose weights are of
    order 0.02 that step throws the model away in one round, so FedEye's
    default is 0.01 and ``tau`` (the adaptivity floor) stays Flower's 1e-3.

    >>> from fedeye.config import StrategyConfig
    >>> FedAdam.from_config(StrategyConfig(server_lr=0.003)).eta
    0.003
    """

    @classmethod
    def from_config(cls, cfg: StrategyConfig) -> FedAdam:
        return cls(
            **sampling_kwargs(cfg),
            eta=cfg.server_lr,
        )
