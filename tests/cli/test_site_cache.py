"""`fedeye site cache build|status|clear`, and `fedeye site init|start` preparing the state folder, through the real CLI."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedeye.cli.main import app
from fedeye.cli.operate import _prepare_state
from fedeye.cli.provision import provision_site
from fedeye.client.state import STATE_MARKER, SiteState, deployment_state, simulated_state
from fedeye.client.supernode import node_config_arg, site_node_config
from fedeye.sites.cache import STATE_MARKER as CACHE_SKIPS
from fedeye.sites.cache import list_entries
from fedeye.sites.synth import synthesize_sites

runner = CliRunner()
WIDE = {"COLUMNS": "200"}


def _invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args), env=WIDE)
    return result.exit_code, result.output


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    return synthesize_sites(tmp_path / "sites", sites=1, images_per_site=24, size=32, seed=2)[0]


@pytest.fixture()
def init_dir(tmp_path: Path, data: Path) -> Path:
    out = tmp_path / "site-a"
    provision_site(out, name="site-a", data=data, device="cpu", force=False)
    return out


def test_build_status_clear_on_a_data_folder(data: Path) -> None:
    code, out = _invoke("site", "cache", "build", str(data), "--image-size", "16", "--image-size", "20")
    cache = simulated_state(data).cache_dir

    assert code == 0, out
    assert "train 16px: " in out and "test 20px: " in out  # piped: one plain line per entry, no bar
    assert "\x1b[" not in out
    assert [(e.split, e.image_size) for e in list_entries(cache)] == [
        ("train", 16),
        ("train", 20),
        ("val", 16),
        ("val", 20),
        ("test", 16),
        ("test", 20),
    ]

    code, out = _invoke("site", "cache", "status", str(data), "--json")
    status = json.loads(out)
    assert code == 0 and status["cache_dir"] == str(cache)
    assert len(status["entries"]) == 6 and all(e["current"] for e in status["entries"])
    assert sum(e["images"] for e in status["entries"]) == 2 * 24

    code, out = _invoke("site", "cache", "clear", str(data))
    assert code == 0 and "removed" in out and list_entries(cache) == []
    code, out = _invoke("site", "cache", "status", str(data))
    assert code == 0 and "no data cache yet" in out


def test_status_marks_entries_stale_after_the_data_changed(data: Path) -> None:
    _invoke("site", "cache", "build", str(data), "--image-size", "16")
    manifest = data / "manifest.csv"
    manifest.write_text(manifest.read_text() + "\n")  # touched: another size, another fingerprint

    code, out = _invoke("site", "cache", "status", str(data))

    assert code == 0 and out.count("stale") == 3


def test_init_folder_uses_its_state_dir_and_cache_image_sizes(init_dir: Path) -> None:
    toml = init_dir / "site.toml"
    toml.write_text(toml.read_text().replace("# cache_image_sizes = [224]", "cache_image_sizes = [12]"))

    code, out = _invoke("site", "cache", "build", str(init_dir))

    assert code == 0, out
    assert [e.image_size for e in list_entries(init_dir / "state" / "cache")] == [12, 12, 12]


def test_state_dir_option_overrides(data: Path, tmp_path: Path) -> None:
    code, out = _invoke(
        "site", "cache", "build", str(data), "--image-size", "16", "--state-dir", str(tmp_path / "elsewhere")
    )

    assert code == 0, out
    assert len(list_entries(tmp_path / "elsewhere" / "cache")) == 3


def test_a_missing_site_is_a_clean_error(tmp_path: Path) -> None:
    code, out = _invoke("site", "cache", "status", str(tmp_path / "nope"))

    assert code == 1 and "error:" in out and "Traceback" not in out


def test_site_init_makes_a_private_state_folder(init_dir: Path) -> None:
    state = SiteState(init_dir / "state")

    assert all(stat.S_IMODE(p.stat().st_mode) == 0o700 for p in (state.root, state.cache_dir, state.logs_dir))
    assert (state.root / STATE_MARKER).is_file() and STATE_MARKER == CACHE_SKIPS


def test_site_start_prepares_the_cache_and_passes_the_state_dir(init_dir: Path, data: Path) -> None:
    site_toml = init_dir / "site.toml"
    state = _prepare_state(deployment_state(site_toml), site_toml=site_toml, data=data, image_sizes=[16])

    node_config = node_config_arg(
        site_node_config(data=data, site_toml=site_toml, audit_log=None, state_dir=state, site_name="s", worker=False)
    )

    assert state == (init_dir / "state").resolve()
    assert len(list_entries(state / "cache")) == 3
    assert f"state-dir='{state}'" in node_config
