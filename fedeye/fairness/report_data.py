"""What the fairness report is made from: plain, frozen data the caller fills.

The report knows nothing about where a run is recorded. The server side
(``build_report_data`` in the server package) turns a stored run into
a :class:`ReportData`; tests and other tools can build one by hand:

>>> from datetime import datetime, timezone
>>> run = RunInfo(run_id="r-1", name="demo", status="finished", strategy="fedavg", num_sites=1,
...               rounds_done=1, num_rounds=1, started_at=datetime.now(timezone.utc))
>>> data = ReportData(run=run, site_results=(SiteResult("a", "test", 1, "ok", 50, {"auc": 0.8}),))
>>> data.last_evaluated_round() is None
True
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from fedeye.fairness.reliability import RunReliability


@dataclass(frozen=True)
class RunInfo:
    """The run the report is about."""

    run_id: str
    name: str
    status: str  # running, finished, failed, stopped
    strategy: str
    num_sites: int
    rounds_done: int  # highest round with recorded results
    num_rounds: int
    started_at: datetime | None = None
    ended_at: datetime | None = None
    error: str | None = None


@dataclass(frozen=True)
class SiteResult:
    """What one site reported in one phase (``train``, ``evaluate``, ``test``) of one round."""

    site: str
    phase: str
    server_round: int
    status: str  # "ok", or why the site gave no result (failed, missing, ...)
    num_examples: int
    metrics: Mapping[str, float | None]  # None where the site sent NaN or inf


@dataclass(frozen=True)
class PrivacyEntry:
    """One privacy-ledger row: epsilon spent so far by a site (or the federation) after a round."""

    site: str
    scope: str  # "site" or "federation"
    server_round: int
    epsilon: float
    delta: float
    budget: float | None
    status: str


@dataclass(frozen=True)
class ReportData:
    """Everything :func:`fedeye.fairness.report.write_report` needs about a run."""

    run: RunInfo
    site_results: tuple[SiteResult, ...] = ()
    privacy: tuple[PrivacyEntry, ...] = field(default_factory=tuple)
    reliability: RunReliability | None = None  # the final test's reliability bins (None: not recorded)

    def last_evaluated_round(self) -> int | None:
        """The highest round with site evaluation results, if any."""
        return max((m.server_round for m in self.site_results if m.phase == "evaluate"), default=None)
