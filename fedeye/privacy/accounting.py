"""Privacy accounting: pure functions over a mechanism's history.

A site's history is the list of DP-SGD phases it ran (noise multiplier,
Poisson sample rate, number of steps); epsilon follows from it with Opacus'
RDP or PRV accountant. Nothing here touches data or models.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


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


def calibrate_noise(
    *, target_epsilon: float, delta: float, sample_rate: float, total_steps: int, accountant: Accountant
) -> float:
    """The noise multiplier at which ``total_steps`` steps spend ``target_epsilon``."""
    from opacus.accountants.utils import get_noise_multiplier

    return float(
        get_noise_multiplier(
            target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate,
            steps=total_steps, accountant=accountant, epsilon_tolerance=0.005,
        )
    )
