"""Run approval at a site: policy, pending requests, the admin's decisions, what the coordinator learns."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from flwr.app import MessageType
from typer.testing import CliRunner

from fedeye.cli.main import app as cli
from fedeye.client.admin import run_rows, site_home
from fedeye.client.app import app
from fedeye.client.approval import ApprovalBook, ApprovalPolicy, policy_violations, run_request
from fedeye.client.audit import read_decisions
from fedeye.compose.inline import InlineGrid, serverapp_task
from fedeye.config import RunConfig
from fedeye.errors import SiteStateError
from fedeye.models import ModelConfig
from fedeye.protocol import RUN_ID
from fedeye.server.federation import create_run, run_federation
from fedeye.server.recorder import SiteReport
from fedeye.server.store import RunStore
from tests.client.test_app import _context, _request

RUN = "run-0001"


@pytest.fixture
def site(tiny_sites: Path, tmp_path: Path) -> Path:
    """A private copy of one tiny site (its fedeye-site.toml is the test's to write)."""
    return Path(shutil.copytree(tiny_sites / "site-1", tmp_path / "site-1"))


def _policy(site: Path, body: str) -> None:
    (site / "fedeye-site.toml").write_text(f"[approval]\n{body}\n")


def _cfg(site: Path, **training: int) -> RunConfig:
    return RunConfig.model_validate(
        {
            "name": "glaucoma-v1",
            "data": {"root": str(site.parent)},
            "model": {"img_size": 32},
            "training": {"batch_size": 16, **training},
        }
    )


def _train(site: Path, cfg: RunConfig):  # type: ignore[no-untyped-def]
    return app(_request(cfg, MessageType.TRAIN, **{RUN_ID: RUN}), _context({"site-dir": str(site)}))


# ------------------------------------------------------------------ pure policy


def test_policy_names_every_rule_a_run_breaks() -> None:
    policy = ApprovalPolicy(mode="policy", strategies=["fedavg"], require_dp=True, max_rounds=5, model_modes=["prompt"])
    request = run_request(_cfg(Path("/x/s"), rounds=9).to_json(), run_key=RUN)

    broken = policy_violations(policy, request)

    assert len(broken) == 3
    assert any("DP-SGD" in b for b in broken) and any("9 rounds" in b for b in broken)
    assert any("model.mode 'full'" in b for b in broken)


def test_a_policy_may_allow_head_mode_the_linear_probe() -> None:
    policy = ApprovalPolicy(mode="policy", model_modes=["head"])
    head = _cfg(Path("/x/s")).model_copy(update={"model": ModelConfig(img_size=32, mode="head", num_shared_prompts=0)})

    assert policy_violations(policy, run_request(head.to_json(), run_key=RUN)) == []
    assert policy_violations(policy, run_request(_cfg(Path("/x/s")).to_json(), run_key=RUN))


def test_an_approval_binds_to_the_exact_config() -> None:
    first = run_request(_cfg(Path("/x/s"), rounds=3).to_json(), run_key=RUN)
    same = run_request(_cfg(Path("/x/s"), rounds=3).to_json(), run_key=RUN)
    changed = run_request(_cfg(Path("/x/s"), rounds=4).to_json(), run_key=RUN)

    assert first.digest == same.digest != changed.digest
    assert len(first.code_sha256) == 64


# ------------------------------------------------------------------ at the site


def test_manual_mode_blocks_training_until_the_admin_approves(site: Path) -> None:
    _policy(site, 'mode = "manual"')
    cfg = _cfg(site)

    waiting = _train(site, cfg)
    assert waiting.content["site"]["status"] == "awaiting-approval"
    assert "arrays" not in waiting.content and waiting.content["metrics"]["num-examples"] == 0
    assert [r.status for r in ApprovalBook(site_home(site).state_dir).records()] == ["pending"]

    result = CliRunner().invoke(cli, ["site", "approve", RUN, "--dir", str(site)])
    assert result.exit_code == 0, result.output

    trained = _train(site, cfg)
    assert trained.content["site"]["status"] == "ok" and "arrays" in trained.content
    decisions = read_decisions(site_home(site).audit_log)
    assert [(d["decision"], d["by"]) for d in decisions] == [("pending", ""), ("approved", "admin")]


def test_a_changed_run_waits_for_a_new_approval(site: Path) -> None:
    _policy(site, 'mode = "manual"')
    _train(site, _cfg(site, rounds=2))
    CliRunner().invoke(cli, ["site", "approve", RUN, "--dir", str(site)])

    again = _train(site, _cfg(site, rounds=20))

    assert again.content["site"]["status"] == "awaiting-approval"


def test_deny_keeps_the_site_out_and_only_the_category_leaves(site: Path) -> None:
    _policy(site, 'mode = "manual"')
    _train(site, _cfg(site))
    secret = "Dr Example at St Aurelia objects"

    result = CliRunner().invoke(
        cli, ["site", "deny", RUN, "--dir", str(site), "--reason", secret, "--category", "governance"]
    )
    assert result.exit_code == 0, result.output
    reply = _train(site, _cfg(site))

    record = dict(reply.content["site"])
    assert record["status"] == "denied" and record["category"] == "governance"
    assert secret not in json.dumps(record) and "arrays" not in reply.content
    assert read_decisions(site_home(site).audit_log)[-1]["reason"] == secret  # kept at the site


def test_policy_mode_admits_an_allowed_strategy_and_refuses_another_without_a_person(site: Path) -> None:
    _policy(site, 'mode = "policy"\nstrategies = ["fedavg"]')
    allowed, refused = _cfg(site), _cfg(site)
    refused.strategy.name = "fedprox"

    assert _train(site, allowed).content["site"]["status"] == "ok"
    reply = _train(site, refused)

    assert dict(reply.content["site"])["category"] == "policy"
    statuses = sorted((r.status, r.decided_by) for r in ApprovalBook(site_home(site).state_dir).records())
    assert statuses == [("approved", "policy"), ("denied", "policy")]


def test_approving_an_unknown_run_names_it_and_exits_1(site: Path) -> None:
    result = CliRunner().invoke(cli, ["site", "approve", "no-such-run", "--dir", str(site)])

    assert result.exit_code == 1 and "no request from run 'no-such-run'" in result.output


def test_a_folder_that_is_not_a_site_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SiteStateError, match="is not a site"):
        site_home(tmp_path)


def test_site_runs_lists_requests_with_rounds_joined_and_bytes_sent(site: Path) -> None:
    _policy(site, 'mode = "manual"')
    _train(site, _cfg(site))
    CliRunner().invoke(cli, ["site", "approve", RUN, "--dir", str(site)])
    _train(site, _cfg(site))

    result = CliRunner().invoke(cli, ["site", "runs", "--dir", str(site), "--json"])

    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.output)
    assert row["run"] == RUN and row["status"] == "approved" and row["name"] == "glaucoma-v1"
    assert row["rounds_joined"] == 1 and row["bytes_sent"] > 100_000
    piped = CliRunner().invoke(cli, ["site", "runs", "--dir", str(site)])
    assert RUN in piped.output and "glaucoma-v1" in piped.output


# ------------------------------------------------------------------ a whole run, coordinator and sites


class _ApproveAfterFirstRefusal:
    """A progress sink that approves the waiting site as soon as the coordinator records its refusal."""

    def __init__(self, site: Path) -> None:
        self.site, self.approved = site, False

    def round_started(self, server_round: int, phase: str, num_sites: int) -> None:
        pass

    def site_reported(self, report: SiteReport) -> None:
        if report.status == "awaiting-approval" and not self.approved:
            book = ApprovalBook(site_home(self.site).state_dir)
            book.decide(book.records()[0].run_key, status="approved")
            self.approved = True


def test_a_waiting_site_joins_the_run_from_the_round_after_its_approval(tiny_sites: Path, tmp_path: Path) -> None:
    root = Path(shutil.copytree(tiny_sites, tmp_path / "sites"))
    _policy(root / "site-2", 'mode = "manual"')
    cfg = RunConfig.model_validate(
        {
            "name": "approval",
            "data": {"root": str(root)},
            "model": {"img_size": 32},
            "training": {"rounds": 3, "batch_size": 16},
            "strategy": {"min_train_nodes": 2},
            "output": {"dir": str(tmp_path / "out"), "db": f"sqlite:///{tmp_path / 'runs.db'}"},
        }
    )
    store = RunStore(f"sqlite:///{tmp_path / 'runs.db'}")
    grid = InlineGrid(app, {1000 + i: {"partition-id": i} for i in range(3)})
    run_id = create_run(store, cfg, num_sites=3)

    with serverapp_task():
        run_federation(grid, cfg, store=store, run_id=run_id, progress=_ApproveAfterFirstRefusal(root / "site-2"))

    site_2 = [m for m in store.get_run(run_id).site_metrics if m.phase == "train" and m.node_id == 1001]
    assert [(m.server_round, m.status) for m in sorted(site_2, key=lambda m: m.server_round)] == [
        (1, "awaiting-approval"),
        (2, "ok"),
        (3, "ok"),
    ]
    rows = run_rows(site_home(root / "site-2"))
    assert rows[0].run == run_id and rows[0].rounds_joined == 2


@pytest.mark.slow
def test_simulation_honours_a_policy_that_refuses_the_run(tiny_sites: Path, tmp_path: Path) -> None:
    from fedeye.compose.simulation import simulate

    root = Path(shutil.copytree(tiny_sites, tmp_path / "sites"))
    _policy(root / "site-3", 'mode = "policy"\nstrategies = ["prompt-experts"]')
    cfg = RunConfig.model_validate(
        {
            "name": "policy",
            "data": {"root": str(root)},
            "model": {"img_size": 32},
            "training": {"rounds": 2, "batch_size": 16},
            "strategy": {"min_train_nodes": 2},
            "output": {"dir": str(tmp_path / "out"), "db": str(tmp_path / "runs.db")},
        }
    )

    result = simulate(cfg)

    detail = RunStore(f"sqlite:///{tmp_path / 'runs.db'}").get_run(result.run_id)
    denied = {(m.server_round, m.reason) for m in detail.site_metrics if m.phase == "train" and m.status == "denied"}
    assert denied == {(1, "denied by the site: policy")}  # asked once, then never sampled to train again
    assert detail.run.status == "finished"
    (row,) = run_rows(site_home(root / "site-3"))
    assert row.status == "denied" and row.decided_by == "policy" and "strategy 'fedavg'" in row.reason
