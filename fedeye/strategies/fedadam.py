"""FedAdam: Adam on the coordinator over the sites' averaged update (Flower's class)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAdam as FlowerFedAdam

from fedeye.strategies.base import ObservedStrategy, register_strategy, sampling_kwargs

if TYPE_CHECKING:
    from fedeye.config import StrategyConfig


class KeepDtype:
    """Return the server optimiser's new arrays in the global model's dtypes.

    Flower's FedOpt update mixes float32 arrays with float64 scalars and
    returns float64, which would double every later message (and change the
    dtype the sites receive).
    """

    current_arrays: dict[str, np.ndarray] | None

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        dtypes = {k: v.dtype for k, v in (self.current_arrays or {}).items()}
        arrays, metrics = super().aggregate_train(server_round, replies)  # type: ignore[misc]
        if arrays is None:
            return None, metrics
        cast = {k: np.asarray(v.numpy(), dtype=dtypes.get(k, v.numpy().dtype)) for k, v in arrays.items()}
        return ArrayRecord({k: Array(v) for k, v in cast.items()}), metrics


@register_strategy("fedadam")
class FedAdam(ObservedStrategy, KeepDtype, FlowerFedAdam):
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
