"""The site's lifetime privacy ledger: budgets over runs, restarts, resumes, concurrent writers."""

from __future__ import annotations

import json
import multiprocessing
from datetime import UTC, datetime
from pathlib import Path

import pytest
from flwr.app import Context, Message, MessageType, RecordDict

from fedeye.client.app import app
from fedeye.client.ledger import LEDGER_FILE, SiteLedger, data_fingerprint
from fedeye.client.state import simulated_state, site_state_for
from fedeye.config import RunConfig
from fedeye.privacy.accounting import MechanismStep, epsilon_spent
from fedeye.privacy.ledger import LedgerEntry, lifetime_epsilon, runs_of
from fedeye.privacy.policy import default_delta
from fedeye.sites.base import open_site
from tests.client.test_app import _request

SIGMA = 1.0


def _cfg(tiny_sites: Path, *, rounds: int = 1, epsilon: float = 50.0, sigma: float | None = SIGMA) -> RunConfig:
    privacy: dict[str, object] = {"enabled": True, "epsilon": epsilon}
    if sigma is not None:
        privacy["noise_multiplier"] = sigma
    return RunConfig.model_validate(
        {
            "data": {"root": str(tiny_sites)},
            "model": {"img_size": 32},
            "training": {"batch_size": 8, "rounds": rounds},
            "privacy": privacy,
        }
    )


def _node(site: Path, policy: Path | None = None) -> dict[str, str | int]:
    node: dict[str, str | int] = {"site-dir": str(site)}
    if policy is not None:
        node["site-config"] = str(policy)
    return node


def _fresh_context(node: dict[str, str | int]) -> Context:
    """A SuperNode's context as after a restart: empty state."""
    return Context(run_id=1, node_id=7, node_config=node, state=RecordDict(), run_config={})


def _train(cfg: RunConfig, node: dict[str, str | int], *, run: str, server_round: int = 1) -> Message:
    request = _request(cfg, MessageType.TRAIN, **{"fedeye-run-id": run})
    request.content["config"]["server-round"] = server_round
    return app(request, _fresh_context(node))


def _ledger(site: Path) -> SiteLedger:
    return SiteLedger(simulated_state(site).ledger_path)


def _one_round(site: Path, cfg: RunConfig) -> MechanismStep:
    """The mechanism one round of ``cfg`` applies at ``site`` (as plan_round derives it)."""
    patients = len({s.patient_id for s in open_site(site).samples() if s.split == "train"})
    q = min(1.0, cfg.training.batch_size / patients)
    return MechanismStep(SIGMA, q, max(1, round(cfg.training.local_epochs / q)))


def test_third_run_is_refused_when_only_two_fit_the_lifetime_budget(tiny_sites: Path, tmp_path: Path) -> None:
    site, cfg = tiny_sites / "site-1", _cfg(tiny_sites)
    patients = len({s.patient_id for s in open_site(site).samples() if s.split == "train"})
    step, delta = _one_round(site, cfg), default_delta(patients)
    two, three = (epsilon_spent([step] * k, delta=delta, accountant="rdp") for k in (2, 3))
    policy = tmp_path / "site.toml"
    policy.write_text(f"[privacy]\nlifetime_epsilon = {(two + three) / 2}\n")
    node = _node(site, policy)

    first, second, third = (_train(cfg, node, run=run) for run in ("r-one", "r-two", "r-three"))

    assert [m.content["site"]["status"] for m in (first, second)] == ["ok", "ok"]
    assert second.content["metrics"]["dp-lifetime-epsilon"] == pytest.approx(two, rel=1e-6)
    assert second.content["metrics"]["dp-epsilon"] == pytest.approx(first.content["metrics"]["dp-epsilon"])
    assert third.content["site"]["status"] == "left-budget" and "arrays" not in third.content
    assert "lifetime budget" in str(third.content["site"]["reason"])
    assert third.content["metrics"]["dp-lifetime-budget"] == pytest.approx((two + three) / 2)
    entries = _ledger(site).entries()
    assert runs_of(entries) == ["r-one", "r-two"] and len(entries) == 2
    assert {e.data_fingerprint for e in entries} == {
        data_fingerprint([(s.image, s.patient_id, s.label) for s in open_site(site).samples() if s.split == "train"])
    }


def test_supernode_restart_keeps_the_spent_epsilon(tiny_sites: Path) -> None:
    site, cfg = tiny_sites / "site-2", _cfg(tiny_sites, rounds=3)
    before = _train(cfg, _node(site), run="r-restart", server_round=1).content["metrics"]
    after = _train(cfg, _node(site), run="r-restart", server_round=2).content["metrics"]  # a fresh context: restarted

    assert after["dp-epsilon"] > before["dp-epsilon"]
    assert after["dp-steps"] == 2 * before["dp-steps"]
    assert [e.server_round for e in _ledger(site).entries()] == [1, 2]


def test_resumed_run_continues_with_its_sigma_and_history(tiny_sites: Path) -> None:
    site, cfg = tiny_sites / "site-3", _cfg(tiny_sites, rounds=3, epsilon=3.0, sigma=None)  # sigma calibrated
    _train(cfg, _node(site), run="r-other", server_round=1)  # another run's rows are not this run's history
    spent = [_train(cfg, _node(site), run="r-resumed", server_round=k).content["metrics"] for k in (1, 2, 3)]

    assert len({m["dp-noise-multiplier"] for m in spent}) == 1
    assert spent[-1]["dp-epsilon"] == pytest.approx(3.0, abs=0.02)
    assert spent[-1]["dp-lifetime-epsilon"] > spent[-1]["dp-epsilon"]


def test_failed_training_cancels_its_booking(tiny_sites: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("out of memory")

    monkeypatch.setattr("fedeye.client.dp_training.train_local_dp", broken)
    reply = _train(_cfg(tiny_sites), _node(tiny_sites / "site-1"), run="r-broken")
    assert reply.content["site"]["status"] == "failed"  # contained at the site (fedeye.client.incidents)
    assert _ledger(tiny_sites / "site-1").entries() == []


def test_without_a_fedeye_run_id_the_flower_run_keys_the_ledger(tiny_sites: Path) -> None:
    app(_request(_cfg(tiny_sites), MessageType.TRAIN), _fresh_context(_node(tiny_sites / "site-1")))
    assert runs_of(_ledger(tiny_sites / "site-1").entries()) == ["flower-1"]


def test_state_folder_is_private_and_under_fedeye_home(
    tiny_sites: Path, test_fedeye_home: Path, tmp_path: Path
) -> None:
    folder = site_state_for(tiny_sites / "site-1", {}).root
    assert folder.parent == test_fedeye_home / "sites" and folder.name.startswith("site-1-")
    assert folder.stat().st_mode & 0o777 == 0o700
    assert site_state_for(tiny_sites / "site-1", {"state-dir": str(tmp_path / "st")}).root == tmp_path / "st"


# --- concurrent writers --------------------------------------------------------------------------


def _entry(run: str, rnd: int) -> LedgerEntry:
    return LedgerEntry(
        run=run,
        server_round=rnd,
        noise_multiplier=1.0,
        sample_rate=0.1,
        steps=5,
        delta=1e-3,
        accountant="rdp",
        data_fingerprint="f",
        recorded_at=datetime.now(UTC),
    )


def _append_many(path: str, run: str, count: int) -> None:
    ledger = SiteLedger(Path(path))
    for rnd in range(count):
        ledger.append(_entry(run, rnd))


def _book_until_full(path: str, run: str, attempts: int, limit: int) -> None:
    ledger = SiteLedger(Path(path))

    def decide(entries: list[LedgerEntry]) -> tuple[bool, LedgerEntry | None]:
        fits = len(entries) < limit  # stands in for "the next round stays within budget"
        return fits, _entry(run, len(entries)) if fits else None

    for _ in range(attempts):
        _, booked = ledger.book(decide)
        if booked is not None:
            ledger.confirm(booked)


def _run_both(target: object, path: Path, *extra: int) -> None:
    fork = multiprocessing.get_context("fork")  # two separate OS processes, without re-importing torch
    procs = [fork.Process(target=target, args=(str(path), run, *extra)) for run in ("a", "b")]  # type: ignore[arg-type]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
    assert [proc.exitcode for proc in procs] == [0, 0]


def test_two_processes_append_at_once(tmp_path: Path) -> None:
    path = tmp_path / LEDGER_FILE
    _run_both(_append_many, path, 40)
    entries = SiteLedger(path).entries()
    assert len(entries) == 80 and sorted(runs_of(entries)) == ["a", "b"]
    assert sorted(e.server_round for e in entries if e.run == "a") == list(range(40))


def test_booking_is_atomic_across_processes(tmp_path: Path) -> None:
    path = tmp_path / LEDGER_FILE
    _run_both(_book_until_full, path, 30, 25)
    assert len(SiteLedger(path).entries()) == 25  # never more than the "budget", however the two interleave


def test_a_booking_never_confirmed_still_counts(tmp_path: Path) -> None:
    ledger = SiteLedger(tmp_path / LEDGER_FILE)
    ledger.append(_entry("a", 1))
    _, booked = ledger.book(lambda entries: (None, _entry("a", 2)))  # its process is killed before confirming
    assert booked is not None
    assert [s for _, s in ledger.entries_with_state()] == ["spent", "booked"]
    assert lifetime_epsilon(ledger.entries(), accountant="rdp") == pytest.approx(
        epsilon_spent([MechanismStep(1.0, 0.1, 5)] * 2, delta=1e-3, accountant="rdp")
    )


# --- end to end ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_simulations_share_the_sites_lifetime_ledger(tmp_path: Path, tiny_sites: Path) -> None:
    import shutil

    from typer.testing import CliRunner

    from fedeye.cli.main import app as cli
    from fedeye.server.store import RunStore

    sites = tmp_path / "sites"
    shutil.copytree(tiny_sites, sites)
    cfg = _cfg(sites)
    patients = len({s.patient_id for s in open_site(sites / "site-2").samples() if s.split == "train"})
    one = epsilon_spent([_one_round(sites / "site-2", cfg)], delta=default_delta(patients), accountant="rdp")
    (sites / "site-2" / "fedeye-site.toml").write_text(
        f"[privacy]\nlifetime_epsilon = {1.05 * one}\n"
    )  # one round fits
    run_file = tmp_path / "run.toml"
    run_file.write_text(
        f'name = "lifetime"\n[data]\nroot = "{sites}"\n[model]\narch = "vit-tiny-cpu"\nimg_size = 32\n'
        "[training]\nrounds = 1\nbatch_size = 8\n[privacy]\nenabled = true\nepsilon = 50.0\nnoise_multiplier = 1.0\n"
        f'[output]\ndir = "{tmp_path / "out"}"\ndb = "{tmp_path / "out" / "fedeye.db"}"\n'
    )

    runs = [CliRunner().invoke(cli, ["simulate", "--config", str(run_file)]) for _ in range(2)]

    assert [r.exit_code for r in runs] == [0, 0], runs[-1].output
    store = RunStore(f"sqlite:///{tmp_path / 'out' / 'fedeye.db'}")
    first, second = sorted((store.get_run(s.run_id) for s in store.list_runs()), key=lambda d: d.run.started_at)
    site2 = open_site(sites / "site-2").info.name
    train = {(d.run.run_id, m.site): m for d in (first, second) for m in d.site_metrics if m.phase == "train"}
    assert train[(first.run.run_id, site2)].status == "ok"
    assert train[(second.run.run_id, site2)].status == "left-budget"
    assert "lifetime budget" in (train[(second.run.run_id, site2)].reason or "")
    status = json.loads(CliRunner().invoke(cli, ["site", "status", str(sites / "site-2"), "--json"]).output)
    assert [r["run"] for r in status["runs"]] == [first.run.run_id]
