"""The dashboard end to end: a real short federation, the real command, headless Chromium.

Needs Playwright from PyPI and a system Chromium (``/usr/bin/chromium``, or
``$FEDEYE_CHROMIUM``); Playwright's own browser download is never used; under
``CI=true`` a missing browser fails the test. The screenshots land in
``test-artifacts/dashboard-*.png``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from fedeye.compose.simulation import simulate
from fedeye.config import RunConfig
from fedeye.fairness.operating_point import Calibration
from fedeye.fairness.reliability import RunReliability, reliability_diagram
from fedeye.server.store import RunStore

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("FEDEYE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
TOKEN = "browser-test-token"
START_TIMEOUT_S = 30.0


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until_up(base: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"dashboard exited with {proc.returncode}")
        try:
            urllib.request.urlopen(f"{base}/api/runs", timeout=1)
        except urllib.error.HTTPError:
            return  # 401: it is up
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"dashboard did not answer on {base} within {START_TIMEOUT_S} s")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory, tiny_sites: Path) -> tuple[str, str]:
    """Store URL and run id of a 3-site, 2-round federation with DP."""
    out = tmp_path_factory.mktemp("dash-run")
    cfg = RunConfig.model_validate(
        {
            "name": "tiny",
            "data": {"root": str(tiny_sites)},
            "model": {"arch": "vit-tiny-cpu", "img_size": 32},
            "training": {"rounds": 2, "local_epochs": 1, "batch_size": 16},
            "privacy": {"enabled": True, "epsilon": 8.0, "noise_multiplier": 1.0},
            "output": {"dir": str(out), "db": str(out / "fedeye.db")},
        }
    )
    result = simulate(cfg)
    return str(out / "fedeye.db"), result.run_id


@contextmanager
def _serve(db: str) -> Iterator[str]:
    """Run ``fedeye dashboard`` over ``db`` in a subprocess; yield its base URL; stop it by PID."""
    port = _free_port()
    command = [
        sys.executable,
        "-c",
        "import typer; from fedeye.cli.dashboard import dashboard_command; typer.run(dashboard_command)",
        "--db",
        db,
        "--port",
        str(port),
        "--token",
        TOKEN,
    ]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_until_up(base, proc)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def dashboard(finished_run: tuple[str, str]) -> Iterator[str]:
    """The dashboard over the finished federation's store."""
    with _serve(finished_run[0]) as base:
        yield base


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if os.environ.get("CI") != "true":
        pytest.importorskip("playwright.sync_api")
        if not shutil.which(CHROMIUM) and not Path(CHROMIUM).exists():
            pytest.skip(f"no Chromium at {CHROMIUM}; install Debian's chromium or set FEDEYE_CHROMIUM")
    from playwright import sync_api as playwright_api

    with playwright_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


def test_run_page_draws_every_site_and_round(dashboard: str, finished_run: tuple[str, str], browser: object) -> None:
    _, run_id = finished_run
    page = browser.new_page(viewport={"width": 1360, "height": 1000})  # type: ignore[attr-defined]
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)

    page.goto(f"{dashboard}/runs/{run_id}?token={TOKEN}")
    page.wait_for_selector("#chart-auc svg .pt")

    assert "token=" not in page.url  # swapped for the cookie
    auc = page.locator("#chart-auc")
    assert auc.locator(".legend-item.site").count() == 3
    assert auc.locator(".series-group.site").count() == 3
    assert auc.locator(".legend-item.federated").count() == 1
    assert auc.locator(".x-tick").all_text_contents() == ["1", "2"]
    assert auc.locator(".series-group.site").first.locator(".pt").count() == 2
    assert page.locator("#chart-loss .series-group.site").count() == 3
    assert page.locator("#participation tbody tr").count() == 3 + 1  # sites + total
    assert page.locator("#chart-privacy .series-group").count() == 3
    assert page.locator("#fairness table").count() == 1
    assert "no expert mixing recorded" in page.locator("#experts").inner_text().lower()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-run.png"), full_page=True)
    page.goto(dashboard)
    page.wait_for_selector("#runs table")
    assert page.locator("#runs tbody tr").count() == 1
    page.screenshot(path=str(ARTIFACTS / "dashboard-runs.png"), full_page=True)
    assert errors == []


def test_wrong_token_is_refused_in_the_browser(dashboard: str, finished_run: tuple[str, str], browser: object) -> None:
    _, run_id = finished_run
    context = browser.new_context()  # type: ignore[attr-defined]
    page = context.new_page()

    response = page.goto(f"{dashboard}/runs/{run_id}?token=wrong")

    assert response.status == 401
    assert "access token needed" in page.content()
    assert context.cookies() == []
    context.close()


@pytest.fixture(scope="module")
def long_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A recorded run of 50 rounds over 20 sites (no training: participation records only)."""
    db = tmp_path_factory.mktemp("long-run") / "fedeye.db"
    store = RunStore(f"sqlite:///{db}")
    run_id = store.create_run(name="long", strategy="fedavg", config={}, num_rounds=50, num_sites=20)
    for server_round in range(1, 51):
        for k in range(20):
            status = "missing" if (server_round + k) % 17 == 0 else "ok"
            for phase in ("train", "evaluate"):
                store.record_site_metrics(
                    run_id,
                    server_round=server_round,
                    phase=phase,
                    site=f"hospital-{k:02d}",
                    node_id=100 + k,
                    num_examples=40,
                    metrics={"auc": 0.8},
                    status=status,
                )
    return str(db), run_id


def test_participation_stays_readable_for_50_rounds_and_20_sites(long_run: tuple[str, str], browser: object) -> None:
    db, run_id = long_run
    with _serve(db) as base:
        page = browser.new_page(viewport={"width": 1360, "height": 1000})  # type: ignore[attr-defined]
        page.goto(f"{base}/runs/{run_id}?token={TOKEN}")
        page.wait_for_selector("#participation table")

        box = page.locator("#participation")
        panel = page.locator("#panel-participation").bounding_box()
        assert panel["x"] + panel["width"] <= 1360  # the card stays on screen
        assert box.evaluate("e => e.scrollWidth > e.clientWidth")  # wider tables scroll inside it
        assert page.locator("#participation thead th").count() == 1 + 50
        assert page.locator("#participation tbody tr").count() == 20 + 1
        last = page.locator("#participation thead th").last
        last.scroll_into_view_if_needed()
        assert last.is_visible() and last.inner_text().lower() == "round 50"
        site_cell = page.locator("#participation tbody tr").first.locator("td").first
        assert site_cell.bounding_box()["x"] >= panel["x"]  # the site column stays in view (sticky)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard-participation-50x20.png"))


HOSTILE_SITE = "<img src=x onerror=alert(1)>"


def _site_scores(seed: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    p1 = np.clip(0.5 + (labels - 0.5) * 0.5 + rng.normal(0, 0.25, n), 0.001, 0.999)
    return labels, np.column_stack([1 - p1, p1])


@pytest.fixture(scope="module")
def calibration_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, str, RunReliability]:
    """A store with a run whose final test kept two sites' reliability bins, and a run without them."""
    db = tmp_path_factory.mktemp("calibration") / "fedeye.db"
    store = RunStore(f"sqlite:///{db}")
    with_bins = store.create_run(name="calibrated", strategy="fedavg", config={}, num_rounds=1, num_sites=2)
    diagrams = {
        site: reliability_diagram(*_site_scores(seed, 150), Calibration(bias=-0.3, temperature=1.8), min_group_size=5)
        for seed, site in enumerate(("North", HOSTILE_SITE))
    }
    reliability = RunReliability.from_sites(diagrams)
    store.record_reliability(with_bins, reliability.to_json())
    store.finish_run(with_bins, status="finished")
    without = store.create_run(name="multiclass", strategy="fedavg", config={}, num_rounds=1, num_sites=1)
    store.finish_run(without, status="finished")
    store.close()
    return str(db), with_bins, without, reliability


def test_calibration_panel_draws_the_reliability_diagram(
    calibration_runs: tuple[str, str, str, RunReliability], browser: object
) -> None:
    db, run_id, _, reliability = calibration_runs
    pooled = reliability.pooled
    assert pooled.after is not None
    with _serve(db) as base:
        page = browser.new_page(viewport={"width": 1360, "height": 1000})  # type: ignore[attr-defined]
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))

        page.goto(f"{base}/runs/{run_id}?token={TOKEN}")
        page.wait_for_selector("#calibration svg .pt")

        panel = page.locator("#calibration")
        assert panel.locator("svg .diagonal").count() == 1
        before, after = panel.locator(".series-group.before"), panel.locator(".series-group.after")
        assert before.locator(".pt").count() == sum(n > 0 for n in pooled.before.images)
        assert after.locator(".pt").count() == sum(n > 0 for n in pooled.after.images)
        shown_images = [int(n) for n in before.locator(".pt").evaluate_all("cs => cs.map(c => c.dataset.images)")]
        assert sorted(shown_images) == sorted(n for n in pooled.before.images if n > 0)
        assert "images, mean predicted" in before.locator(".pt title").first.text_content()
        legend = panel.locator(".legend").inner_text()
        assert f"ECE {pooled.before.ece():.3f}" in legend and f"ECE {pooled.after.ece():.3f}" in legend
        assert "temperature" not in panel.locator("p.hint").inner_text()  # no site reported one in this store
        options = panel.locator("#calibration-scope option").all_text_contents()
        assert options == ["All sites (2)", HOSTILE_SITE, "North"]  # the site's name as text, never markup
        assert panel.locator("img").count() == 0
        ARTIFACTS.mkdir(exist_ok=True)
        page.locator("#panel-calibration").screenshot(path=str(ARTIFACTS / "dashboard-calibration.png"))

        page.select_option("#calibration-scope", label="North")

        north = reliability.sites["North"]
        shown_images = [int(n) for n in before.locator(".pt").evaluate_all("cs => cs.map(c => c.dataset.images)")]
        assert sorted(shown_images) == sorted(n for n in north.before.images if n > 0)
        assert f"ECE {north.before.ece():.3f}" in panel.locator(".legend").inner_text()
        assert panel.locator("svg").count() == 1  # redrawn, not added
        assert errors == []


def test_calibration_panel_says_when_no_diagram_is_recorded(
    calibration_runs: tuple[str, str, str, RunReliability], browser: object
) -> None:
    db, _, run_id, _ = calibration_runs
    with _serve(db) as base:
        page = browser.new_page()  # type: ignore[attr-defined]

        page.goto(f"{base}/runs/{run_id}?token={TOKEN}")
        page.wait_for_selector("#calibration p.empty")

        assert "no reliability diagram recorded" in page.locator("#calibration").inner_text().lower()
        assert page.locator("#calibration svg").count() == 0
