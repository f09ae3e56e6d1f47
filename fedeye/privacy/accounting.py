"""Privacy accounting: pure functions over a mechanism's history.

A site's history is the list of DP-SGD phases it ran (noise multiplier,
Poisson sample rate, number of steps); epsilon follows from it with Opacus'
RDP or PRV accountant. Nothing here touches data or models.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from fedeye.privacy.policy import Accountant


@dataclass(frozen=True)
class MechanismStep:
    """``steps`` applications of the Poisson-subsampled Gaussian mechanism."""

    noise_multiplier: float
    sample_rate: float
    steps: int


def epsilon_spent(history: Sequence[MechanismStep], *, delta: float, accountant: Accountant) -> float:
    """Epsilon of the composed ``history`` at ``delta`` (0.0 for an empty history)."""
    from opacus.accountants import create_accountant  # imported on use: slow

    runs = _merged(history)
    if not runs:
        return 0.0
    acct = create_accountant(mechanism=accountant)
    acct.history = runs
    return float(acct.get_epsilon(delta=delta))


def _merged(history: Sequence[MechanismStep]) -> list[tuple[float, float, int]]:
    """``(sigma, q, steps)`` with the steps of equal ``(sigma, q)`` summed: composing a mechanism
    ``a`` then ``b`` times is composing it ``a + b`` times, and a long ledger holds few distinct ones.

    >>> _merged([MechanismStep(1.0, 0.1, 5), MechanismStep(2.0, 0.1, 1), MechanismStep(1.0, 0.1, 5)])
    [(1.0, 0.1, 10), (2.0, 0.1, 1)]
    """
    steps: dict[tuple[float, float], int] = {}
    for h in history:
        if h.steps > 0:
            key = (h.noise_multiplier, h.sample_rate)
            steps[key] = steps.get(key, 0) + h.steps
    return [(sigma, q, n) for (sigma, q), n in steps.items()]


@lru_cache(maxsize=256)  # pure and slow (fractional RDP orders): a site asks the same question every run
def calibrate_noise(
    *, target_epsilon: float, delta: float, sample_rate: float, total_steps: int, accountant: Accountant
) -> float:
    """The noise multiplier at which ``total_steps`` steps spend ``target_epsilon``."""
    from opacus.accountants.utils import get_noise_multiplier

    return float(
        get_noise_multiplier(
            target_epsilon=target_epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            steps=total_steps,
            accountant=accountant,
            epsilon_tolerance=0.005,
        )
    )


def calibrate_noise_after(
    fixed: Sequence[MechanismStep],
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    total_steps: int,
    accountant: Accountant,
) -> float:
    """The noise multiplier at which ``fixed`` then ``total_steps`` steps spend ``target_epsilon``.

    ``fixed`` are mechanisms whose noise is already chosen (a one-off release
    such as a private prototype). Without them this is :func:`calibrate_noise`;
    with them, a bisection on ``sigma`` over :func:`epsilon_spent` (to 0.5%).

    Raises
    ------
    ValueError
        ``fixed`` alone already spends ``target_epsilon``.
    """
    return _calibrate_after(
        tuple(f for f in fixed if f.steps > 0),
        target_epsilon=target_epsilon,
        delta=delta,
        sample_rate=sample_rate,
        total_steps=total_steps,
        accountant=accountant,
    )


@lru_cache(maxsize=256)
def _calibrate_after(
    fixed: tuple[MechanismStep, ...],
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    total_steps: int,
    accountant: Accountant,
) -> float:
    if not fixed:
        return calibrate_noise(
            target_epsilon=target_epsilon,
            delta=delta,
            sample_rate=sample_rate,
            total_steps=total_steps,
            accountant=accountant,
        )

    def spent(sigma: float) -> float:
        steps = [*fixed, MechanismStep(sigma, sample_rate, total_steps)]
        return epsilon_spent(steps, delta=delta, accountant=accountant)

    if epsilon_spent(fixed, delta=delta, accountant=accountant) >= target_epsilon:
        raise ValueError(f"the one-off releases alone spend more than epsilon {target_epsilon:g}")
    low = calibrate_noise(
        target_epsilon=target_epsilon,
        delta=delta,
        sample_rate=sample_rate,
        total_steps=total_steps,
        accountant=accountant,
    )  # without the one-offs: a lower bound
    high = low * 1.25
    while spent(high) > target_epsilon:
        low, high = high, high * 1.25
    while high - low > 0.005 * high:
        middle = (low + high) / 2.0
        low, high = (middle, high) if spent(middle) > target_epsilon else (low, middle)
    return high


def calibrate_single_release(*, target_epsilon: float, delta: float, accountant: Accountant) -> float:
    """The noise multiplier of one full-batch Gaussian release spending ``target_epsilon``."""
    return calibrate_noise(
        target_epsilon=target_epsilon, delta=delta, sample_rate=1.0, total_steps=1, accountant=accountant
    )
