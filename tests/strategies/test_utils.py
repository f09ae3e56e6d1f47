"""Update checks before aggregation."""

from __future__ import annotations

import numpy as np

from fedeye.strategies._utils import common_metric_keys, update_problem

GLOBAL = {"w": np.zeros((2, 2), np.float32), "b": np.zeros(2, np.float32)}


def test_good_update_passes() -> None:
    assert (
        update_problem(GLOBAL, {"w": np.ones((2, 2), np.float32), "b": np.ones(2, np.float32)}, max_update_norm=None)
        is None
    )


def test_non_finite_update_is_refused_naming_the_tensor() -> None:
    bad = {"w": np.array([[0, np.nan], [0, 0]], np.float32), "b": np.zeros(2, np.float32)}
    assert "'w' holds NaN" in (update_problem(GLOBAL, bad, max_update_norm=None) or "")


def test_oversized_update_is_refused() -> None:
    big = {"w": np.full((2, 2), 10.0, np.float32), "b": np.zeros(2, np.float32)}
    assert "exceeds strategy.max_update_norm=5" in (update_problem(GLOBAL, big, max_update_norm=5.0) or "")
    assert update_problem(GLOBAL, big, max_update_norm=25.0) is None


def test_wrong_names_or_shapes_are_refused() -> None:
    assert "names differ" in (update_problem(GLOBAL, {"w": GLOBAL["w"]}, max_update_norm=None) or "")
    reshaped = {"w": np.zeros((4,), np.float32), "b": GLOBAL["b"]}
    assert "shape (4,)" in (update_problem(GLOBAL, reshaped, max_update_norm=None) or "")


def test_common_metric_keys() -> None:
    assert common_metric_keys([{"a", "b", "dp-epsilon"}, {"a", "b"}]) == {"a", "b"}
    assert common_metric_keys([]) == set()
