"""FairFedAvg: FedAvg that gives sites with a higher training loss more weight (q-FFL)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg as FlowerFedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

from fedeye.strategies.base import ObservedStrategy, register_strategy, sampling_kwargs

if TYPE_CHECKING:
    from fedeye.config import StrategyConfig

DEFAULT_Q = 2.0
LOSS_KEY = "loss"
_WEIGHT_KEY = "qffl-weight"
_EPS = 1e-10


def qffl_weights(losses: Sequence[float], num_examples: Sequence[float], *, q: float) -> np.ndarray:
    """Aggregation weights ``n_k * loss_k**q``, normalised to sum to 1.

    The q-FFL objective ``sum_k p_k F_k(w)**(q+1) / (q+1)`` (Li et al., 2020)
    has gradient ``sum_k p_k F_k(w)**q grad F_k(w)``: averaging site updates
    with these weights follows it, so sites the model serves badly (high loss)
    pull harder. ``q = 0`` is FedAvg.

    Parameters
    ----------
    losses : Sequence[float]
        Each site's training loss (non-negative).
    num_examples : Sequence[float]
        Each site's FedAvg weight ``p_k`` (its number of examples).
    q : float
        Fairness strength, ``>= 0``.

    Returns
    -------
    np.ndarray
        One weight per site, summing to 1.

    >>> qffl_weights([0.5, 1.0], [10, 10], q=1.0).round(3).tolist()
    [0.333, 0.667]
    """
    loss = np.asarray(losses, dtype=np.float64)
    n = np.asarray(num_examples, dtype=np.float64)
    if q < 0 or np.any(loss < 0) or np.any(n < 0) or len(loss) != len(n):
        raise ValueError(f"need q >= 0 and non-negative losses/num_examples of equal length; got q={q}, {loss}, {n}")
    raw = n * np.power(loss + _EPS, q)
    return raw / raw.sum() if raw.sum() > 0 else np.full(len(raw), 1.0 / len(raw))


class _LossWeightedFedAvg(FlowerFedAvg):
    """Flower FedAvg whose array average uses :func:`qffl_weights`.

    Metrics are still averaged by ``num-examples``. When a reply lacks a
    finite ``loss`` the round falls back to plain FedAvg weights.
    """

    q: float = DEFAULT_Q

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        valid, _ = self._check_and_log_replies(replies, is_train=True)
        if not valid:
            return None, None
        contents = [msg.content for msg in valid]
        weights = self.site_weights(contents)
        weighted = [
            RecordDict({"arrays": c[self.arrayrecord_key], "metrics": MetricRecord({_WEIGHT_KEY: float(w)})})
            for c, w in zip(contents, weights)
        ]
        return aggregate_arrayrecords(weighted, _WEIGHT_KEY), self.train_metrics_aggr_fn(contents, self.weighted_by_key)

    def site_weights(self, contents: list[RecordDict]) -> np.ndarray:
        """Each reply's share of the new global model."""
        metrics = [next(iter(c.metric_records.values())) for c in contents]
        n = [float(m.get(self.weighted_by_key, 1.0)) for m in metrics]  # type: ignore[arg-type]
        losses = [m.get(LOSS_KEY) for m in metrics]
        if not all(isinstance(x, int | float) and np.isfinite(x) and x >= 0 for x in losses):
            return qffl_weights([1.0] * len(n), n, q=0.0)
        # Client-level DP calibrates its noise to an unweighted mean (sensitivity C / m): loss weights would let
        # one site carry up to the whole update, so under it q-FFL is off (equal_weights, set by wrap_client_dp).
        q = 0.0 if getattr(self, "equal_weights", False) else self.q
        return qffl_weights([float(x) for x in losses], n, q=q)  # type: ignore[arg-type]


@register_strategy("fairfedavg")
class FairFedAvg(ObservedStrategy, _LossWeightedFedAvg):
    """FedAvg reweighted towards high-loss sites: the q-FFL weighting.

    Each round the global model is the average of the site models with
    weights ``n_k * loss_k**q`` (normalised), where ``loss_k`` is the training
    loss site ``k`` reports. This follows the gradient of the q-Fair Federated
    Learning objective (Li, Sanjabi, Beirami & Smith, "Fair Resource
    Allocation in Federated Learning", ICLR 2020,
    https://arxiv.org/abs/1905.10497); like Agnostic FL (Mohri et al., 2019)
    it trades some average accuracy for the worst-served site. Unlike Flower's
    ``QFedAvg`` it needs no Lipschitz estimate from the learning rate (FedEye
    sites train with AdamW). ``q = 0`` is FedAvg; ``strategy.fairness_q`` sets
    it (default :data:`DEFAULT_Q`).

    >>> from fedeye.config import StrategyConfig
    >>> FairFedAvg.from_config(StrategyConfig(min_train_nodes=3)).q
    2.0
    """

    @classmethod
    def from_config(cls, cfg: StrategyConfig) -> FairFedAvg:
        strategy = cls(**sampling_kwargs(cfg))
        strategy.q = cfg.fairness_q
        return strategy
