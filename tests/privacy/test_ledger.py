"""The lifetime ledger's composition: per run, over the lifetime, and the next round's decision."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from fedeye.privacy.accounting import MechanismStep, epsilon_spent
from fedeye.privacy.ledger import (
    EPOCH,
    LedgerEntry,
    epsilon_per_run,
    lifetime_epsilon,
    plan_with_ledger,
    run_history,
    runs_of,
    statement_delta,
)
from fedeye.privacy.policy import DPSettings

PLAN = {"num_patients": 100, "batch_size": 10, "local_epochs": 1, "total_rounds": 3}


def _entry(
    run: str, rnd: int, *, sigma: float = 1.0, q: float = 0.1, steps: int = 10, delta: float = 1e-3
) -> LedgerEntry:
    return LedgerEntry(
        run=run,
        server_round=rnd,
        noise_multiplier=sigma,
        sample_rate=q,
        steps=steps,
        delta=delta,
        accountant="rdp",
        data_fingerprint="f",
        recorded_at=EPOCH,
    )


def _ledger() -> list[LedgerEntry]:
    return [_entry("a", 1), _entry("a", 2), _entry("b", 1, sigma=1.5, q=0.2, steps=5, delta=5e-4), _entry("a", 3)]


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_lifetime_equals_accounting_over_the_concatenated_history(accountant: str) -> None:
    entries = _ledger()
    history = [MechanismStep(e.noise_multiplier, e.sample_rate, e.steps) for e in entries]
    expected = epsilon_spent(history, delta=5e-4, accountant=accountant)  # type: ignore[arg-type]
    assert lifetime_epsilon(entries, accountant=accountant) == pytest.approx(expected, rel=1e-9)  # type: ignore[arg-type]


def test_each_run_composes_its_own_phases_at_its_own_delta() -> None:
    entries = _ledger()
    per_run = epsilon_per_run(entries, accountant="rdp")

    assert list(per_run) == runs_of(entries) == ["a", "b"]
    assert per_run["a"] == pytest.approx(epsilon_spent(run_history(entries, "a"), delta=1e-3, accountant="rdp"))
    assert per_run["b"] == pytest.approx(epsilon_spent(run_history(entries, "b"), delta=5e-4, accountant="rdp"))
    assert lifetime_epsilon(entries, accountant="rdp") > max(per_run.values())


def test_statement_delta_is_the_smallest_and_empty_ledgers_spend_nothing() -> None:
    assert statement_delta(_ledger()) == 5e-4
    assert statement_delta([], 1e-2) == 1e-2
    assert lifetime_epsilon([], accountant="rdp") == 0.0


def test_a_round_over_the_lifetime_budget_is_refused_naming_it(make_settings: Callable[..., DPSettings]) -> None:
    settings = make_settings(epsilon_budget=100.0, noise_multiplier=1.0)
    entries = _ledger()
    before = lifetime_epsilon(entries, accountant="rdp", delta=5e-4)
    decision = plan_with_ledger(settings, entries, run="c", lifetime_budget=before + 1e-3, **PLAN)

    assert decision.plan.fits and not decision.fits_lifetime and not decision.fits
    assert decision.lifetime_before == pytest.approx(before)
    assert "lifetime budget" in (decision.refusal or "") and "3 runs" in (decision.refusal or "")


def test_the_per_run_budget_composes_only_this_runs_phases(make_settings: Callable[..., DPSettings]) -> None:
    settings = make_settings(epsilon_budget=100.0, noise_multiplier=1.0)
    entries = _ledger()
    decision = plan_with_ledger(settings, entries, run="b", lifetime_budget=None, **PLAN)

    assert decision.history == tuple(run_history(entries, "b"))
    assert decision.plan.epsilon_before == pytest.approx(
        epsilon_spent(run_history(entries, "b"), delta=1e-3, accountant="rdp")
    )
    assert decision.fits and decision.refusal is None


def test_a_resumed_run_reuses_the_sigma_of_its_first_phase(make_settings: Callable[..., DPSettings]) -> None:
    settings = make_settings(epsilon_budget=2.0)  # sigma calibrated, not fixed
    first = plan_with_ledger(settings, [], run="r", lifetime_budget=None, **PLAN)
    entries = [
        _entry("other", 1, sigma=3.0),
        _entry("r", 1, sigma=first.plan.noise_multiplier, q=first.plan.sample_rate, steps=first.plan.steps),
    ]
    resumed = plan_with_ledger(settings, entries, run="r", lifetime_budget=None, **PLAN)
    assert resumed.plan.noise_multiplier == first.plan.noise_multiplier


def test_a_new_run_late_in_life_is_calibrated_to_what_is_left(make_settings: Callable[..., DPSettings]) -> None:
    settings = make_settings(epsilon_budget=4.0)
    entries = _ledger()
    before = lifetime_epsilon(entries, accountant="rdp", delta=1e-3)
    fresh = plan_with_ledger(settings, [], run="n", lifetime_budget=None, **PLAN)
    late = plan_with_ledger(settings, entries, run="n", lifetime_budget=before + 1.0, **PLAN)

    assert late.plan.noise_multiplier > fresh.plan.noise_multiplier  # more noise: 1.0 left, not 4.0
    assert late.plan.epsilon_budget == 4.0  # the run's own budget is unchanged
    whole_run = [
        *entries,
        *[
            _entry("n", k, sigma=late.plan.noise_multiplier, q=late.plan.sample_rate, steps=late.plan.steps)
            for k in range(3)
        ],
    ]
    assert lifetime_epsilon(whole_run, accountant="rdp") <= before + 1.0 + 1e-6  # the planned run fits the lifetime
