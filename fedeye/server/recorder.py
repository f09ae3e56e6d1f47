"""The run recorder: turns each round's site replies into store rows and progress.

It is the :class:`~fedeye.strategies.base.RoundObserver` attached to the
strategy, so every FedEye strategy is recorded the same way. Every phase it
sees also renews the run's heartbeat in the store (``runs list`` shows a run
whose heartbeat stopped as ``stale``).

A site that disappears mid-round is recorded ``missing`` (``on_missing``):
the strategy reports the sampled nodes that never replied, and the recorder
names them from their earlier replies in this run. When the SuperLink itself
answers for an unreachable node (an error reply from node
``SUPERLINK_NODE_ID``), that reply says nothing about which site it was, so
it is not stored as a site of its own: the node is already reported missing.

The final test's reliability-diagram bins (:mod:`fedeye.server.reliability`)
are kept with the run, per site and summed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from logging import WARNING
from typing import Protocol

from flwr.app import Message
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.common.logger import log

from fedeye.fairness.metrics import cross_site_summary
from fedeye.fairness.reliability import ReliabilityDiagram, RunReliability
from fedeye.protocol import (
    DP_ACCOUNTANT,
    DP_BUDGET,
    DP_DELTA,
    DP_EPSILON,
    DP_NOISE_MULTIPLIER,
    DP_SAMPLE_RATE,
    DP_STEPS,
    METRICS,
    NUM_EXAMPLES,
    SITE_NAME,
    site_field,
)
from fedeye.server.reliability import reliability_of
from fedeye.server.store import PrivacyRecord, RunStore
from fedeye.strategies.base import LEFT_BUDGET, Verdict, judge_status


@dataclass(frozen=True)
class SiteReport:
    """One site's reply in one phase of a round, as the coordinator saw it."""

    server_round: int
    phase: str
    site: str
    node_id: int
    num_examples: int
    metrics: dict[str, float]
    status: str = "ok"
    reason: str = ""


class ProgressSink(Protocol):
    """Receives progress events (the CLI's rich display implements it)."""

    def round_started(self, server_round: int, phase: str, num_sites: int) -> None: ...

    def site_reported(self, report: SiteReport) -> None: ...


def site_report(server_round: int, phase: str, msg: Message, verdict: Verdict | None = None) -> SiteReport:
    """Read a reply and the coordinator's verdict on it into a :class:`SiteReport`.

    Without a verdict the reply is judged by what it declares
    (:func:`~fedeye.strategies.base.judge_status`). A failed site's report
    holds its category and incident id, never text the site wrote.
    """
    node_id = int(msg.metadata.src_node_id)
    verdict = verdict or judge_status(msg)
    if msg.has_error():
        return SiteReport(server_round, phase, f"node-{node_id}", node_id, 0, {}, "failed", verdict.reason)
    content = msg.content
    site = site_field(content, SITE_NAME, f"node-{node_id}")
    metrics = {k: float(v) for k, v in content[METRICS].items() if isinstance(v, (int, float))}
    num_examples = int(metrics.pop(NUM_EXAMPLES, 0))
    return SiteReport(server_round, phase, site, node_id, num_examples, metrics, verdict.status, verdict.reason)


def privacy_entry(report: SiteReport, accountant: str) -> PrivacyRecord | None:
    """The ledger row a site's DP metrics describe, if it trained (or declined) under DP."""
    m = report.metrics
    if DP_EPSILON not in m:
        return None
    return PrivacyRecord(
        server_round=report.server_round,
        scope="site",
        site=report.site,
        epsilon=m[DP_EPSILON],
        delta=m[DP_DELTA],
        budget=m.get(DP_BUDGET),
        noise_multiplier=m[DP_NOISE_MULTIPLIER],
        sample_rate=m[DP_SAMPLE_RATE],
        steps=int(m[DP_STEPS]),
        accountant=accountant,
        status=report.status if report.status == LEFT_BUDGET else "ok",
    )


def weighted_mean(reports: list[SiteReport]) -> dict[str, float]:
    """Example-weighted mean of every metric over ok reports, ignoring NaN values."""
    ok = [r for r in reports if r.status == "ok"]
    names = sorted({name for r in ok for name in r.metrics})
    means: dict[str, float] = {}
    for name in names:
        pairs = [(r.metrics[name], r.num_examples) for r in ok if name in r.metrics and math.isfinite(r.metrics[name])]
        total = sum(w for _, w in pairs)
        if total > 0:
            means[name] = sum(v * w for v, w in pairs) / total
    return means


def _cross_site(reports: list[SiteReport]) -> dict[str, float]:
    """The cross-site view of a round (sites as groups): ``site.mean-auc``, ``site.worst-auc``, ..."""
    aucs = {r.site: r.metrics["auc"] for r in reports if r.status == "ok" and "auc" in r.metrics}
    return {f"site.{k}": v for k, v in cross_site_summary(aucs).items() if k != "sites"}


UNAVAILABLE = (ErrorCode.NODE_UNAVAILABLE, ErrorCode.REPLY_MESSAGE_UNAVAILABLE, ErrorCode.MESSAGE_UNAVAILABLE)


def from_superlink(msg: Message) -> bool:
    """True for an error reply the SuperLink made for a node (or reply) it could not reach."""
    return msg.has_error() and msg.error.code in UNAVAILABLE and int(msg.metadata.src_node_id) == SUPERLINK_NODE_ID


class RunRecorder:
    """Stores every round's per-site and aggregated metrics; forwards progress."""

    def __init__(self, store: RunStore, run_id: str, *, progress: ProgressSink | None = None) -> None:
        self.store = store
        self.run_id = run_id
        self.progress = progress
        self._site_names: dict[int, str] | None = None  # node id -> site name, from replies
        self.evaluated: tuple[int, list[Message]] = (0, [])  # the latest evaluate round and its replies

    def site_name(self, node_id: int) -> str:
        """The name a node's site gave in this run (earlier rounds included), else ``node <id>``."""
        return self._names().get(int(node_id), f"node {node_id}")

    def _names(self) -> dict[int, str]:
        if self._site_names is None:  # a resumed run starts from the names recorded before
            named = [m for m in self.store.site_metrics(self.run_id) if m.status not in ("missing", "failed")]
            self._site_names = {m.node_id: m.site for m in named}
        return self._site_names

    def on_missing(self, server_round: int, phase: str, node_ids: list[int]) -> None:
        """Record sampled nodes that never replied in ``phase`` of ``server_round``."""
        for node_id in node_ids:
            site = self.site_name(node_id)
            reason = f"no reply within the round timeout; the round went on without {site}"
            self.store.record_site_metrics(
                self.run_id,
                server_round=server_round,
                phase=phase,  # type: ignore[arg-type]
                site=site,
                node_id=int(node_id),
                num_examples=0,
                metrics={},
                status="missing",
                reason=reason,
            )
            log(WARNING, "round %s: %s missing (%s)", server_round, site, reason)

    def on_round_start(self, server_round: int, phase: str, num_sites: int) -> None:
        self.store.heartbeat(self.run_id)
        if self.progress:
            self.progress.round_started(server_round, phase, num_sites)

    def on_replies(
        self, server_round: int, phase: str, replies: list[Message], verdicts: list[Verdict] | None = None
    ) -> None:
        self.store.heartbeat(self.run_id)
        if phase == "evaluate":  # they carry the moments of the sites' scores (fedeye.server.operating_point)
            self.evaluated = (server_round, list(replies))
        verdicts = verdicts or [judge_status(m) for m in replies]
        judged = [(m, v) for m, v in zip(replies, verdicts, strict=True) if not from_superlink(m)]
        for msg in replies:
            if from_superlink(msg):
                log(
                    WARNING,
                    "round %s (%s): the SuperLink could not reach a node: %s",
                    server_round,
                    phase,
                    msg.error.reason,
                )
        replies = [m for m, _ in judged]
        reports = [self._named(site_report(server_round, phase, m, v)) for m, v in judged]
        self._learn_names(reports)
        for msg, report in zip(replies, reports):
            self._store_site(report)
            self._store_privacy(msg, report)
            if self.progress:
                self.progress.site_reported(report)
        self._store_round(server_round, phase, reports)
        if phase == "test":
            self._store_reliability(replies, reports)

    def _named(self, report: SiteReport) -> SiteReport:
        """A report whose reply did not name its site (a failure), named from earlier replies of its node."""
        if report.site != f"node-{report.node_id}":
            return report
        return dataclasses.replace(report, site=self._names().get(report.node_id, report.site))

    def _learn_names(self, reports: list[SiteReport]) -> None:
        names = self._names()
        for report in reports:
            if report.site != f"node-{report.node_id}":
                names[report.node_id] = report.site

    def on_client_dp(
        self,
        server_round: int,
        *,
        epsilon: float,
        delta: float,
        noise_multiplier: float,
        sample_rate: float,
        rounds: int,
    ) -> None:
        """Ledger row of client-level DP: the federation's epsilon after this round."""
        self.store.record_privacy(
            self.run_id,
            PrivacyRecord(
                server_round=server_round,
                scope="federation",
                site="(federation)",
                epsilon=epsilon,
                delta=delta,
                budget=None,
                noise_multiplier=noise_multiplier,
                sample_rate=sample_rate,
                steps=rounds,
                accountant="rdp",
                status="ok",
            ),
        )

    def _store_privacy(self, msg: Message, report: SiteReport) -> None:
        if msg.has_error() or report.phase != "train":
            return
        entry = privacy_entry(report, site_field(msg.content, DP_ACCOUNTANT, "rdp"))
        if entry is not None:
            self.store.record_privacy(self.run_id, entry)

    def _store_site(self, report: SiteReport) -> None:
        metrics: Mapping[str, float] = report.metrics if report.status in ("ok", LEFT_BUDGET) else {}
        self.store.record_site_metrics(
            self.run_id,
            server_round=report.server_round,
            phase=report.phase,  # type: ignore[arg-type]
            site=report.site,
            node_id=report.node_id,
            num_examples=report.num_examples,
            metrics=metrics,
            status=report.status,  # type: ignore[arg-type]
            reason=report.reason or None,
        )
        if report.status in ("failed", "rejected", LEFT_BUDGET):
            log(WARNING, "round %s: %s %s: %s", report.server_round, report.site, report.status, report.reason)

    def _store_reliability(self, replies: list[Message], reports: list[SiteReport]) -> None:
        """Each ok site's reliability bins of the final test and their sum, kept with the run."""
        sites: dict[str, ReliabilityDiagram] = {}
        for msg, report in zip(replies, reports):
            diagram = reliability_of(msg) if report.status == "ok" else None
            if diagram is not None:
                name = report.site if report.site not in sites else f"{report.site} (node {report.node_id})"
                sites[name] = diagram
        if sites:
            self.store.record_reliability(self.run_id, RunReliability.from_sites(sites).to_json())

    def _store_round(self, server_round: int, phase: str, reports: list[SiteReport]) -> None:
        ok = sum(r.status == "ok" for r in reports)
        mean = weighted_mean(reports)
        if phase == "train":
            self.store.record_round(self.run_id, server_round=server_round, train_metrics=mean, num_sites_trained=ok)
        elif phase == "evaluate":
            mean.update(_cross_site(reports))
            self.store.record_round(self.run_id, server_round=server_round, eval_metrics=mean, num_sites_evaluated=ok)
