"""Delta defaults to 1/(10 n): below one over the number of protected patients."""

from __future__ import annotations

import pytest

from fedeye.privacy.policy import PrivacyConfig, PrivacyPolicy, default_delta, effective_dp


@pytest.mark.parametrize("num_patients", [1, 7, 130, 10_000])
def test_default_delta_is_below_one_over_n(num_patients: int) -> None:
    assert default_delta(num_patients) < 1.0 / num_patients


def test_effective_dp_uses_the_default_delta_when_nobody_sets_one() -> None:
    settings = effective_dp(PrivacyConfig(enabled=True), PrivacyPolicy(), num_patients=250)

    assert settings is not None
    assert settings.delta == default_delta(250) < 1 / 250
