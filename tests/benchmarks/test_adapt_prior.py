"""benchmarks/adapt_prior.py: the held-out site subsampled to another prevalence, one class kept whole."""

from __future__ import annotations

from types import ModuleType

import numpy as np
import pytest

from tests.benchmarks.conftest import load_script


@pytest.fixture(scope="module")
def adapt_prior() -> ModuleType:
    return load_script("adapt_prior")


@pytest.mark.parametrize("prevalence", [0.15, 0.4, 0.7])
def test_subsample_reaches_the_prevalence_and_keeps_the_other_class_whole(
    adapt_prior: ModuleType, prevalence: float
) -> None:
    labels = np.array([1] * 60 + [0] * 100)  # prevalence 0.375
    keep = adapt_prior.subsample(labels, prevalence, np.random.default_rng(0))
    assert labels[keep].mean() == pytest.approx(prevalence, abs=0.01)
    kept_whole = 0 if prevalence < 0.375 else 1
    assert (labels[keep] == kept_whole).sum() == (labels == kept_whole).sum()
    assert len(np.unique(keep)) == len(keep)


def test_natural_keeps_every_image(adapt_prior: ModuleType) -> None:
    labels = np.array([1, 0, 0, 1, 0])
    assert adapt_prior.subsample(labels, None, np.random.default_rng(0)).tolist() == [0, 1, 2, 3, 4]
