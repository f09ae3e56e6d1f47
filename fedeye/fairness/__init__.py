"""Per-site and per-group fairness: metrics a site sends, and the run report.

:mod:`fedeye.fairness.metrics` holds pure functions over arrays (what a site
computes on its evaluation split); :mod:`fedeye.fairness.report` renders a
recorded run as HTML and Markdown.
"""

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
