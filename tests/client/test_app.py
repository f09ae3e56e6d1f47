"""The ClientApp on the Message API: what it trains on and what leaves the site."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, Metadata, RecordDict
from flwr.app.message.message import make_message

from fedeye.client.app import app
from fedeye.client.incidents import read_incidents
from fedeye.client.site import site_dir_for
from fedeye.config import RunConfig
from fedeye.errors import ConfigError
from fedeye.models import build_model
from fedeye.sites.base import open_site


def _config(tiny_sites: Path) -> RunConfig:
    return RunConfig.model_validate(
        {"data": {"root": str(tiny_sites)}, "model": {"img_size": 32}, "training": {"batch_size": 16}}
    )


def _request(cfg: RunConfig, message_type: str, **extra: str) -> Message:
    metadata = Metadata(
        run_id=1,
        message_id="m1",
        src_node_id=0,
        dst_node_id=7,
        reply_to_message_id="",
        group_id="1",
        created_at=time.time(),
        ttl=600.0,
        message_type=message_type,
    )
    config = ConfigRecord({"run-config": cfg.to_json(), "server-round": 1, **extra})
    arrays = ArrayRecord(build_model(cfg.model).state_dict())
    return make_message(metadata, content=RecordDict({"arrays": arrays, "config": config}))


def _context(node_config: dict[str, str | int]) -> Context:
    return Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config={})


def test_train_reply_carries_only_arrays_aggregates_and_site_name(tiny_sites: Path) -> None:
    cfg = _config(tiny_sites)
    site_dir = tiny_sites / "site-2"
    reply = app(_request(cfg, MessageType.TRAIN), _context({"site-dir": str(site_dir)}))

    assert set(reply.content.keys()) == {"arrays", "metrics", "site"}
    metrics = reply.content["metrics"]
    assert set(metrics.keys()) == {"loss", "num-examples", "train-seconds"}
    assert all(isinstance(v, (int, float)) for v in metrics.values())
    site = open_site(site_dir)
    assert metrics["num-examples"] == sum(s.split == "train" for s in site.samples())
    assert dict(reply.content["site"]) == {"name": site.info.name, "status": "ok"}
    assert set(reply.content["arrays"].keys()) == set(build_model(cfg.model).state_dict())


def test_evaluate_reply_has_fixed_aggregate_metrics(tiny_sites: Path) -> None:
    cfg = _config(tiny_sites)
    reply = app(_request(cfg, MessageType.EVALUATE, split="test"), _context({"site-dir": str(tiny_sites / "site-1")}))

    assert set(reply.content.keys()) == {"metrics", "site"}
    metrics = reply.content["metrics"]
    base = {"loss", "num-examples", "num-positive", "auc", "accuracy", "sensitivity", "specificity", "ece"}
    assert base <= set(metrics.keys())
    extra = set(metrics.keys()) - base
    assert all(k.startswith(("group.", "fair.")) for k in extra)
    # a tiny test split: every subgroup is under min_group_size (10), so none is sent, and it says so
    assert not [k for k in extra if k.startswith("group.")]
    assert metrics["fair.sex.suppressed"] >= 1 and metrics["fair.race.suppressed"] >= 1
    assert all(isinstance(v, (int, float)) for v in metrics.values())
    assert metrics["num-examples"] == sum(s.split == "test" for s in open_site(tiny_sites / "site-1").samples())


def test_group_metrics_sent_only_for_groups_of_min_size(tiny_sites: Path, tmp_path: Path) -> None:
    policy = tmp_path / "site.toml"
    policy.write_text("[privacy]\nmin_group_size = 3\n")
    cfg = _config(tiny_sites)
    node = {"site-dir": str(tiny_sites / "site-1"), "site-config": str(policy)}
    metrics = app(_request(cfg, MessageType.EVALUATE, split="train"), _context(node)).content["metrics"]
    sizes = {k: v for k, v in metrics.items() if k.startswith("group.") and k.endswith(".n")}
    assert sizes and all(v >= 3 for v in sizes.values())


def test_simulated_node_takes_the_partition_id_th_site(tiny_sites: Path) -> None:
    cfg = _config(tiny_sites)
    assert site_dir_for(cfg, {"partition-id": 2, "num-partitions": 3}) == tiny_sites / "site-3"
    with pytest.raises(ConfigError, match="site #3 does not exist"):
        site_dir_for(cfg, {"partition-id": 3, "num-partitions": 4})


def test_deployed_node_without_site_dir_gets_clear_error() -> None:
    with pytest.raises(ConfigError, match="site-dir"):
        site_dir_for(RunConfig(), {})


def test_bad_site_folder_fails_with_a_data_error_kept_at_the_site(tmp_path: Path, tiny_sites: Path) -> None:
    cfg = _config(tiny_sites)
    site, state = tmp_path / "site", tmp_path / "state"
    site.mkdir()
    reply = app(_request(cfg, MessageType.TRAIN), _context({"site-dir": str(site), "state-dir": str(state)}))
    assert reply.content["site"]["status"] == "failed" and reply.content["site"]["category"] == "data-error"
    (incident,) = read_incidents(state)
    assert "manifest.csv" in incident["message"] and incident["error_type"].endswith("SiteDataError")


def _dp_config(tiny_sites: Path, *, epsilon: float, rounds: int = 3) -> RunConfig:
    return RunConfig.model_validate(
        {
            "data": {"root": str(tiny_sites)},
            "model": {"img_size": 32},
            "training": {"batch_size": 8, "rounds": rounds},
            "privacy": {"enabled": True, "epsilon": epsilon, "noise_multiplier": 1.0},
        }
    )


def test_dp_round_reports_ledger_metrics_and_keeps_history(tiny_sites: Path) -> None:
    cfg = _dp_config(tiny_sites, epsilon=50.0)
    context = _context({"site-dir": str(tiny_sites / "site-1")})
    first = app(_request(cfg, MessageType.TRAIN), context)
    second = app(_request(cfg, MessageType.TRAIN), context)

    m1, m2 = first.content["metrics"], second.content["metrics"]
    assert 0 < m1["dp-epsilon"] < m2["dp-epsilon"] <= 50.0
    assert m2["dp-steps"] == 2 * m1["dp-steps"] and m1["dp-noise-multiplier"] == 1.0
    num_patients = len({s.patient_id for s in open_site(tiny_sites / "site-1").samples() if s.split == "train"})
    assert m1["dp-delta"] < 1 / num_patients
    assert "arrays" in second.content and second.content["site"]["status"] == "ok"


def test_site_over_budget_declines_without_arrays(tiny_sites: Path) -> None:
    cfg = _dp_config(tiny_sites, epsilon=1e-3)
    reply = app(_request(cfg, MessageType.TRAIN), _context({"site-dir": str(tiny_sites / "site-1")}))

    assert "arrays" not in reply.content
    assert reply.content["site"]["status"] == "left-budget"
    assert "budget" in str(reply.content["site"]["reason"])
    assert reply.content["metrics"]["dp-epsilon"] == 0.0


def test_site_policy_is_a_ceiling_the_run_cannot_lift(tmp_path: Path, tiny_sites: Path) -> None:
    policy = tmp_path / "site.toml"
    policy.write_text("[privacy]\nrequire_dp = true\nepsilon = 1.0\n")
    cfg = _config(tiny_sites)  # the coordinator does not ask for DP
    reply = app(
        _request(cfg, MessageType.TRAIN), _context({"site-dir": str(tiny_sites / "site-1"), "site-config": str(policy)})
    )
    # sigma is calibrated so that the run's planned rounds spend at most the site's budget
    context = _context({"site-dir": str(tiny_sites / "site-1"), "site-config": str(policy)})
    spent = [
        app(_request(cfg, MessageType.TRAIN), context).content["metrics"]["dp-epsilon"]
        for _ in range(cfg.training.rounds)
    ]
    assert spent == sorted(spent) and spent[-1] == pytest.approx(1.0, abs=0.01)

    generous = _dp_config(tiny_sites, epsilon=100.0)  # the coordinator asks for less privacy
    reply = app(
        _request(generous, MessageType.TRAIN),
        _context({"site-dir": str(tiny_sites / "site-1"), "site-config": str(policy)}),
    )
    assert reply.content["metrics"]["dp-budget"] == 1.0
