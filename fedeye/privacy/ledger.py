"""A site's lifetime privacy ledger: pure composition over the DP-SGD phases it ran.

Every DP-SGD phase (one round of one run) a site trains is one
:class:`LedgerEntry`. Composing *all* of them with the site's accountant gives
the epsilon spent on the site's patients over their lifetime, across every
run; composing one run's entries gives that run's epsilon. A site trains the
next round only if both stay within budget (:func:`plan_with_ledger`).
Reading and writing the ledger (SQLite in the site's state folder) is the
site's job, not this library's. See ``docs/privacy.md``.

>>> entry = LedgerEntry(run="r-1", server_round=1, noise_multiplier=1.0, sample_rate=0.1, steps=10,
...                     delta=1e-3, accountant="rdp", data_fingerprint="ab", recorded_at=EPOCH)
>>> runs_of([entry, entry])
['r-1']
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from fedeye.privacy.accounting import MechanismStep, epsilon_spent
from fedeye.privacy.planning import RoundPlan, plan_round
from fedeye.privacy.policy import Accountant, DPSettings

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class LedgerEntry:
    """One DP-SGD phase a site ran: one row of its lifetime ledger.

    Attributes
    ----------
    run : str
        The FedEye run id (``fedeye-run-id``), or ``flower-<id>`` when the
        coordinator did not send one.
    server_round : int
        The round the phase trained for (a round retried after a resume
        appears twice: both releases count).
    noise_multiplier, sample_rate, steps
        The subsampled Gaussian mechanism the phase applied.
    delta : float
        The delta the run stated its epsilon at.
    accountant : {"rdp", "prv"}
        The accountant the site used for that run.
    data_fingerprint : str
        SHA-256 of the site's train split when the phase ran (informational:
        spending is never reset when the data changes, the same patients are
        usually still in it).
    recorded_at : datetime
        When the phase was recorded (UTC).
    """

    run: str
    server_round: int
    noise_multiplier: float
    sample_rate: float
    steps: int
    delta: float
    accountant: Accountant
    data_fingerprint: str
    recorded_at: datetime

    @property
    def mechanism(self) -> MechanismStep:
        """This phase as an entry of an accounting history."""
        return MechanismStep(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate, steps=self.steps)


def runs_of(entries: Sequence[LedgerEntry]) -> list[str]:
    """The runs in the ledger, in order of their first phase."""
    return list(dict.fromkeys(e.run for e in entries))


def run_history(entries: Sequence[LedgerEntry], run: str) -> list[MechanismStep]:
    """One run's phases, oldest first: the history :func:`~fedeye.privacy.planning.plan_round` composes."""
    return [e.mechanism for e in entries if e.run == run]


def statement_delta(entries: Sequence[LedgerEntry], *also: float) -> float:
    """The delta a composition over ``entries`` is stated at: the smallest one recorded (or in ``also``).

    The smallest delta gives the largest epsilon, and adding a phase never
    lowers the lifetime epsilon this way.
    """
    deltas = [e.delta for e in entries] + list(also)
    if not deltas:
        raise ValueError("statement_delta needs at least one ledger entry or delta")
    return min(deltas)


def epsilon_per_run(entries: Sequence[LedgerEntry], *, accountant: Accountant) -> dict[str, float]:
    """Each run's epsilon: its own phases composed, at its own (smallest) delta."""
    per_run: dict[str, float] = {}
    for run in runs_of(entries):
        own = [e for e in entries if e.run == run]
        per_run[run] = epsilon_spent([e.mechanism for e in own], delta=statement_delta(own), accountant=accountant)
    return per_run


def lifetime_epsilon(
    entries: Sequence[LedgerEntry],
    *,
    accountant: Accountant,
    delta: float | None = None,
    extra: Sequence[MechanismStep] = (),
) -> float:
    """Epsilon of every phase in ``entries`` (then ``extra``) composed, at ``delta`` (default: the smallest recorded).

    0.0 for an empty ledger. This is the site's lifetime spending: the same
    value as :func:`~fedeye.privacy.accounting.epsilon_spent` over the
    concatenated history.
    """
    history = [e.mechanism for e in entries] + list(extra)
    if not history:
        return 0.0
    at = statement_delta(entries) if delta is None else delta
    return epsilon_spent(history, delta=at, accountant=accountant)


@dataclass(frozen=True)
class LedgerDecision:
    """What the ledger says about the next round: its plan and the lifetime spending around it."""

    run: str
    plan: RoundPlan
    history: tuple[MechanismStep, ...]  # this run's phases before this round
    lifetime_before: float
    lifetime_after: float
    lifetime_budget: float | None  # None: the site sets no lifetime budget
    lifetime_delta: float
    num_runs: int  # runs in the ledger, this one included

    @property
    def fits_lifetime(self) -> bool:
        """Whether the round keeps the site within its lifetime budget."""
        return self.lifetime_budget is None or self.lifetime_after <= self.lifetime_budget

    @property
    def fits(self) -> bool:
        """Whether the round keeps the site within both the run's and the lifetime budget."""
        return self.plan.fits and self.fits_lifetime

    @property
    def refusal(self) -> str | None:
        """Why the site declines the round (names the budget it would exceed), or None when it fits."""
        if not self.plan.fits:
            return (
                f"next round would spend epsilon {self.plan.epsilon_after:.3f} > budget "
                f"{self.plan.epsilon_budget:g} for this run"
            )
        if not self.fits_lifetime:
            return (
                f"next round would bring the lifetime epsilon of this site's data to {self.lifetime_after:.3f} "
                f"> lifetime budget {self.lifetime_budget:g} (lifetime_epsilon, over {self.num_runs} runs)"
            )
        return None


def plan_with_ledger(
    settings: DPSettings,
    entries: Sequence[LedgerEntry],
    *,
    run: str,
    lifetime_budget: float | None,
    num_patients: int,
    batch_size: int,
    local_epochs: int,
    total_rounds: int,
    one_off: Sequence[MechanismStep] = (),
) -> LedgerDecision:
    """Plan the next round of ``run`` from the ledger and check it against both budgets.

    The run's history is its own entries (a resumed run goes on with them and
    reuses their ``sigma``). A run with no entry yet calibrates ``sigma``
    (unless it is fixed) to spend the smaller of its budget and what is left
    of the lifetime budget, so a run started late in the site's life gets
    more noise rather than being cut off early. The lifetime spending
    composes every entry and this round with ``settings.accountant``, at the
    smallest delta recorded or used now.

    Parameters
    ----------
    settings : DPSettings
        The site's effective settings for this run.
    entries : sequence of LedgerEntry
        The whole ledger of the site, oldest first.
    run : str
        The run asking for the round.
    lifetime_budget : float or None
        The site's ``lifetime_epsilon``.
    num_patients, batch_size, local_epochs, total_rounds, one_off
        As in :func:`~fedeye.privacy.planning.plan_round` (``one_off``: other
        releases of this round, such as a private expert prototype; they are
        booked and composed with the round).

    Returns
    -------
    LedgerDecision
    """
    history = run_history(entries, run)
    delta = statement_delta(entries, settings.delta)
    before = lifetime_epsilon(entries, accountant=settings.accountant, delta=delta)
    target = None
    if not history and lifetime_budget is not None and 0 < lifetime_budget - before < settings.epsilon_budget:
        target = lifetime_budget - before
    plan = plan_round(
        settings,
        num_patients=num_patients,
        batch_size=batch_size,
        local_epochs=local_epochs,
        history=history,
        total_rounds=total_rounds,
        target_epsilon=target,
        one_off=one_off,
    )
    after = lifetime_epsilon(entries, accountant=settings.accountant, delta=delta, extra=list(plan.mechanisms))
    return LedgerDecision(
        run=run,
        plan=plan,
        history=tuple(history),
        lifetime_before=before,
        lifetime_after=after,
        lifetime_budget=lifetime_budget,
        lifetime_delta=delta,
        num_runs=len(set(runs_of(entries)) | {run}),
    )
