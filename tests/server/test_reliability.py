"""The coordinator keeps the final test's reliability bins: each site's as sent, and their sum."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord

from fedeye import protocol as p
from fedeye.client.operating_point import reliability_for
from fedeye.fairness.operating_point import ModelOperatingPoint
from fedeye.fairness.reliability import RunReliability, reliability_diagram
from fedeye.server.recorder import RunRecorder
from fedeye.server.reliability import diagram_of
from fedeye.server.report_data import load_report_data
from fedeye.server.store import RunStore
from tests.server.conftest import site_reply

POINT = ModelOperatingPoint(0.1, 1.6, "youden", "federation", (0, 0), 0.8, 0.8, bias=-0.2)
MIN_GROUP = 6


def _site(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    p1 = np.clip(0.5 + (labels - 0.5) * 0.5 + rng.normal(0, 0.25, n), 0.001, 0.999)
    return labels, np.column_stack([1 - p1, p1])


def _reply(node_id: int, site: str, labels: np.ndarray, probs: np.ndarray) -> Message:
    """A site's final test reply, its reliability record made by the site's own code."""
    reply = site_reply(node_id, site, **{p.NUM_EXAMPLES: len(labels)})
    record = reliability_for(ConfigRecord({p.SEND_RELIABILITY: True}), probs, labels, POINT, min_group_size=MIN_GROUP)
    if record is not None:
        reply.content[p.RELIABILITY] = record
    return reply


@pytest.fixture
def store(tmp_path: Path) -> RunStore:
    return RunStore(f"sqlite:///{tmp_path / 'runs.db'}")


def test_the_run_keeps_each_sites_bins_and_their_sum(store: RunStore) -> None:
    # Prepare: three sites' test replies
    sites = {"North": _site(1, 90), "South": _site(2, 140), "East": _site(3, 30)}
    run_id = store.create_run(name="r", strategy="fedavg", config={}, num_rounds=1, num_sites=3)
    replies = [_reply(k + 1, name, *data) for k, (name, data) in enumerate(sites.items())]

    # Execute
    RunRecorder(store, run_id).on_replies(1, "test", replies)

    # Assert: stored per site as each site binned it, and the pooled diagram is their sum
    stored = store.get_run(run_id).reliability
    assert stored is not None
    run = RunReliability.from_json(stored)
    assert set(run.sites) == set(sites)
    for name, (labels, probs) in sites.items():
        assert run.sites[name] == reliability_diagram(labels, probs, POINT.calibration, min_group_size=MIN_GROUP)
    for stage in ("before", "after"):
        pooled = getattr(run.pooled, stage)
        parts = [getattr(d, stage) for d in run.sites.values()]
        assert pooled.images == tuple(np.sum([b.images for b in parts], axis=0))
        assert pooled.positives == tuple(np.sum([b.positives for b in parts], axis=0))
        assert pooled.probability_sums == pytest.approx(np.sum([b.probability_sums for b in parts], axis=0))
        assert pooled.total + pooled.withheld == sum(len(labels) for labels, _ in sites.values())
    assert run.pooled.before.withheld > 0  # some small bins were withheld at the sites
    assert load_report_data(store, run_id).reliability == run


def test_evaluate_rounds_and_runs_without_bins_store_none(store: RunStore) -> None:
    run_id = store.create_run(name="r", strategy="fedavg", config={}, num_rounds=1, num_sites=1)
    recorder = RunRecorder(store, run_id)
    recorder.on_replies(1, "evaluate", [_reply(1, "North", *_site(1, 90))])  # not the final test
    tiny = _site(4, 4)
    recorder.on_replies(1, "test", [_reply(1, "North", *tiny)])  # every bin under min_group_size: nothing sent
    assert store.get_run(run_id).reliability is None
    assert load_report_data(store, run_id).reliability is None


def test_malformed_records_are_ignored() -> None:
    labels, probs = _site(1, 90)
    good = reliability_for(ConfigRecord({p.SEND_RELIABILITY: True}), probs, labels, POINT, min_group_size=MIN_GROUP)
    assert good is not None and diagram_of(good) is not None
    short = MetricRecord({**good, p.BIN_IMAGES: [1, 2, 3]})
    negative = MetricRecord({**good, p.BIN_POSITIVES: [-1] * 10})
    assert diagram_of(short) is None and diagram_of(negative) is None
    without_after = MetricRecord({k: v for k, v in good.items() if not k.endswith("-calibrated")})
    diagram = diagram_of(without_after)
    assert diagram is not None and diagram.after is None


def test_a_store_made_before_the_reliability_column_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = RunStore(f"sqlite:///{path}")
    run_id = old.create_run(name="old", strategy="fedavg", config={}, num_rounds=1, num_sites=1)
    old.close()
    with sqlite3.connect(path) as db:  # as an older FedEye left it
        db.execute("ALTER TABLE runs DROP COLUMN reliability")

    store = RunStore(f"sqlite:///{path}")

    assert store.get_run(run_id).reliability is None
    store.record_reliability(run_id, {"pooled": {}, "sites": {}})
    assert store.get_run(run_id).reliability == {"pooled": {}, "sites": {}}
    assert load_report_data(store, run_id).reliability is None  # unreadable bins: no plot, no error
