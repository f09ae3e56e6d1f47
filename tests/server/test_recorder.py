"""The run recorder: replies -> site reports -> store rows; failures stop the run."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.app.message.message import make_message

from fedeye.server.recorder import RunRecorder, SiteReport, site_report, weighted_mean
from fedeye.server.store import RunStore
from tests.server.conftest import reply_metadata, site_reply


def _error_reply(node_id: int, reason: str) -> Message:
    return make_message(reply_metadata(node_id), error=Error(code=0, reason=reason))


def test_site_report_reads_name_metrics_and_count() -> None:
    report = site_report(3, "evaluate", site_reply(17, "Eye Clinic", **{"auc": 0.8, "num-examples": 40}))
    assert report == SiteReport(3, "evaluate", "Eye Clinic", 17, 40, {"auc": 0.8})


def test_error_reply_is_a_failed_report_without_its_text() -> None:
    report = site_report(1, "train", _error_reply(9, "disk full at /data/MRN-1234"))
    assert report.status == "failed" and report.node_id == 9
    assert report.reason == "Flower error 0 (unknown); details stay at the site"


def _failed_reply(node_id: int, site: str, **fields: str) -> Message:
    record = ConfigRecord({"name": site, "status": "failed", **fields})
    content = RecordDict({"metrics": MetricRecord({"num-examples": 0}), "site": record})
    return make_message(reply_metadata(node_id), content=content)


def test_weighted_mean_skips_nan_and_failed() -> None:
    reports = [
        SiteReport(1, "evaluate", "a", 1, 10, {"auc": 0.9}),
        SiteReport(1, "evaluate", "b", 2, 30, {"auc": 0.5}),
        SiteReport(1, "evaluate", "c", 3, 50, {"auc": math.nan}),
        SiteReport(1, "evaluate", "d", 4, 0, {}, "failed", "x"),
    ]
    assert weighted_mean(reports) == pytest.approx({"auc": (0.9 * 10 + 0.5 * 30) / 40})


def test_recorder_stores_sites_and_rounds(tmp_path: Path) -> None:
    store = RunStore(f"sqlite:///{tmp_path / 's.db'}")
    run_id = store.create_run(name="t", strategy="fedavg", config={}, num_rounds=1, num_sites=2)
    recorder = RunRecorder(store, run_id)
    recorder.on_replies(1, "train", [site_reply(1, "a", loss=0.5, **{"num-examples": 10}), _error_reply(2, "boom")])
    detail = store.get_run(run_id)
    assert {(m.site, m.status) for m in detail.site_metrics} == {("a", "ok"), ("node-2", "failed")}
    assert detail.rounds[0].train_metrics == {"loss": 0.5} and detail.rounds[0].num_sites_trained == 1


def test_failed_site_is_stored_with_category_and_incident_only(tmp_path: Path) -> None:
    store = RunStore(f"sqlite:///{tmp_path / 's.db'}")
    run_id = store.create_run(name="t", strategy="fedavg", config={}, num_rounds=1, num_sites=2)
    leaky = _failed_reply(1, "a", category="data-error", incident="0a1b2c3d4e5f", reason="see /data/MRN-1234/x.png")
    forged = _failed_reply(2, "b", category="/data/MRN-1234", incident="/data/MRN-1234")
    RunRecorder(store, run_id).on_replies(1, "evaluate", [leaky, forged])
    rows = {m.site: (m.status, m.reason) for m in store.get_run(run_id).site_metrics}
    assert rows == {"a": ("failed", "data-error (incident 0a1b2c3d4e5f)"), "b": ("failed", "internal")}


def test_failed_reply_without_a_name_is_named_from_earlier_rounds(tmp_path: Path) -> None:
    store = RunStore(f"sqlite:///{tmp_path / 's.db'}")
    run_id = store.create_run(name="t", strategy="fedavg", config={}, num_rounds=2, num_sites=1)
    recorder = RunRecorder(store, run_id)
    recorder.on_replies(1, "train", [site_reply(4, "Eye Clinic", loss=0.1, **{"num-examples": 3})])
    recorder.on_replies(2, "train", [_error_reply(4, "boom")])
    assert [m.site for m in store.get_run(run_id).site_metrics] == ["Eye Clinic", "Eye Clinic"]


def test_evaluation_round_stores_the_cross_site_view(tmp_path: Path) -> None:
    store = RunStore(f"sqlite:///{tmp_path / 's.db'}")
    run_id = store.create_run(name="t", strategy="fedavg", config={}, num_rounds=1, num_sites=2)
    replies = [site_reply(1, "a", auc=0.9, **{"num-examples": 10}), site_reply(2, "b", auc=0.7, **{"num-examples": 30})]
    RunRecorder(store, run_id).on_replies(1, "evaluate", replies)
    metrics = store.get_run(run_id).rounds[0].eval_metrics
    assert metrics is not None
    assert metrics["site.mean-auc"] == pytest.approx(0.8) and metrics["site.worst-auc"] == pytest.approx(0.7)
    assert metrics["site.gap"] == pytest.approx(0.2) and metrics["site.es-auc"] == pytest.approx(0.8 / 1.2)
    assert metrics["auc"] == pytest.approx((0.9 * 10 + 0.7 * 30) / 40)  # image-weighted mean
