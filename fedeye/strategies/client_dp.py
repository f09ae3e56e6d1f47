"""Client-level (site-level) differential privacy around any FedEye strategy.

DP-FedAvg (McMahan et al., 2018, https://arxiv.org/abs/1710.06963): the
coordinator clips each site's model update ``theta_site - theta_global`` to
L2 norm ``C`` and adds Gaussian noise of std ``sigma * C / m`` to the average
of the ``m`` sampled sites' updates. The protected unit is a whole hospital:
the released model barely depends on whether any one site took part.
Adaptive clipping (Andrew et al., 2021, https://arxiv.org/abs/1905.03871)
moves ``C`` each round towards a quantile of the update norms, using a
noisy count of clipped sites.

Flower implements both as strategy wrappers
(:class:`~flwr.serverapp.strategy.DifferentialPrivacyServerSideFixedClipping`,
:class:`~flwr.serverapp.strategy.DifferentialPrivacyServerSideAdaptiveClipping`);
:func:`wrap_client_dp` puts one around a FedEye strategy.

With few hospitals the noise is large. The noise std on the average update
is ``sigma * C / m``: with ``m = 5`` sites and ``sigma = 1`` it is ``C / 5``,
about the size of one site's whole clipped contribution, every round. The
DP-FedAvg paper needed thousands of clients per round for useful models.
Across a handful of hospitals, client-level DP gives a meaningful epsilon
only at a large cost in accuracy; sample-level DP-SGD inside each site
(``fedeye.privacy``) protects patients instead and is usually the better fit.

How the wrappers meet FedEye's :class:`~fedeye.strategies.base.ObservedStrategy`:
:func:`wrap_client_dp` returns subclasses of Flower's wrappers that first let
the inner strategy judge and record every reply (errors, sites that left for
budget, non-finite or malformed updates), then clip, aggregate and add noise
over the *accepted* sites only, with the noise calibrated to their number
``m`` that round. Sites are weighted equally (the noise is calibrated to an
unweighted mean). After each round the federation's epsilon (RDP, composed
over rounds) is reported to the observer for the privacy ledger.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)

from fedeye.privacy.accounting import MechanismStep, epsilon_spent
from fedeye.privacy.policy import PrivacyConfig


class _JudgedClientDP:
    """Mixin before a Flower DP wrapper: judge first, then clip and noise the accepted sites."""

    strategy: Any
    num_sampled_clients: int
    noise_multiplier: float
    delta: float
    history: list[MechanismStep]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        accepted = self.strategy.judge_train_replies(server_round, replies)
        self.strategy.prejudged_round = server_round  # the inner aggregate_train must not judge (or record) again
        if not accepted:
            return None, None
        self.num_sampled_clients = len(accepted)
        result = super().aggregate_train(server_round, accepted)  # type: ignore[misc]
        self._account(server_round)
        return result  # type: ignore[no-any-return]

    def _account(self, server_round: int) -> None:
        """Compose this round (sample rate = sampled / connected sites) into the ledger."""
        sampled = self.strategy.num_sampled or 1
        total = max(self.strategy.num_nodes, sampled)
        self.history.append(MechanismStep(self.noise_multiplier, sampled / total, 1))
        observer = self.strategy.observer
        if observer is not None and hasattr(observer, "on_client_dp"):
            epsilon = epsilon_spent(self.history, delta=self.delta, accountant="rdp")
            observer.on_client_dp(server_round, epsilon=epsilon, delta=self.delta, noise_multiplier=self.noise_multiplier,
                                  sample_rate=sampled / total, rounds=len(self.history))


class JudgedFixedClipping(_JudgedClientDP, DifferentialPrivacyServerSideFixedClipping):
    """Flower's server-side fixed clipping, over judged replies only."""


class JudgedAdaptiveClipping(_JudgedClientDP, DifferentialPrivacyServerSideAdaptiveClipping):
    """Flower's server-side adaptive clipping, over judged replies only."""


def clipped_count_stddev(*, noise_multiplier: float, num_sampled_sites: int) -> float:
    """Std of the noise on the adaptive-clipping count: Andrew et al.'s ``m / 20``, at least ``sigma``.

    Flower splits ``sigma`` between the update and the count as
    ``sigma_update = (sigma**-2 - (2 * std_count)**-2) ** -0.5``, which needs
    ``2 * std_count > sigma``. With ``m / 20`` that fails below ``m = 10 sigma``
    sites, so few hospitals get ``std_count = sigma`` (update noise x1.15).
    """
    return max(num_sampled_sites / 20.0, noise_multiplier)


def wrap_client_dp(strategy: Strategy, privacy: PrivacyConfig, *, num_sampled_sites: int, num_sites: int | None = None) -> Strategy:
    """Wrap ``strategy`` in Flower's server-side clipping per ``privacy.client_level``.

    ``"off"`` returns ``strategy`` itself; ``"fixed"`` clips to
    ``client_clipping_norm``; ``"adaptive"`` starts there and adapts
    (target quantile 0.5, learning rate 0.2). ``num_sampled_sites`` is the
    number of sites trained per round (the noise is divided by it).

    >>> from fedeye.config import StrategyConfig
    >>> from fedeye.strategies import build_strategy
    >>> inner = build_strategy(StrategyConfig())
    >>> wrap_client_dp(inner, PrivacyConfig(client_level="fixed"), num_sampled_sites=3).strategy is inner
    True
    """
    if privacy.client_level == "off":
        return strategy
    sigma, norm = privacy.client_noise_multiplier, privacy.client_clipping_norm
    wrapper: _JudgedClientDP
    if privacy.client_level == "fixed":
        wrapper = JudgedFixedClipping(strategy, sigma, norm, num_sampled_sites)
    else:
        wrapper = JudgedAdaptiveClipping(
            strategy, sigma, num_sampled_sites, initial_clipping_norm=norm,
            clipped_count_stddev=clipped_count_stddev(noise_multiplier=sigma, num_sampled_sites=num_sampled_sites),
        )
    strategy.equal_weights = True  # type: ignore[attr-defined]
    wrapper.delta = privacy.delta or 1.0 / (10.0 * max(num_sites or num_sampled_sites, 1))
    wrapper.history = []
    return wrapper


def client_level_epsilon(*, noise_multiplier: float, sample_rate: float, rounds: int, delta: float) -> float:
    """Site-level epsilon of ``rounds`` DP-FedAvg rounds (RDP accountant).

    Each round is one subsampled Gaussian mechanism with noise multiplier
    ``sigma`` and sampling rate ``q = sampled sites / all sites``
    (McMahan et al., 2018). The accountant assumes Poisson sampling; Flower
    samples a fixed number of sites without replacement, so the result is an
    approximation for fixed-size sampling. With ``q = 1`` (every hospital
    every round, the usual case) there is no amplification and it is exact.
    Adaptive clipping spends the same ``sigma`` in total (split between
    update and count), so the same epsilon applies.

    >>> round(client_level_epsilon(noise_multiplier=1.0, sample_rate=1.0, rounds=10, delta=1e-3), 1)
    15.5
    """
    step = MechanismStep(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=rounds)
    return epsilon_spent([step], delta=delta, accountant="rdp")
