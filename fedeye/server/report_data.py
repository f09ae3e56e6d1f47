"""Turn a run recorded in the store into the plain data of its fairness report.

:mod:`fedeye.fairness.report` renders a :class:`~fedeye.fairness.report_data.ReportData`
and never reads the store; this module is the bridge.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fedeye.fairness.reliability import RunReliability
from fedeye.fairness.report_data import PrivacyEntry, ReportData, RunInfo, SiteResult
from fedeye.server.store import (
    PrivacyRecord,
    RunDetail,
    RunStore,
    RunSummary,
    SiteMetricRecord,
)


def load_report_data(store: RunStore, run_id: str) -> ReportData:
    """The report data of run ``run_id`` (or an unambiguous prefix); raises the store's errors."""
    return build_report_data(store.get_run(run_id))


def build_report_data(detail: RunDetail) -> ReportData:
    """The report data of a run, as :meth:`RunStore.get_run` returns it."""
    return ReportData(
        run=_run_info(detail.run),
        site_results=tuple(_site_result(m) for m in detail.site_metrics),
        privacy=tuple(_privacy_entry(r) for r in detail.privacy),
        reliability=read_reliability(detail.reliability),
    )


def read_reliability(stored: Mapping[str, Any] | None) -> RunReliability | None:
    """The stored reliability bins (None: a run recorded without them, or bins this FedEye cannot read).

    The report, the dashboard and ``fedeye runs show`` read them through this one function.
    """
    if not stored:
        return None
    try:
        return RunReliability.from_json(stored)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def _run_info(run: RunSummary) -> RunInfo:
    return RunInfo(
        run_id=run.run_id,
        name=run.name,
        status=run.status,
        strategy=run.strategy,
        num_sites=run.num_sites,
        rounds_done=run.rounds_done,
        num_rounds=run.num_rounds,
        started_at=run.started_at,
        ended_at=run.ended_at,
        error=run.error,
    )


def _site_result(record: SiteMetricRecord) -> SiteResult:
    return SiteResult(
        site=record.site,
        phase=record.phase,
        server_round=record.server_round,
        status=record.status,
        num_examples=record.num_examples,
        metrics=dict(record.metrics),
    )


def _privacy_entry(record: PrivacyRecord) -> PrivacyEntry:
    return PrivacyEntry(
        site=record.site,
        scope=record.scope,
        server_round=record.server_round,
        epsilon=record.epsilon,
        delta=record.delta,
        budget=record.budget,
        status=record.status,
    )
