"""Factories for the privacy tests: DP settings."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from fedeye.privacy.policy import Accountant, DPSettings


@pytest.fixture
def make_settings() -> Callable[..., DPSettings]:
    """DPSettings with test defaults; override any field by keyword."""

    def make(
        *,
        epsilon_budget: float = 8.0,
        delta: float = 1e-3,
        max_grad_norm: float = 1.0,
        noise_multiplier: float | None = None,
        min_noise_multiplier: float | None = None,
        accountant: Accountant = "rdp",
    ) -> DPSettings:
        return DPSettings(
            epsilon_budget=epsilon_budget,
            delta=delta,
            max_grad_norm=max_grad_norm,
            noise_multiplier=noise_multiplier,
            min_noise_multiplier=min_noise_multiplier,
            accountant=accountant,
        )

    return make
