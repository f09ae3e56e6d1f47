"""Pure helpers shared by strategies: checking site updates before aggregation."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def update_problem(
    global_arrays: Mapping[str, np.ndarray], site_arrays: Mapping[str, np.ndarray], *, max_update_norm: float | None
) -> str | None:
    """Why a site's returned arrays must not be aggregated, or None if they may.

    Refused: other tensor names or shapes than the global model's, any
    non-finite value, and (when ``max_update_norm`` is set) an update whose L2
    norm relative to the global model exceeds it.
    """
    if set(site_arrays) != set(global_arrays):
        missing = sorted(set(global_arrays) - set(site_arrays))[:3]
        extra = sorted(set(site_arrays) - set(global_arrays))[:3]
        return f"tensor names differ from the global model (missing {missing}, unexpected {extra})"
    squared = 0.0
    for name, value in site_arrays.items():
        reference = global_arrays[name]
        if value.shape != reference.shape:
            return f"tensor {name!r} has shape {tuple(value.shape)}, the global model has {tuple(reference.shape)}"
        if not np.all(np.isfinite(value)):
            return f"tensor {name!r} holds NaN or infinite values"
        if np.issubdtype(value.dtype, np.floating):
            squared += float(np.sum((value.astype(np.float64) - reference.astype(np.float64)) ** 2))
    norm = squared**0.5
    if max_update_norm is not None and norm > max_update_norm:
        return f"update norm {norm:.3g} exceeds strategy.max_update_norm={max_update_norm:g}"
    return None


def common_metric_keys(metric_keys: list[set[str]]) -> set[str]:
    """Metric names every reply has (Flower aggregates only identical key sets)."""
    return set.intersection(*metric_keys) if metric_keys else set()
