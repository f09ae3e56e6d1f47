"""Per-site and per-group fairness: metrics a site sends, and the run report.

:mod:`fedeye.fairness.metrics` holds pure functions over arrays (what a site
computes on its evaluation split); :mod:`fedeye.fairness.report` renders a
recorded run as HTML and Markdown. The names below load on first use:
the pure score functions (``operating_point``, ``reliability``) must not pull
in scikit-learn and fairlearn for every ``fedeye`` command.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedeye._lazy import lazy_exports

if TYPE_CHECKING:
    from fedeye.fairness.metrics import (
        ATTRIBUTES,
        age_band,
        cross_site_summary,
        equity_scaled_auc,
        expected_calibration_error,
        site_fairness_metrics,
    )

__all__ = [
    "ATTRIBUTES",
    "age_band",
    "cross_site_summary",
    "equity_scaled_auc",
    "expected_calibration_error",
    "site_fairness_metrics",
]

__getattr__ = lazy_exports(__name__, dict.fromkeys(__all__, "metrics"))
