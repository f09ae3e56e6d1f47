"""Plan a round of patient-level DP-SGD at one site: pure arithmetic over its history.

The privacy unit is the *patient*: each step Poisson-samples patients with
rate ``q``, clips each sampled patient's gradient and adds Gaussian noise of
standard deviation ``sigma * C`` to their sum (DP-SGD, Abadi et al. 2016).
:func:`plan_round` chooses ``q``, the steps and ``sigma`` for one round and
states the (epsilon, delta) the site has spent before and after it, composing
over the site's history with the subsampled Gaussian mechanism's accountant
(Mironov et al. 2019 for RDP, Gopi et al. 2021 for PRV). The training loop
that carries a plan out belongs to the site, not to this library.
See ``docs/privacy.md``.

References
----------
Abadi et al., "Deep Learning with Differential Privacy", CCS 2016.
Mironov, Talwar and Zhang, "Renyi Differential Privacy of the Sampled
Gaussian Mechanism", 2019.
Gopi, Lee and Wutschitz, "Numerical Composition of Differential Privacy",
NeurIPS 2021.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fedeye.errors import ConfigError
from fedeye.privacy.accounting import MechanismStep, calibrate_noise_after, calibrate_single_release, epsilon_spent
from fedeye.privacy.policy import Accountant, DPSettings


@dataclass(frozen=True)
class RoundPlan:
    """DP-SGD parameters of one round at one site and the privacy it spends.

    Attributes
    ----------
    sample_rate : float
        Poisson rate ``q`` at which each patient joins a batch.
    steps : int
        Noisy optimizer steps this round.
    noise_multiplier : float
        ``sigma``: noise std divided by the clipping norm.
    delta : float
        Delta the epsilons are stated at.
    epsilon_before, epsilon_after : float
        Epsilon spent by the site before and after this round (whole run).
    accountant : {"rdp", "prv"}
        Accountant behind the epsilons.
    epsilon_budget : float
        The site's budget for the run.
    """

    sample_rate: float
    steps: int
    noise_multiplier: float
    delta: float
    epsilon_before: float
    epsilon_after: float
    accountant: Accountant
    epsilon_budget: float
    one_off: tuple[MechanismStep, ...] = ()

    @property
    def fits(self) -> bool:
        """Whether training this round keeps the site within its budget."""
        return self.epsilon_after <= self.epsilon_budget

    @property
    def mechanism(self) -> MechanismStep:
        """This round as an entry of the site's accounting history."""
        return MechanismStep(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate, steps=self.steps)

    @property
    def mechanisms(self) -> list[MechanismStep]:
        """Everything this round releases, for the site's history: DP-SGD first, then one-off releases."""
        return [self.mechanism, *self.one_off]


def plan_round(
    settings: DPSettings,
    *,
    num_patients: int,
    batch_size: int,
    local_epochs: int,
    history: Sequence[MechanismStep],
    total_rounds: int,
    target_epsilon: float | None = None,
    one_off: Sequence[MechanismStep] = (),
) -> RoundPlan:
    """Plan one round of DP-SGD at a site.

    ``q = min(1, batch_size / num_patients)`` and ``steps = round(local_epochs / q)``
    (an "epoch" is ``1/q`` Poisson batches, each patient seen once on average).
    The noise multiplier is the site's fixed ``sigma`` if one is set, else the
    one at which ``total_rounds * steps`` steps spend exactly the budget,
    calibrated once: from round two on it is read back from ``history[0]``, so
    ``sigma`` stays constant over the run. The site's ``min_noise_multiplier``
    is a floor either way.

    Parameters
    ----------
    settings : DPSettings
        The site's effective DP settings (:func:`~fedeye.privacy.policy.effective_dp`).
    num_patients : int
        Patients in the site's train split (the protected units).
    batch_size : int
        Expected number of patients per batch.
    local_epochs : int
        Expected passes over the patients this round.
    history : sequence of MechanismStep
        Rounds the site already trained with DP in this run (oldest first).
    total_rounds : int
        Rounds planned for the run (used only to calibrate ``sigma``).
    target_epsilon : float, optional
        The epsilon ``sigma`` is calibrated to spend over the planned rounds
        (default: the budget; lower when less of the site's lifetime budget
        is left, see :func:`~fedeye.privacy.ledger.plan_with_ledger`). The
        budget the plan is checked against stays ``settings.epsilon_budget``.
    one_off : sequence of MechanismStep
        Other releases of this round (the private expert prototype of
        :func:`prototype_release`); composed into ``epsilon_after`` and, in
        the first round, into the calibration of ``sigma``. Append
        :attr:`RoundPlan.mechanisms` (DP-SGD first) to the history.

    Returns
    -------
    RoundPlan

    Raises
    ------
    ConfigError
        A count is below 1.
    """
    _check_counts(
        num_patients=num_patients, batch_size=batch_size, local_epochs=local_epochs, total_rounds=total_rounds
    )
    sample_rate = min(1.0, batch_size / num_patients)
    steps = max(1, round(local_epochs / sample_rate))
    sigma = _noise_multiplier(
        settings,
        history,
        sample_rate=sample_rate,
        total_steps=total_rounds * steps,
        target_epsilon=settings.epsilon_budget if target_epsilon is None else target_epsilon,
        one_off=one_off,
    )
    this_round = MechanismStep(noise_multiplier=sigma, sample_rate=sample_rate, steps=steps)
    delta, accountant = settings.delta, settings.accountant
    return RoundPlan(
        sample_rate=sample_rate,
        steps=steps,
        noise_multiplier=sigma,
        delta=delta,
        epsilon_before=epsilon_spent(history, delta=delta, accountant=accountant),
        epsilon_after=epsilon_spent([*history, this_round, *one_off], delta=delta, accountant=accountant),
        accountant=accountant,
        epsilon_budget=settings.epsilon_budget,
        one_off=tuple(one_off),
    )


#: Share of a site's epsilon budget its one private expert prototype may spend (prompt-experts with DP).
PROTOTYPE_SHARE = 0.1


def prototype_release(settings: DPSettings) -> MechanismStep:
    """The Gaussian release of a site's style prototype: one full-batch step spending ``PROTOTYPE_SHARE`` of epsilon.

    With DP, a prompt-experts site releases its router prototype (the mean
    style of its patients) once per run through the Gaussian mechanism
    (:func:`fedeye.privacy.prototype.private_prototype`); this is its entry
    in the site's history. The site's ``min_noise_multiplier`` is a floor.
    """
    sigma = calibrate_single_release(
        target_epsilon=PROTOTYPE_SHARE * settings.epsilon_budget,
        delta=settings.delta,
        accountant=settings.accountant,
    )
    return MechanismStep(noise_multiplier=max(sigma, settings.min_noise_multiplier or 0.0), sample_rate=1.0, steps=1)


def _check_counts(**counts: int) -> None:
    bad = {name: value for name, value in counts.items() if value < 1}
    if bad:
        raise ConfigError(
            f"DP-SGD planning needs every count >= 1, got {bad}; a site needs at least one "
            "patient in its train split, and batch size, local epochs and rounds must be positive"
        )


def _noise_multiplier(
    settings: DPSettings,
    history: Sequence[MechanismStep],
    *,
    sample_rate: float,
    total_steps: int,
    target_epsilon: float,
    one_off: Sequence[MechanismStep] = (),
) -> float:
    """The fixed, reused or freshly calibrated ``sigma``, floored by the site's minimum."""
    if settings.noise_multiplier is not None:
        sigma = settings.noise_multiplier
    elif history:
        sigma = history[0].noise_multiplier
    else:
        sigma = calibrate_noise_after(
            one_off,
            target_epsilon=target_epsilon,
            delta=settings.delta,
            sample_rate=sample_rate,
            total_steps=total_steps,
            accountant=settings.accountant,
        )
    return max(sigma, settings.min_noise_multiplier or 0.0)
