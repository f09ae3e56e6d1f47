"""`fedeye coordinator start`, `fedeye site start`, `fedeye run ...`: argument errors, before any Flower process starts.

The end-to-end behaviour (real SuperLink and SuperNodes) is in
tests/deploy_runtime/test_loopback.py.
"""

from __future__ import annotations

import shutil
import socket
import threading
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fedeye.cli.main import app
from fedeye.client.supernode import supernode_command
from fedeye.errors import DeploymentError
from fedeye.flower_programs import Address, connection_name, parse_address, save_connection
from fedeye.server.deployment import connection_for, superlink_command

runner = CliRunner()
WIDE = {"COLUMNS": "300"}


def _invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args), env=WIDE)
    return result.exit_code, " ".join(result.output.split())  # rich wraps long lines


@pytest.fixture(autouse=True)
def flwr_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Flower's connection file goes to a temporary FLWR_HOME, never the user's."""
    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    return tmp_path / "flwr-home"


@pytest.fixture
def coord(tmp_path: Path) -> Path:
    out = tmp_path / "coord"
    assert runner.invoke(app, ["coordinator", "init", str(out)]).exit_code == 0
    return out


@pytest.fixture
def site(tmp_path: Path, tiny_sites: Path) -> Path:
    out = tmp_path / "site"
    result = runner.invoke(app, ["site", "init", str(out), "--name", "site-1", "--data", str(tiny_sites / "site-1")])
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.parametrize("missing", ["ca.crt", "superlink.crt", "superlink.key"])
def test_coordinator_start_refuses_without_tls_files(coord: Path, missing: str) -> None:
    (coord / missing).unlink()
    code, out = _invoke("coordinator", "start", "--dir", str(coord), "--address", "127.0.0.1:1")
    assert code == 1
    assert f"{coord / missing}: not found" in out
    assert "fedeye coordinator init" in out and "--insecure" in out


def test_coordinator_start_refuses_a_bad_address(coord: Path) -> None:
    code, out = _invoke("coordinator", "start", "--dir", str(coord), "--address", "localhost")
    assert code == 1 and "--address 'localhost' is not HOST:PORT" in out


def test_site_start_without_the_ca_certificate_names_it(site: Path) -> None:
    code, out = _invoke("site", "start", "--dir", str(site), "--superlink", "127.0.0.1:1")
    assert code == 1
    assert f"{site / 'ca.crt'}: not found" in out and "copy ca.crt from the coordinator" in out


@pytest.mark.parametrize(
    ("damaged", "message"), [("ca.crt", "not a PEM certificate"), ("node.key", "cannot read private key")]
)
def test_site_start_with_a_damaged_key_or_certificate_names_it(
    site: Path, coord: Path, damaged: str, message: str
) -> None:
    shutil.copy(coord / "ca.crt", site / "ca.crt")
    (site / damaged).write_text("not a key\n")
    code, out = _invoke("site", "start", "--dir", str(site), "--superlink", "127.0.0.1:1", "--rejoin-wait", "0")
    assert code == 1 and f"{site / damaged}: {message}" in out


def test_site_start_without_site_init(tmp_path: Path) -> None:
    code, out = _invoke("site", "start", "--dir", str(tmp_path), "--superlink", "127.0.0.1:1", "--insecure")
    assert code == 1 and "site.toml: not found" in out and "fedeye site init" in out


def test_failing_data_check_stops_the_site_before_any_supernode(
    site: Path, coord: Path, tmp_path: Path, tiny_sites: Path
) -> None:
    # Prepare: a listener where the SuperLink would be, and site data that has lost an image since `site init`
    data = shutil.copytree(tiny_sites / "site-1", tmp_path / "data")
    lost = min((data / "images").iterdir())
    lost.unlink()
    toml = site / "site.toml"
    toml.write_text(toml.read_text().replace(str(tiny_sites / "site-1"), str(data)))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.5)

    # Execute
    code, out = _invoke(
        "site",
        "start",
        "--dir",
        str(site),
        "--superlink",
        f"127.0.0.1:{listener.getsockname()[1]}",
        "--ca",
        str(coord / "ca.crt"),
    )

    # Assert: the check's problem is shown, no SuperNode started, nothing connected
    assert code == 1
    assert lost.name in out and "the SuperNode was not started" in out
    assert "Starting Flower SuperNode" not in out
    with pytest.raises(TimeoutError):
        listener.accept()
    listener.close()


def test_run_launch_refuses_a_simulation_data_root(tmp_path: Path, tiny_sites: Path, coord: Path) -> None:
    run = tmp_path / "run.toml"
    run.write_text(f'[data]\nroot = "{tiny_sites}"\n')
    code, out = _invoke(
        "run", "launch", "--config", str(run), "--superlink", "127.0.0.1:1", "--ca", str(coord / "ca.crt")
    )
    assert code == 1 and "data.root" in out and "is for simulations" in out


def test_run_launch_needs_the_ca_or_insecure(tmp_path: Path) -> None:
    run = tmp_path / "run.toml"
    run.write_text('name = "x"\n')
    code, out = _invoke("run", "launch", "--config", str(run), "--superlink", "127.0.0.1:1")
    assert code == 1 and "--ca" in out and "ca.crt" in out and "--insecure" in out


def test_run_status_of_an_unknown_run(tmp_path: Path) -> None:
    code, out = _invoke("run", "status", "r-nope", "--db", str(tmp_path / "s.db"))
    assert code == 1 and "no run 'r-nope'" in out


def test_a_superlink_still_starting_is_waited_for(coord: Path) -> None:
    # Prepare: a port nobody listens on yet; the "SuperLink" starts listening after a second
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    listener = socket.socket()
    notes: list[str] = []

    def start_listening() -> None:
        listener.bind(("127.0.0.1", port))
        listener.listen()

    timer = threading.Timer(1.0, start_listening)
    timer.start()
    try:
        # Execute
        name = connection_for(
            f"127.0.0.1:{port}", ca=coord / "ca.crt", insecure=False, wait_s=30, on_wait=lambda: notes.append("w")
        )
    finally:
        timer.join()
        listener.close()
    # Assert: one progress note, then the connection is saved
    assert notes == ["w"]
    assert name == connection_name(Address("127.0.0.1", port))


def test_a_superlink_that_never_answers_is_named(coord: Path) -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with pytest.raises(DeploymentError, match=rf"--superlink 127.0.0.1:{port}: nothing answers there after 1 s"):
        connection_for(f"127.0.0.1:{port}", ca=coord / "ca.crt", insecure=False, wait_s=1)


# --- the Flower command lines and connection file ---------------------------------------


def test_superlink_command_has_tls_auth_and_state(coord: Path, tmp_path: Path) -> None:
    from fedeye.server.deployment import coordinator_tls

    command = superlink_command(Address("127.0.0.1", 9092), tls=coordinator_tls(coord), database=tmp_path / "s.db")
    joined = " ".join(command)
    assert f"--ssl-ca-certfile {coord / 'ca.crt'}" in joined and "--enable-supernode-auth" in joined
    assert f"--database {tmp_path / 's.db'}" in joined and "--host 127.0.0.1 --port 9092" in joined
    assert "--insecure" not in command
    assert "--insecure" in superlink_command(Address("127.0.0.1", 9092), tls=None, database=tmp_path / "s.db")


def test_supernode_command_carries_key_root_and_node_config(tmp_path: Path) -> None:
    command = supernode_command(
        Address("127.0.0.1", 9092),
        credentials=(tmp_path / "ca.crt", tmp_path / "node.key"),
        node_config="site-dir='/data/a'",
        runtime_port=9200,
    )
    assert command[command.index("--node-config") + 1] == "site-dir='/data/a'"
    assert command[command.index("--auth-supernode-private-key") + 1] == str(tmp_path / "node.key")
    assert command[command.index("--root-certificates") + 1] == str(tmp_path / "ca.crt")
    assert command[command.index("--port") + 1] == "9200"


def test_parse_address() -> None:
    assert parse_address("10.0.0.5:9092", option="--superlink") == Address("10.0.0.5", 9092)
    assert parse_address("[::1]:9092", option="--superlink") == Address("::1", 9092)
    for bad in ("10.0.0.5", "host:0", "host:99999", ":9092"):
        with pytest.raises(DeploymentError, match="not HOST:PORT"):
            parse_address(bad, option="--superlink")


def test_save_connection_keeps_other_connections(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLWR_HOME", str(tmp_path))
    (tmp_path / "config.toml").write_text(
        '[superlink]\ndefault = "mine"\n[superlink.mine]\naddress = "10.1.1.1:9093"\n'
    )
    ca = tmp_path / "ca.crt"
    ca.write_text("x")
    name = save_connection(Address("127.0.0.1", 9092), root_certificates=ca)
    save_connection(Address("127.0.0.1", 9099), root_certificates=None)
    config = tomllib.loads((tmp_path / "config.toml").read_text())["superlink"]
    assert name == connection_name(Address("127.0.0.1", 9092)) == "fedeye-127-0-0-1-9092"
    assert config["mine"] == {"address": "10.1.1.1:9093"} and config["default"] == "mine"
    assert config[name] == {"address": "127.0.0.1:9092", "root-certificates": str(ca)}
    assert config["fedeye-127-0-0-1-9099"] == {"address": "127.0.0.1:9099", "insecure": True}


# --- foreground programs ---------------------------------------------------------------


def test_run_foreground_forwards_sigterm_and_returns_the_programs_code() -> None:
    """`fedeye coordinator start` and `site start` stop their Flower server on SIGTERM and exit with its code."""
    import signal
    import subprocess
    import sys

    child = "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(7)); print('ready', flush=True); time.sleep(60)"
    wrapper = f"import sys; from fedeye.flower_programs import run_foreground; sys.exit(run_foreground([sys.executable, '-c', {child!r}]).code)"
    proc = subprocess.Popen([sys.executable, "-c", wrapper], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 7
    finally:
        proc.kill()
        proc.wait()


def test_run_foreground_keeps_the_tail_where_flower_prints_its_exit_code() -> None:
    import sys

    from fedeye.flower_programs import run_foreground

    finished = run_foreground([sys.executable, "-c", "import sys; print('Exit Code: 305'); sys.exit(1)"])
    assert finished.code == 1 and "Exit Code: 305" in finished.tail


# --- resume refusals ------------------------------------------------------------------------


def _recorded_run(db: Path, *, privacy: dict[str, object] | None = None, status: str = "failed") -> str:
    from fedeye.config import RunConfig
    from fedeye.server.store import RunStore

    cfg = RunConfig.model_validate({"privacy": privacy or {}})
    with RunStore(f"sqlite:///{db}") as store:
        run_id = store.create_run(
            name="r", strategy="fedavg", config=cfg.model_dump(mode="json"), num_rounds=3, num_sites=3
        )
        store.finish_run(run_id, status=status)  # type: ignore[arg-type]
    return run_id


@pytest.mark.parametrize(
    ("privacy", "status", "message"),
    [
        (None, "finished", "finished; there is nothing to resume"),
        ({"client_level": "fixed"}, "failed", "uses client-level differential privacy"),
        (None, "failed", "no completed round to resume from"),
        # patient-level DP-SGD is resumable (the sites' ledgers keep its history): refused only for the missing checkpoint
        ({"enabled": True}, "failed", "no completed round to resume from"),
    ],
)
def test_run_resume_refuses(tmp_path: Path, privacy: dict[str, object] | None, status: str, message: str) -> None:
    run_id = _recorded_run(tmp_path / "s.db", privacy=privacy, status=status)
    code, out = _invoke(
        "run", "resume", run_id, "--db", str(tmp_path / "s.db"), "--superlink", "127.0.0.1:1", "--insecure"
    )
    assert code == 1 and message in out


def test_site_node_config_reaches_the_clientapp_as_flower_parses_it(tmp_path: Path) -> None:
    from flwr.common.config import parse_config_args

    from fedeye.client.supernode import node_config_arg as _node_config_arg
    from fedeye.client.supernode import site_node_config

    config = site_node_config(
        data=tmp_path / "data",
        site_toml=tmp_path / "site.toml",
        audit_log=None,
        state_dir=tmp_path / "state",
        site_name="eye-clinic",
        worker=True,
    )
    parsed = parse_config_args([_node_config_arg(config)])

    assert parsed == {
        "site-dir": str(tmp_path / "data"),
        "site-config": str(tmp_path / "site.toml"),
        "state-dir": str(tmp_path / "state"),
        "site-name": "eye-clinic",
        "worker": True,
    }
