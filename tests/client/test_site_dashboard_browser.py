"""The site page end to end: the real command, headless Chromium, a pending run, then its rounds after approval.

Needs Playwright from PyPI and a system Chromium (``/usr/bin/chromium`` or
``$FEDEYE_CHROMIUM``); under ``CI=true`` a missing browser fails the test.
Screenshots land in ``test-artifacts/site-page-*.png``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from flwr.app import MessageType
from typer.testing import CliRunner

from fedeye.cli.main import app as cli
from fedeye.client.app import app
from fedeye.config import RunConfig
from fedeye.protocol import RUN_ID
from tests.client.test_app import _context, _request
from tests.server.test_dashboard_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, _free_port, _wait_until_up

pytestmark = pytest.mark.slow
TOKEN = "site-page-browser-test-token"
RUN = "r-browser-0001"


@pytest.fixture(scope="module")
def chromium() -> Iterator[object]:
    if os.environ.get("CI") != "true":
        pytest.importorskip("playwright.sync_api")
        if not Path(CHROMIUM).exists():
            pytest.skip(f"no Chromium at {CHROMIUM}; install Debian's chromium or set FEDEYE_CHROMIUM")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def site(tiny_sites: Path, tmp_path: Path) -> Path:
    copy = Path(shutil.copytree(tiny_sites / "site-3", tmp_path / "site-3"))
    (copy / "fedeye-site.toml").write_text(
        '[approval]\nmode = "manual"\n[privacy]\nepsilon = 8.0\nlifetime_epsilon = 20.0\n'
    )
    return copy


@pytest.fixture
def site_page(site: Path) -> Iterator[str]:
    port = _free_port()
    command = [
        sys.executable,
        "-m",
        "fedeye.cli",
        "site",
        "dashboard",
        "--dir",
        str(site),
        "--port",
        str(port),
        "--token",
        TOKEN,
    ]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=dict(os.environ))
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


def _train(site: Path) -> None:
    cfg = RunConfig.model_validate(
        {
            "name": "screening-v2",
            "data": {"root": str(site.parent)},
            "model": {"img_size": 32},
            "training": {"batch_size": 16, "rounds": 4},
            "privacy": {"enabled": True, "epsilon": 8.0, "noise_multiplier": 1.0},
        }
    )
    app(_request(cfg, MessageType.TRAIN, **{RUN_ID: RUN}), _context({"site-dir": str(site)}))


def test_site_page_shows_a_pending_run_then_its_rounds_after_approval(
    site: Path, site_page: str, chromium: object
) -> None:
    _train(site)  # the request arrives; the site waits
    page = chromium.new_page(viewport={"width": 1360, "height": 1000})  # type: ignore[attr-defined]
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))

    page.goto(f"{site_page}/?token={TOKEN}")
    page.wait_for_selector("#pending table")
    assert "token=" not in page.url
    pending = page.locator("#pending tbody tr")
    assert pending.count() == 1 and RUN in pending.inner_text() and "screening-v2" in pending.inner_text()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "site-page-pending.png"), full_page=True)

    assert CliRunner().invoke(cli, ["site", "approve", RUN, "--dir", str(site)]).exit_code == 0
    _train(site)
    page.reload()
    page.wait_for_selector("#runs table")

    assert "No run is waiting" in page.locator("#pending").inner_text()
    row = page.locator("#runs tbody tr").first.locator("td").all_inner_texts()
    assert row[0] == RUN and row[2] == "approved" and row[5] == "1"  # one round joined
    assert page.locator("#outgoing tbody tr").count() == 2  # the refusal, then the trained update
    privacy = page.locator("#privacy").inner_text()
    spent = page.locator("#privacy tbody tr").first.locator("td").all_inner_texts()
    assert spent[0] == RUN and spent[1] == "1" and 0 < float(spent[2].split()[0]) <= 8.0, spent
    assert "of 20.00" in privacy and "of 8.00" in privacy
    assert "not running" in page.locator("#runtime").inner_text()  # simulation: no worker
    page.wait_for_selector("#data p")
    assert "OK:" in page.locator("#data").inner_text()
    page.screenshot(path=str(ARTIFACTS / "site-page-approved.png"), full_page=True)
    assert errors == []


def test_site_page_needs_the_token(site_page: str, chromium: object) -> None:
    page = chromium.new_page()  # type: ignore[attr-defined]

    response = page.goto(f"{site_page}/?token=wrong")

    assert response.status == 401
