"""A federated run with DP end to end: a site leaves for budget, the run carries on."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from fedeye.compose.simulation import simulate
from fedeye.config import RunConfig
from fedeye.privacy.planning import plan_round
from fedeye.privacy.policy import PrivacyPolicy, effective_dp
from fedeye.server.store import RunStore
from fedeye.sites.base import open_site

pytestmark = pytest.mark.slow


def _config(sites: Path, out: Path, **privacy: object) -> RunConfig:
    return RunConfig.model_validate(
        {
            "name": "dp",
            "data": {"root": str(sites)},
            "model": {"img_size": 32},
            "training": {"rounds": 3, "batch_size": 8},
            "privacy": {"enabled": True, "epsilon": 50.0, "noise_multiplier": 1.0, **privacy},
            "output": {"dir": str(out), "db": str(out / "fedeye.db")},
        }
    )


def _one_round_epsilon(cfg: RunConfig, site: Path) -> float:
    patients = {s.patient_id for s in open_site(site).samples() if s.split == "train"}
    settings = effective_dp(cfg.privacy, PrivacyPolicy(), num_patients=len(patients))
    assert settings is not None
    plan = plan_round(settings, num_patients=len(patients), batch_size=8, local_epochs=1, history=[], total_rounds=3)
    return plan.epsilon_after


def test_site_with_small_budget_leaves_and_the_run_carries_on(tmp_path: Path, tiny_sites: Path) -> None:
    sites = tmp_path / "sites"
    shutil.copytree(tiny_sites, sites)
    cfg = _config(sites, tmp_path / "out")
    budget = 1.1 * _one_round_epsilon(
        cfg, sites / "site-2"
    )  # enough for round 1, not round 2 (RDP composes sub-linearly)
    (sites / "site-2" / "fedeye-site.toml").write_text(f"[privacy]\nepsilon = {budget}\n")

    result = simulate(cfg)

    detail = RunStore(result.store_url).get_run(result.run_id)
    assert detail.run.status == "finished" and detail.run.rounds_done == 3
    site2 = open_site(sites / "site-2").info.name
    statuses = {(m.server_round, m.site): m.status for m in detail.site_metrics if m.phase == "train"}
    assert statuses[(1, site2)] == "ok" and statuses[(2, site2)] == "left-budget"
    assert (3, site2) not in statuses  # not sampled again
    assert sum(status == "ok" for (rnd, _), status in statuses.items() if rnd == 3) == 2
    ledger = [e for e in detail.privacy if e.site == site2]
    assert [e.status for e in ledger] == ["ok", "left-budget"]
    assert all(e.epsilon <= budget for e in ledger) and ledger[0].budget == pytest.approx(budget)
    others = [e for e in detail.privacy if e.site != site2]
    assert len(others) == 6 and all(e.status == "ok" and e.epsilon < 50.0 for e in others)


def test_client_level_dp_records_the_federation_epsilon(tmp_path: Path, tiny_sites: Path) -> None:
    cfg = _config(tiny_sites, tmp_path / "out", enabled=False, client_level="fixed", client_noise_multiplier=0.5)

    result = simulate(cfg)

    detail = RunStore(result.store_url).get_run(result.run_id)
    assert detail.run.status == "finished"
    federation = [e for e in detail.privacy if e.scope == "federation"]
    assert [e.server_round for e in federation] == [1, 2, 3]
    assert federation[0].epsilon < federation[1].epsilon < federation[2].epsilon
    assert not [e for e in detail.privacy if e.scope == "site"]
