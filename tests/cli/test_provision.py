"""`fedeye coordinator init|register-site` and `fedeye site init`, driven through typer's CliRunner."""

from __future__ import annotations

import csv
import shutil
import stat
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from fedeye.cli.provision import coordinator_app, site_app
from fedeye.client.site_config import load_site_config
from fedeye.privacy import keys

runner = CliRunner()
WIDE = {"COLUMNS": "200"}
root = typer.Typer()
root.add_typer(coordinator_app, name="coordinator")
root.add_typer(site_app, name="site")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _node_pub(path: Path) -> Path:
    path.write_text(keys.public_key_line(keys.create_node_keypair()[1]) + "\n")
    return path


def test_coordinator_init_writes_ca_and_superlink_keys(tmp_path: Path) -> None:
    out = tmp_path / "coord"
    result = runner.invoke(
        root, ["coordinator", "init", str(out), "--host", "10.1.2.3", "--host", "fl.example.org"], env=WIDE
    )
    assert result.exit_code == 0, result.output
    assert _mode(out) == 0o700 and _mode(out / "ca.key") == 0o600 and _mode(out / "superlink.key") == 0o600
    cert = keys.load_certificate(out / "superlink.crt")
    cert.verify_directly_issued_by(keys.load_certificate(out / "ca.crt"))
    assert "fl.example.org" in (out / "coordinator.toml").read_text()
    assert "ca.crt" in result.output and "keep secret" in result.output
    from cryptography import x509

    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    shown = {str(v) for v in names.get_values_for_type(x509.IPAddress)} | set(names.get_values_for_type(x509.DNSName))
    # the SuperLink's own ServerApp/SuperExec reach it on loopback, so those names stay beside the given ones
    assert {"10.1.2.3", "fl.example.org", "127.0.0.1", "localhost"} <= shown


def test_coordinator_init_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    out = tmp_path / "coord"
    assert runner.invoke(root, ["coordinator", "init", str(out)]).exit_code == 0
    before = (out / "ca.key").read_bytes()
    result = runner.invoke(root, ["coordinator", "init", str(out)], env=WIDE)
    assert result.exit_code == 1 and "--force" in result.output
    assert (out / "ca.key").read_bytes() == before
    assert runner.invoke(root, ["coordinator", "init", str(out), "--force"]).exit_code == 0
    assert (out / "ca.key").read_bytes() != before


def test_register_site_appends_and_refuses_duplicates(tmp_path: Path) -> None:
    pub1, pub2 = _node_pub(tmp_path / "a.pub"), _node_pub(tmp_path / "b.pub")
    ok = runner.invoke(
        root, ["coordinator", "register-site", str(pub1), "--name", "site-1", "--dir", str(tmp_path)], env=WIDE
    )
    assert ok.exit_code == 0, ok.output
    same_name = runner.invoke(
        root, ["coordinator", "register-site", str(pub2), "--name", "site-1", "--dir", str(tmp_path)], env=WIDE
    )
    same_key = runner.invoke(
        root, ["coordinator", "register-site", str(pub1), "--name", "site-2", "--dir", str(tmp_path)], env=WIDE
    )
    assert same_name.exit_code == 1 and "already registered" in same_name.output
    assert same_key.exit_code == 1 and "already registered as site 'site-1'" in same_key.output
    rows = list(csv.DictReader((tmp_path / "authorized-sites.csv").open()))
    assert [r["name"] for r in rows] == ["site-1"]
    assert rows[0]["public_key"] == pub1.read_text().strip()
    assert rows[0]["fingerprint"] == keys.public_key_fingerprint(rows[0]["public_key"])


def test_register_site_refuses_a_malformed_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pub"
    bad.write_text("ssh-ed25519 nonsense\n")
    result = runner.invoke(
        root, ["coordinator", "register-site", str(bad), "--name", "site-1", "--dir", str(tmp_path)], env=WIDE
    )
    assert result.exit_code == 1 and "OpenSSH public key" in result.output
    assert not (tmp_path / "authorized-sites.csv").exists()


def test_site_init_writes_config_and_node_key(tiny_sites: Path, tmp_path: Path) -> None:
    out = tmp_path / "site"
    result = runner.invoke(
        root,
        ["site", "init", str(out), "--name", "site-1", "--data", str(tiny_sites / "site-1"), "--device", "cpu"],
        env=WIDE,
    )
    assert result.exit_code == 0, result.output
    cfg = load_site_config(out / "site.toml")
    assert cfg.data == (tiny_sites / "site-1").resolve() and cfg.device == "cpu"
    assert (
        cfg.audit_log == out.resolve() / "audit.jsonl"
        and cfg.privacy.min_group_size == 10
        and not cfg.privacy.require_dp
    )
    assert _mode(out) == 0o700 and _mode(out / "node.key") == 0o600
    line = keys.load_public_key_line(out / "node.pub")
    assert keys.public_key_line(keys.load_private_key(out / "node.key").public_key()) == line
    assert line in result.output and "fedeye coordinator register-site node.pub --name site-1" in result.output
    again = runner.invoke(
        root, ["site", "init", str(out), "--name", "site-1", "--data", str(tiny_sites / "site-1")], env=WIDE
    )
    assert again.exit_code == 1 and "--force" in again.output


def test_site_init_on_a_bad_site_writes_nothing(tmp_path: Path) -> None:
    site = tmp_path / "bad"
    (site / "images").mkdir(parents=True)
    (site / "manifest.csv").write_text("image,label,patient_id\nimages/missing.png,0,p1\n")
    out = tmp_path / "site"
    result = runner.invoke(root, ["site", "init", str(out), "--name", "bad", "--data", str(site)], env=WIDE)
    assert result.exit_code == 1
    assert "missing.png" in result.output and "nothing written" in result.output
    assert not out.exists()


@pytest.mark.parametrize("name", ["", "-x", "a b", "x" * 65, "s1\n", "s1\r", "s1/..", "é"])
def test_bad_site_names_are_refused(tmp_path: Path, name: str) -> None:
    result = runner.invoke(
        root,
        ["coordinator", "register-site", str(_node_pub(tmp_path / "a.pub")), "--name", name, "--dir", str(tmp_path)],
        env=WIDE,
    )
    assert result.exit_code == 1 and "not allowed" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "authorized-sites.csv").exists()


def test_site_init_refuses_a_name_with_a_newline(tiny_sites: Path, tmp_path: Path) -> None:
    out = tmp_path / "site"
    result = runner.invoke(
        root, ["site", "init", str(out), "--name", "s1\n", "--data", str(tiny_sites / "site-1")], env=WIDE
    )
    assert result.exit_code == 1 and "not allowed" in result.output
    assert not out.exists()


def test_commands_are_mounted_on_fedeye(tmp_path: Path, tiny_sites: Path) -> None:
    from fedeye.cli.main import app as fedeye_app

    assert CliRunner().invoke(fedeye_app, ["coordinator", "init", str(tmp_path / "coord")]).exit_code == 0
    result = CliRunner().invoke(
        fedeye_app,
        ["site", "init", str(tmp_path / "site"), "--name", "riverside", "--data", str(tiny_sites / "site-1")],
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "site" / "node.pub").read_text().startswith("ecdsa-sha2-nistp384 ")


@pytest.mark.parametrize("host", ["a b", "fl.example.org\n", "-x.org", "x" * 70 + ".org"])
def test_coordinator_init_refuses_a_bad_host_and_writes_nothing(tmp_path: Path, host: str) -> None:
    out = tmp_path / "coord"
    result = runner.invoke(root, ["coordinator", "init", str(out), "--host", host], env=WIDE)
    assert result.exit_code == 1 and "neither an IP address nor a DNS name" in result.output
    assert not out.exists()


def test_site_init_under_a_file_is_a_clean_error(tiny_sites: Path, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    result = runner.invoke(
        root,
        ["site", "init", str(tmp_path / "notes.txt" / "site"), "--name", "s1", "--data", str(tiny_sites / "site-1")],
        env=WIDE,
    )
    assert result.exit_code == 1 and "cannot create folder" in result.output
    assert not isinstance(result.exception, OSError)


def test_site_init_refuses_the_data_folder_even_with_force(tiny_sites: Path, tmp_path: Path) -> None:
    """The data folder's site.toml describes the data; --force must not replace it with the site's config."""
    data = tmp_path / "data"
    shutil.copytree(tiny_sites / "site-1", data)
    before = (data / "site.toml").read_text()
    result = runner.invoke(root, ["site", "init", str(data), "--name", "s1", "--data", str(data), "--force"], env=WIDE)
    assert result.exit_code == 1 and "is the data folder" in result.output
    assert (data / "site.toml").read_text() == before and not (data / "node.key").exists()
