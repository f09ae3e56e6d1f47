"""The dashboard's JSON API and pages over a store of fake rows (no simulation)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import typer
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from fedeye.fairness.operating_point import Calibration
from fedeye.fairness.reliability import RunReliability, reliability_diagram
from fedeye.server.dashboard import TOKEN_COOKIE, create_app
from fedeye.server.store import PrivacyRecord, RunStore

TOKEN = "test-token-123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SITES = ("site-a", "site-b")


def _fill(store: RunStore) -> str:
    run_id = store.create_run(name="fake", strategy="fedavg", config={}, num_rounds=2, num_sites=2)
    for rnd in (1, 2):
        for i, site in enumerate(SITES):
            status = "left-budget" if (rnd, site) == (2, "site-b") else "ok"
            store.record_site_metrics(
                run_id,
                server_round=rnd,
                phase="train",
                site=site,
                node_id=i,
                num_examples=20,
                metrics={"loss": 0.7},
                status=status,
            )
            if status == "ok":
                store.record_site_metrics(
                    run_id,
                    server_round=rnd,
                    phase="evaluate",
                    site=site,
                    node_id=i,
                    num_examples=10,
                    metrics={"auc": 0.6 + 0.1 * rnd, "loss": 0.8 - 0.1 * rnd},
                )
            store.record_privacy(
                run_id,
                PrivacyRecord(
                    server_round=rnd,
                    scope="site",
                    site=site,
                    epsilon=1.5 * rnd,
                    delta=1e-3,
                    budget=4.0,
                    noise_multiplier=1.0,
                    sample_rate=0.5,
                    steps=4 * rnd,
                    accountant="rdp",
                    status=status,
                ),
            )
        store.record_round(run_id, server_round=rnd, eval_metrics={"auc": 0.65 + 0.1 * rnd, "site.es-auc": 0.6})
    store.record_site_metrics(
        run_id,
        server_round=2,
        phase="test",
        site="site-a",
        node_id=0,
        num_examples=30,
        metrics={
            "auc": 0.9,
            "group.sex.f.n": 12.0,
            "group.sex.f.auc": 0.85,
            "group.sex.m.n": 14.0,
            "group.sex.m.auc": 0.95,
            "fair.sex.es-auc": 0.82,
            "fair.sex.dpd": 0.1,
            "fair.sex.eod": 0.2,
            "fair.race.suppressed": 2.0,
        },
    )
    store.finish_run(run_id, status="finished")
    return run_id


@pytest.fixture
def store(tmp_path: Path) -> RunStore:
    return RunStore(f"sqlite:///{tmp_path / 'fedeye.db'}")


@pytest.fixture
def client(store: RunStore) -> TestClient:
    return TestClient(create_app(store.url, token=TOKEN), base_url="http://127.0.0.1:8765")


def test_runs_list_shows_each_run(store: RunStore, client: TestClient) -> None:
    run_id = _fill(store)

    runs = client.get("/api/runs", headers=AUTH).json()

    assert [r["run_id"] for r in runs] == [run_id]
    assert runs[0]["status"] == "finished" and runs[0]["num_sites"] == 2 and runs[0]["rounds_done"] == 2


def test_run_detail_has_every_panel(store: RunStore, client: TestClient) -> None:
    run_id = _fill(store)

    detail = client.get(f"/api/runs/{run_id}", headers=AUTH).json()

    curves = detail["curves"]
    assert curves["rounds"] == [1, 2] and curves["sites"] == list(SITES)
    assert curves["auc"]["sites"]["site-a"] == [[1, pytest.approx(0.7)], [2, pytest.approx(0.8)]]
    assert [p[0] for p in curves["auc"]["federated"]] == [1, 2]
    counts = {c["round"]: c for c in detail["participation"]["counts"]}
    assert counts[2]["trained"] == 1 and counts[2]["left-budget"] == 1 and counts[2]["evaluated"] == 1
    fair = detail["fairness"]
    assert fair["phase"] == "test" and fair["round"] == 2
    by_attr = {a["attribute"]: a for a in fair["sites"][0]["attributes"]}
    assert [g["auc"] for g in by_attr["sex"]["groups"]] == [0.85, 0.95] and by_attr["sex"]["es-auc"] == 0.82
    assert by_attr["race"]["suppressed"] == 2.0 and by_attr["race"]["groups"] == []
    privacy = detail["privacy"]["series"]
    assert privacy["site-b"]["status"] == "left-budget" and privacy["site-a"]["budget"] == 4.0
    assert detail["experts"] == {"round": None, "experts": [], "sites": {}, "owners": {}}


def test_expert_weights_are_read_when_recorded(store: RunStore, client: TestClient) -> None:
    run_id = store.create_run(name="moe", strategy="prompt-experts", config={}, num_rounds=1, num_sites=1)
    store.record_site_metrics(
        run_id,
        server_round=1,
        phase="evaluate",
        site="site-a",
        node_id=0,
        num_examples=5,
        metrics={"auc": 0.7, "expert.0.weight": 0.25, "expert.1.weight": 0.75},
    )
    store.record_site_metrics(
        run_id,
        server_round=1,
        phase="train",
        site="site-a",
        node_id=0,
        num_examples=5,
        metrics={"loss": 0.5, "expert-index": 1},
    )

    experts = client.get(f"/api/runs/{run_id}", headers=AUTH).json()["experts"]

    assert experts == {
        "round": 1,
        "experts": ["0", "1"],
        "sites": {"site-a": {"0": 0.25, "1": 0.75}},
        "owners": {"1": "site-a"},
    }


def test_a_run_with_no_results_gives_empty_panels(store: RunStore, client: TestClient) -> None:
    run_id = store.create_run(name="new", strategy="fedavg", config={}, num_rounds=3, num_sites=2)

    detail = client.get(f"/api/runs/{run_id}", headers=AUTH).json()

    assert detail["run"]["status"] == "running"
    assert detail["curves"]["rounds"] == [] and detail["curves"]["auc"]["sites"] == {}
    assert detail["participation"]["sites"] == [] and detail["fairness"]["sites"] == []
    assert detail["privacy"]["series"] == {}
    assert detail["calibration"] == {"diagrams": [], "bias": None, "temperature": None}


def _site_scores(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels and two-column probabilities of a site's test images."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    p1 = np.clip(0.5 + (labels - 0.5) * 0.5 + rng.normal(0, 0.25, n), 0.001, 0.999)
    return labels, np.column_stack([1 - p1, p1])


def test_run_detail_has_the_stored_reliability_diagrams(store: RunStore, client: TestClient) -> None:
    # Prepare: a run with two sites' final-test bins kept with it, and the calibration the sites reported
    run_id = _fill(store)
    calibration = Calibration(bias=-0.2, temperature=1.6)
    diagrams = {
        site: reliability_diagram(*_site_scores(seed, 120), calibration, min_group_size=8)
        for seed, site in enumerate(SITES)
    }
    reliability = RunReliability.from_sites(diagrams)
    store.record_reliability(run_id, reliability.to_json())
    store.record_site_metrics(
        run_id,
        server_round=2,
        phase="test",
        site="site-b",
        node_id=1,
        num_examples=120,
        metrics={"auc": 0.8, "threshold": 0.4, "bias": -0.2, "temperature": 1.6},
    )

    # Execute
    cal = client.get(f"/api/runs/{run_id}", headers=AUTH).json()["calibration"]

    # Assert: pooled first, then each site; every bin with its images and rates; ECE before and after
    assert [(d["name"], d["scope"]) for d in cal["diagrams"]] == [
        ("All sites (2)", "pooled"),
        ("site-a", "site"),
        ("site-b", "site"),
    ]
    assert cal["bias"] == -0.2 and cal["temperature"] == 1.6
    pooled = cal["diagrams"][0]
    assert pooled["images"] == reliability.pooled.total and pooled["withheld"] == reliability.pooled.before.withheld
    for stage in ("before", "after"):
        bins = getattr(reliability.pooled, stage)
        shown = pooled[stage]
        assert shown["ece"] == pytest.approx(bins.ece())
        assert [b["images"] for b in shown["bins"]] == list(bins.images)
        assert [(b["low"], b["high"]) for b in shown["bins"]][:2] == [(0.0, 0.1), (0.1, 0.2)]
        for b, mean, rate in zip(shown["bins"], bins.mean_probability(), bins.observed_rate()):
            assert (b["mean"], b["observed"]) == ((None, None) if b["images"] == 0 else pytest.approx((mean, rate)))
    assert pooled["before"]["ece"] != pytest.approx(pooled["after"]["ece"])
    site_b, stored_b = cal["diagrams"][2], diagrams["site-b"].after
    assert stored_b is not None and [b["images"] for b in site_b["after"]["bins"]] == list(stored_b.images)


def test_unreadable_reliability_bins_give_the_empty_calibration_panel(store: RunStore, client: TestClient) -> None:
    run_id = store.create_run(name="old", strategy="fedavg", config={}, num_rounds=1, num_sites=1)
    store.record_reliability(run_id, {"pooled": {}, "sites": {}})  # as a FedEye with another format might leave it

    detail = client.get(f"/api/runs/{run_id}", headers=AUTH)

    assert detail.status_code == 200 and detail.json()["calibration"]["diagrams"] == []


def test_empty_store_lists_no_runs(client: TestClient) -> None:
    assert client.get("/api/runs", headers=AUTH).json() == []


def test_unknown_run_is_a_json_404(client: TestClient) -> None:
    response = client.get("/api/runs/r-nope", headers=AUTH)

    assert response.status_code == 404
    assert "no run 'r-nope'" in response.json()["detail"]


@pytest.mark.parametrize("path", ["/", "/runs/r-1", "/static/dashboard.js", "/api/runs", "/api/runs/r-1"])
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}])
def test_missing_or_wrong_token_is_refused(client: TestClient, path: str, headers: dict[str, str]) -> None:
    response = client.get(path, headers=headers)

    assert response.status_code == 401
    if path.startswith("/api/"):
        assert "access token" in response.json()["detail"]
    else:
        assert "access token needed" in response.text


def test_wrong_query_token_is_refused(client: TestClient) -> None:
    response = client.get("/?token=wrong", follow_redirects=False)

    assert response.status_code == 401 and TOKEN_COOKIE not in response.cookies


def test_query_token_sets_a_strict_httponly_cookie_and_leaves_the_url(client: TestClient) -> None:
    response = client.get(f"/runs/r-1?token={TOKEN}&x=1", follow_redirects=False)

    assert response.status_code == 303 and response.headers["location"] == "/runs/r-1?x=1"
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert client.get("/api/runs").status_code == 200  # the cookie alone now suffices


def test_pages_and_static_files_are_served_with_a_strict_policy(client: TestClient) -> None:
    page = client.get("/runs/r-1", headers=AUTH)
    script = client.get("/static/charts.js", headers=AUTH)

    assert page.status_code == 200 and '<script src="/static/dashboard.js"' in page.text
    assert "http" not in page.text.replace("http-equiv", "")  # nothing loaded from elsewhere
    assert script.status_code == 200
    assert "script-src 'self'" in page.headers["content-security-policy"]


@pytest.mark.parametrize("method", ["post", "put", "patch", "delete"])
def test_nothing_writes(client: TestClient, method: str) -> None:
    assert getattr(client, method)("/api/runs", headers=AUTH).status_code == 405


def test_empty_token_is_refused_at_build_time() -> None:
    with pytest.raises(ValueError, match="non-empty access token"):
        create_app("sqlite://", token="")


@pytest.mark.parametrize("path", ["//other.host", "/\\other.host", "///other.host/x"])
def test_token_redirect_never_leaves_the_server(client: TestClient, path: str) -> None:
    response = client.get(f"{path}?token={TOKEN}", follow_redirects=False)

    location = response.headers["location"]
    assert response.status_code == 303 and location.startswith("/") and not location.startswith(("//", "/\\"))


@pytest.mark.parametrize("host", ["evil.example", "127.0.0.1.evil.example", "[::1"])
def test_foreign_host_header_is_refused(client: TestClient, host: str) -> None:
    response = client.get("/api/runs", headers={"Authorization": f"Bearer {TOKEN}", "Host": host})

    assert response.status_code == 400 and "answers to" in response.json()["detail"]


@pytest.mark.parametrize("host", ["127.0.0.1:8765", "localhost", "[::1]:8765"])
def test_loopback_host_headers_are_accepted(client: TestClient, host: str) -> None:
    response = client.get("/api/runs", headers={"Authorization": f"Bearer {TOKEN}", "Host": host})

    assert response.status_code == 200


def test_allowed_hosts_follow_the_bound_address() -> None:
    from fedeye.web import allowed_hosts

    assert allowed_hosts("0.0.0.0") == ("*",)
    assert allowed_hosts("10.1.2.3")[0] == "10.1.2.3" and "localhost" in allowed_hosts("10.1.2.3")


# ----------------------------------------------------------------------- the command


def _cli() -> typer.Typer:
    from fedeye.cli.dashboard import dashboard_command

    app = typer.Typer()
    app.command("dashboard")(dashboard_command)
    app.command("unused", hidden=True)(lambda: None)  # keeps "dashboard" a named sub-command
    return app


def test_command_refuses_a_public_host_without_an_explicit_token(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        _cli(),
        ["dashboard", "--host", "0.0.0.0", "--db", str(tmp_path / "x.db")],
        env={"COLUMNS": "200", "FEDEYE_DASHBOARD_TOKEN": ""},
    )

    assert result.exit_code == 1 and "--token" in result.output


def test_command_refuses_a_missing_store_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(_cli(), ["dashboard", "--db", str(tmp_path / "none.db")], env={"COLUMNS": "200"})

    assert result.exit_code == 1 and "no run store at" in result.output
    assert not (tmp_path / "none.db").exists()


def test_command_refuses_a_short_token(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        _cli(), ["dashboard", "--token", "x", "--db", str(tmp_path / "x.db")], env={"COLUMNS": "200"}
    )

    assert result.exit_code == 1 and "at least 16" in result.output and "Traceback" not in result.output
