"""Where each site stands in a run: pure logic over the run store (and Flower's node list).

>>> from fedeye.server.store import RunStore
>>> store = RunStore("sqlite://")
>>> rid = store.create_run(name="r", strategy="fedavg", config={}, num_rounds=2, num_sites=2)
>>> store.record_site_metrics(rid, server_round=1, phase="train", site="a", node_id=7, num_examples=5, metrics={})
>>> store.record_site_metrics(rid, server_round=1, phase="train", site="b", node_id=8, num_examples=0,
...                           metrics={}, status="missing", reason="no reply")
>>> [(s.site, s.state) for s in site_states(store.get_run(rid))]
[('a', 'training'), ('b', 'missing')]
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from fedeye.server.store import RunDetail, SiteMetricRecord

SiteState = Literal[
    "online", "training", "finished", "left-budget", "failed", "missing", "ended", "awaiting-approval", "denied"
]
PHASE_ORDER = {"train": 0, "evaluate": 1, "test": 2}


@dataclass(frozen=True)
class SiteStateRow:
    """One site's state in a run, with the record it rests on."""

    site: str
    node_id: int
    state: SiteState
    last_round: int | None  # None for a node that has not taken part yet
    last_phase: str
    reason: str


def site_states(detail: RunDetail, *, online: Mapping[int, bool] | None = None) -> list[SiteStateRow]:
    """Each site's state: from its records in the run and, when known, whether Flower sees its node online.

    - ``left-budget``: it declined to train, its privacy budget spent;
    - ``denied``: the site (its admin or approval policy) refused the run;
    - ``awaiting-approval``: its last reply said its admin has not approved the run yet;
    - ``finished``: it evaluated the final model;
    - ``missing``: its last record is a round it never answered (or, the run
      going on, Flower sees it offline); ``online`` again once it is back;
    - ``failed``: its last reply was an error or a rejected update;
    - ``training``: it takes part in the running run;
    - ``online``: connected, not (yet) in this run's records;
    - ``ended``: the run ended before this site evaluated the final model.
    """
    by_node: dict[int, list[SiteMetricRecord]] = defaultdict(list)
    for record in detail.site_metrics:
        by_node[record.node_id].append(record)
    running = detail.run.status == "running"
    rows = [_row(records, running=running, is_online=(online or {}).get(node)) for node, records in by_node.items()]
    if running and online:
        rows += [
            SiteStateRow(f"node {n}", n, "online", None, "", "") for n, up in online.items() if up and n not in by_node
        ]
    return sorted(rows, key=lambda r: (r.site, r.node_id))


def _row(records: list[SiteMetricRecord], *, running: bool, is_online: bool | None) -> SiteStateRow:
    last = max(records, key=lambda r: (r.server_round, PHASE_ORDER.get(r.phase, 0)))
    named = [r.site for r in records if r.status not in ("missing", "failed")]
    site = named[-1] if named else last.site
    state = _state(records, last, running=running, is_online=is_online)
    return SiteStateRow(site, last.node_id, state, last.server_round, last.phase, last.reason or "")


def _state(
    records: list[SiteMetricRecord], last: SiteMetricRecord, *, running: bool, is_online: bool | None
) -> SiteState:
    if any(r.status == "left-budget" for r in records):
        return "left-budget"
    if any(r.status == "denied" for r in records):
        return "denied"
    if last.status == "awaiting-approval":
        return "awaiting-approval"
    if any(r.phase == "test" and r.status == "ok" for r in records):
        return "finished"
    if last.status == "missing":
        return "online" if is_online else "missing"
    if last.status in ("failed", "rejected", "dropped"):
        return "failed"
    if running:
        return "missing" if is_online is False else "training"
    return "ended"
