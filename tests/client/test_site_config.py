"""A site's own config: found on the site's side, validated, errors name the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedeye.client.site_config import SITE_CONFIG_FILE, SiteConfig, load_site_config, site_config_for
from fedeye.errors import ConfigError


def test_node_config_file_wins_over_site_folder(tmp_path: Path) -> None:
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / SITE_CONFIG_FILE).write_text("[privacy]\nepsilon = 9.0\n")
    (tmp_path / "node.toml").write_text('data = "site"\n[privacy]\nepsilon = 2.0\n')
    cfg = site_config_for(tmp_path / "site", {"site-config": str(tmp_path / "node.toml")})
    assert cfg.privacy.epsilon == 2.0 and cfg.data == (tmp_path / "site").resolve()
    assert site_config_for(tmp_path / "site", {}).privacy.epsilon == 9.0
    assert site_config_for(tmp_path / "elsewhere", {}) == SiteConfig()


def test_bad_value_names_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text("[privacy]\nepsilon = -1\n")
    with pytest.raises(ConfigError, match=r"site.toml: invalid site config: privacy.epsilon"):
        load_site_config(path)


def test_missing_file_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="site config not found"):
        site_config_for(None, {"site-config": str(tmp_path / "nope.toml")})


def test_a_site_config_saved_by_notepad_with_a_byte_order_mark_loads(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_bytes(b"\xef\xbb\xbf[privacy]\nepsilon = 3.0\n")
    assert load_site_config(path).privacy.epsilon == 3.0


def test_a_deeply_nested_site_config_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "site.toml"
    path.write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_site_config(path)
