"""Patient-level DP-SGD planning: sample rate, steps and noise for a round at a site."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from fedeye.errors import ConfigError
from fedeye.privacy.accounting import MechanismStep
from fedeye.privacy.planning import RoundPlan, plan_round
from fedeye.privacy.policy import DPSettings

# ------------------------------------------------------------------ plan_round


def _run_plans(settings: DPSettings, rounds: int, total_rounds: int = 3) -> list[RoundPlan]:
    history: list[MechanismStep] = []
    plans = []
    for _ in range(rounds):
        plan = plan_round(
            settings, num_patients=100, batch_size=10, local_epochs=2, history=history, total_rounds=total_rounds
        )
        plans.append(plan)
        history.append(plan.mechanism)
    return plans


@pytest.mark.filterwarnings("ignore")
def test_plan_round_keeps_sigma_and_spends_the_budget_over_the_planned_rounds(
    make_settings: Callable[..., DPSettings],
) -> None:
    plans = _run_plans(make_settings(epsilon_budget=4.0), rounds=4)

    assert {p.noise_multiplier for p in plans} == {plans[0].noise_multiplier}
    assert (plans[0].sample_rate, plans[0].steps) == (0.1, 20)
    afters = [p.epsilon_after for p in plans]
    assert afters == sorted(afters) and len(set(afters)) == 4
    assert [p.epsilon_before for p in plans[1:]] == pytest.approx(afters[:-1])
    assert plans[2].epsilon_after == pytest.approx(4.0, abs=0.01)
    assert [p.fits for p in plans] == [True, True, True, False]


def test_plan_round_respects_the_site_minimum_noise(make_settings: Callable[..., DPSettings]) -> None:
    fixed = make_settings(noise_multiplier=0.5, min_noise_multiplier=1.2)

    plan = plan_round(fixed, num_patients=50, batch_size=100, local_epochs=1, history=[], total_rounds=2)

    assert plan.noise_multiplier == 1.2
    assert (plan.sample_rate, plan.steps) == (1.0, 1)


@pytest.mark.filterwarnings("ignore")
def test_calibrated_sigma_below_the_site_minimum_is_raised(make_settings: Callable[..., DPSettings]) -> None:
    plan = plan_round(
        make_settings(epsilon_budget=50.0, min_noise_multiplier=2.0),
        num_patients=100,
        batch_size=10,
        local_epochs=1,
        history=[],
        total_rounds=1,
    )

    assert plan.noise_multiplier == 2.0
    assert plan.epsilon_after < 50.0


def test_plan_round_reuses_the_first_rounds_sigma(make_settings: Callable[..., DPSettings]) -> None:
    history = [MechanismStep(noise_multiplier=1.7, sample_rate=0.1, steps=10)]

    plan = plan_round(make_settings(), num_patients=80, batch_size=10, local_epochs=1, history=history, total_rounds=5)

    assert plan.noise_multiplier == 1.7
    assert plan.epsilon_before > 0.0


def test_plan_round_rejects_a_site_without_patients(make_settings: Callable[..., DPSettings]) -> None:
    with pytest.raises(ConfigError, match="num_patients"):
        plan_round(
            make_settings(noise_multiplier=1.0),
            num_patients=0,
            batch_size=8,
            local_epochs=1,
            history=[],
            total_rounds=1,
        )


def test_private_prototype_is_near_the_mean_and_its_spread_covers_the_noise() -> None:
    import torch

    from fedeye.privacy.prototype import private_prototype

    styles = torch.nn.functional.layer_norm(torch.randn(400, 16) + torch.linspace(-2, 2, 16), (16,))
    key, spread = private_prototype(styles, noise_multiplier=2.0, generator=torch.Generator().manual_seed(0))
    noise_energy = 16 * (2.0 * 4.0 / 400) ** 2
    assert float((key - styles.mean(dim=0)).norm()) < 4 * noise_energy**0.5
    true_spread = float((styles - styles.mean(dim=0)).pow(2).sum(dim=1).mean())
    assert spread >= noise_energy and abs(spread - (true_spread + noise_energy)) < 0.25 * true_spread


def test_prototype_release_spends_its_share_and_plan_round_composes_it(
    make_settings: Callable[..., DPSettings],
) -> None:
    from fedeye.privacy.accounting import epsilon_spent
    from fedeye.privacy.planning import PROTOTYPE_SHARE, prototype_release

    settings = make_settings(epsilon_budget=4.0)
    release = prototype_release(settings)
    alone = epsilon_spent([release], delta=settings.delta, accountant=settings.accountant)
    assert alone == pytest.approx(PROTOTYPE_SHARE * 4.0, rel=0.05)
    plan = plan_round(
        settings, num_patients=100, batch_size=10, local_epochs=1, history=[], total_rounds=1, one_off=[release]
    )
    assert plan.mechanisms == [plan.mechanism, release] and plan.epsilon_after == pytest.approx(4.0, abs=0.03)
