"""Hypothesis settings for the fuzz tests: few, small examples (the CI machine is shared)."""

from __future__ import annotations

from hypothesis import HealthCheck, settings

settings.register_profile(
    "fedeye", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
settings.load_profile("fedeye")
