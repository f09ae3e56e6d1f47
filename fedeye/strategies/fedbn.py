"""FedBN-style local normalisation for transformers: LayerNorm weights stay at each site."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg as FlowerFedAvg

from fedeye.protocol import LOCAL_NORMS
from fedeye.strategies.base import ObservedStrategy, register_strategy, sampling_kwargs

if TYPE_CHECKING:
    from fedeye.config import StrategyConfig

#: Config key telling sites to keep their own normalisation weights.
LOCAL_NORMS_KEY = LOCAL_NORMS


@register_strategy("fedbn")
class FedBN(ObservedStrategy, FlowerFedAvg):
    """FedAvg whose sites keep their own normalisation layers (Li et al., FedBN, ICLR 2021).

    FedBN keeps batch-norm statistics and affine weights local so that each
    site's feature distribution (its scanner, its staining, its camera) is
    normalised its own way. A ViT has LayerNorm instead of BatchNorm; the
    analogue keeps every LayerNorm's weight and bias at the site: each site
    trains and evaluates with its own, and only the other weights it receives
    overwrite its model (:mod:`fedeye.client.app` keeps the norms in the
    node's Flower context between rounds).

    The coordinator still averages the norms it receives, so the global model
    it saves has *some* normalisation for a site it has never seen (the
    leave-one-site-out benchmark evaluates exactly that model there); FedBN
    itself gives no answer for unseen sites.

    >>> from fedeye.config import StrategyConfig
    >>> FedBN.from_config(StrategyConfig(min_train_nodes=3)).min_train_nodes
    3
    """

    @classmethod
    def from_config(cls, cfg: StrategyConfig) -> FedBN:
        return cls(**sampling_kwargs(cfg))

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        config[LOCAL_NORMS_KEY] = True
        return super().configure_train(server_round, arrays, config, grid)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        config[LOCAL_NORMS_KEY] = True
        return super().configure_evaluate(server_round, arrays, config, grid)
