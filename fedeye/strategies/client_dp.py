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

**prompt-experts** (:class:`ExpertFixedClipping`, :class:`ExpertAdaptiveClipping`).
A site's contribution is its update of the shared parts (shared prompt,
head and, in full mode, the backbone) *and* of its own expert row: the two
are clipped **jointly**, as one vector, to ``C``. The shared parts are
averaged over the ``m`` sites and get noise ``sigma C / m``, as in DP-FedAvg.
Expert row ``k`` is written by site ``k`` alone, not averaged, so it gets its
own noise ``sigma C``, and so does every *assigned* row each round whether
its site reported or not (the assignment follows the connected nodes, not
the replies). Then removing one site changes the released
``(m * shared mean, row_1, ..., row_K)`` by its clipped contribution, norm
at most ``C``, against noise ``sigma C`` on every coordinate: the same
Gaussian mechanism, and the same epsilon, as DP-FedAvg with ``sigma``. The
router's prototypes (``router.keys``, ``router.spread``) are absolute site
statistics, not updates, that clipping an update would destroy: under
client-level DP they are not sent on (the router stays untrained and
unseen images get the uniform mix of experts). Caveat: one row per site
makes the set of experts visible; with a fixed consortium the sites'
participation is public anyway.

**Arrays no site trains** (the frozen backbone in ``prompt`` and ``head``
mode, and buffers such as the feature standardiser in every mode) are not
part of the mechanism: Flower's wrappers would add ``sigma C / m`` of noise
to every coordinate of the aggregate, re-noising a pretrained backbone every
round. :func:`wrap_client_dp` takes their names (``frozen``); the wrapper
sets them in every reply to what this round's global model sent (an update
of 0, so clipping is unchanged), lets Flower clip, aggregate and noise, and
releases them as sent. Their values then do not depend on any site's data,
so releasing them costs no privacy. (They stay in the replies because
FedAdam and FedYogi check that the aggregate has every array they sent.)

**fairfedavg** under client-level DP aggregates with equal weights: its
q-FFL loss weights would let one site carry up to the whole update, above
the ``C / m`` the noise is calibrated to.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)

from fedeye.models.prompt_arrays import BANK_KEY, EXPERT_KEY, EXPERT_PREFIX
from fedeye.privacy.accounting import MechanismStep, epsilon_spent
from fedeye.privacy.policy import PrivacyConfig
from fedeye.strategies.prompt_experts import PromptExperts


class _JudgedClientDP:
    """Mixin before a Flower DP wrapper: judge first, then clip and noise the accepted sites."""

    strategy: Any
    num_sampled_clients: int
    noise_multiplier: float
    delta: float
    history: list[MechanismStep]
    current_arrays: ArrayRecord
    frozen: frozenset[str] = frozenset()  # arrays no site trains: released as sent, never clipped or noised

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        accepted = self.strategy.judge_train_replies(server_round, replies)
        self.strategy.prejudged_round = server_round  # the inner aggregate_train must not judge (or record) again
        if not accepted:
            return None, None
        self.num_sampled_clients = len(accepted)
        sent = self.current_arrays
        frozen = {k for k in sent if k in self.frozen}
        for reply in accepted:  # frozen arrays as sent (an update of 0); every array in sent's order, as Flower
            reply.content["arrays"] = _as_sent(reply.content.array_records["arrays"], sent, frozen)  # pairs them
        arrays, metrics = super().aggregate_train(server_round, accepted)  # type: ignore[misc]
        self._account(server_round)
        if arrays is None or not frozen:
            return arrays, metrics
        return _as_sent(arrays, sent, frozen), metrics  # the noise Flower added to frozen arrays is dropped

    def _account(self, server_round: int) -> None:
        """Compose this round (sample rate = sampled / connected sites) into the ledger."""
        sampled = self.strategy.num_sampled or 1
        total = max(self.strategy.num_nodes, sampled)
        self.history.append(MechanismStep(self.noise_multiplier, sampled / total, 1))
        observer = self.strategy.observer
        if observer is not None and hasattr(observer, "on_client_dp"):
            epsilon = epsilon_spent(self.history, delta=self.delta, accountant="rdp")
            observer.on_client_dp(
                server_round,
                epsilon=epsilon,
                delta=self.delta,
                noise_multiplier=self.noise_multiplier,
                sample_rate=sampled / total,
                rounds=len(self.history),
            )


class JudgedFixedClipping(_JudgedClientDP, DifferentialPrivacyServerSideFixedClipping):
    """Flower's server-side fixed clipping, over judged replies only."""


class JudgedAdaptiveClipping(_JudgedClientDP, DifferentialPrivacyServerSideAdaptiveClipping):
    """Flower's server-side adaptive clipping, over judged replies only."""


class _ExpertClientDP(_JudgedClientDP):
    """Client-level DP for prompt-experts: shared parts and own row clipped jointly, each row noised alone."""

    clipping_norm: float
    rng: np.random.Generator

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        accepted = self.strategy.judge_train_replies(server_round, replies)
        self.strategy.prejudged_round = server_round
        if not accepted:
            return None, None
        self.num_sampled_clients, norm = len(accepted), self.clipping_norm
        reference = self.strategy.global_numpy
        clipped = 0
        for reply in accepted:
            update = {k: v.numpy() for k, v in reply.content.array_records["arrays"].items()}
            row = self.strategy.experts[reply.metadata.src_node_id]
            arrays, was_clipped = clip_site_update(update, reference, row=row, clipping_norm=norm)
            reply.content["arrays"] = ArrayRecord({k: Array(v) for k, v in arrays.items()})
            clipped += int(was_clipped)
        self._adapt(clipped, len(accepted))
        aggregated, metrics = self.strategy.aggregate_train(server_round, accepted)
        if aggregated is not None:
            noisy = noise_expert_aggregate(
                {k: v.numpy() for k, v in aggregated.items()},
                set(accepted[0].content["arrays"]) - self.frozen,
                rows=sorted(self.strategy.experts.values()),
                noise_multiplier=self.noise_multiplier,
                clipping_norm=norm,
                num_sites=len(accepted),
                rng=self.rng,
            )
            for key in self.frozen & set(noisy):  # as the global model sent them, whatever a site replied
                noisy[key] = reference[key]
            aggregated = ArrayRecord({k: Array(np.array(v, order="C")) for k, v in noisy.items()})
        self._account(server_round)
        return aggregated, metrics

    def _adapt(self, clipped: int, sites: int) -> None:
        """Adaptive clipping: move ``C`` towards the target quantile with a noisy clipped count."""


class ExpertFixedClipping(_ExpertClientDP, DifferentialPrivacyServerSideFixedClipping):
    """Fixed clipping for prompt-experts (see the module docstring)."""


class ExpertAdaptiveClipping(_ExpertClientDP, DifferentialPrivacyServerSideAdaptiveClipping):
    """Adaptive clipping (Andrew et al. 2021) for prompt-experts: Flower's noisy count and geometric update."""

    def _adapt(self, clipped: int, sites: int) -> None:
        self._geometric_update(self._noisy_fraction(clipped, sites))


def clip_site_update(
    update: dict[str, np.ndarray], reference: dict[str, np.ndarray], *, row: int, clipping_norm: float
) -> tuple[dict[str, np.ndarray], bool]:
    """Clip a prompt-experts reply's change (shared arrays and own bank row, jointly) to L2 norm ``C``.

    The router's prototype rows are dropped (see the module docstring).
    Returns the clipped reply and whether it was clipped.

    >>> ref = {"w": np.zeros(2), BANK_KEY: np.zeros((3, 1, 2))}
    >>> reply = {"w": np.array([3.0, 0.0]), EXPERT_KEY: np.array([[0.0, 4.0]])}
    >>> out, hit = clip_site_update(reply, ref, row=1, clipping_norm=1.0)
    >>> hit, float(np.linalg.norm(np.concatenate([out["w"], out[EXPERT_KEY].ravel()])))
    (True, 1.0)
    """
    kept = {k: v for k, v in update.items() if not k.startswith(EXPERT_PREFIX) or k == EXPERT_KEY}
    deltas = {k: v.astype(np.float64) - _reference(reference, k, row) for k, v in kept.items()}
    total = float(np.sqrt(sum(float(np.sum(d**2)) for d in deltas.values())))
    scale = min(1.0, clipping_norm / max(total, 1e-12))
    clipped = {k: (_reference(reference, k, row) + d * scale).astype(kept[k].dtype) for k, d in deltas.items()}
    return clipped, scale < 1.0


def _as_sent(record: ArrayRecord, sent: ArrayRecord, frozen: set[str]) -> ArrayRecord:
    """``record`` in ``sent``'s key order, with the ``frozen`` arrays replaced by ``sent``'s."""
    return ArrayRecord({k: sent[k] if k in frozen else record[k] for k in sent})


def _reference(reference: dict[str, np.ndarray], key: str, row: int) -> np.ndarray:
    value = reference[BANK_KEY][row] if key == EXPERT_KEY else reference[key]
    return np.asarray(value, dtype=np.float64)


def noise_expert_aggregate(
    aggregated: dict[str, np.ndarray],
    sent: set[str],
    *,
    rows: list[int],
    noise_multiplier: float,
    clipping_norm: float,
    num_sites: int,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Gaussian noise on a prompt-experts aggregate: ``sigma C / m`` on the shared mean, ``sigma C`` per assigned row.

    ``sent`` are the array names of a site's reply: only those changed this
    round (the rest is the frozen backbone).
    """
    out = dict(aggregated)
    shared_std, row_std = noise_multiplier * clipping_norm / num_sites, noise_multiplier * clipping_norm
    for key in sent:
        if key.startswith(EXPERT_PREFIX):
            continue
        out[key] = (out[key] + rng.normal(0.0, shared_std, out[key].shape)).astype(out[key].dtype)
    if EXPERT_KEY in sent:
        bank = out[BANK_KEY].copy()
        for row in rows:
            bank[row] = bank[row] + rng.normal(0.0, row_std, bank[row].shape).astype(bank.dtype)
        out[BANK_KEY] = bank
    return out


def clipped_count_stddev(*, noise_multiplier: float, num_sampled_sites: int) -> float:
    """Std of the noise on the adaptive-clipping count: Andrew et al.'s ``m / 20``, at least ``sigma``.

    Flower splits ``sigma`` between the update and the count as
    ``sigma_update = (sigma**-2 - (2 * std_count)**-2) ** -0.5``, which needs
    ``2 * std_count > sigma``. With ``m / 20`` that fails below ``m = 10 sigma``
    sites, so few hospitals get ``std_count = sigma`` (update noise x1.15).
    """
    return max(num_sampled_sites / 20.0, noise_multiplier)


def wrap_client_dp(
    strategy: Strategy,
    privacy: PrivacyConfig,
    *,
    num_sampled_sites: int,
    num_sites: int | None = None,
    frozen: frozenset[str] = frozenset(),
) -> Strategy:
    """Wrap ``strategy`` in Flower's server-side clipping per ``privacy.client_level``.

    ``"off"`` returns ``strategy`` itself; ``"fixed"`` clips to
    ``client_clipping_norm``; ``"adaptive"`` starts there and adapts
    (target quantile 0.5, learning rate 0.2). ``num_sampled_sites`` is the
    number of sites trained per round (the noise is divided by it).
    ``frozen`` names the arrays no site trains (:func:`fedeye.models.io.untrained_keys`):
    they are released unchanged, outside the mechanism.

    >>> from fedeye.config import StrategyConfig
    >>> from fedeye.strategies import build_strategy
    >>> inner = build_strategy(StrategyConfig())
    >>> wrap_client_dp(inner, PrivacyConfig(client_level="fixed"), num_sampled_sites=3).strategy is inner
    True
    """
    if privacy.client_level == "off":
        return strategy
    sigma, norm = privacy.client_noise_multiplier, privacy.client_clipping_norm
    experts = isinstance(strategy, PromptExperts)
    wrapper: _JudgedClientDP
    if privacy.client_level == "fixed":
        wrapper = (ExpertFixedClipping if experts else JudgedFixedClipping)(strategy, sigma, norm, num_sampled_sites)
    else:
        wrapper = (ExpertAdaptiveClipping if experts else JudgedAdaptiveClipping)(
            strategy,
            sigma,
            num_sampled_sites,
            initial_clipping_norm=norm,
            clipped_count_stddev=clipped_count_stddev(noise_multiplier=sigma, num_sampled_sites=num_sampled_sites),
        )
    strategy.equal_weights = True  # type: ignore[attr-defined]
    wrapper.delta = privacy.delta or 1.0 / (10.0 * max(num_sites or num_sampled_sites, 1))
    wrapper.history = []
    wrapper.frozen = frozenset(frozen)
    if isinstance(wrapper, _ExpertClientDP):
        wrapper.rng = np.random.default_rng()  # OS entropy: the noise must be unpredictable
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
