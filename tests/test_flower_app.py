"""`flwr run .`: Flower's own CLI runs FedEye's ServerApp and ClientApp.

The end-to-end run goes to a local simulation SuperLink, which ``flwr run``
starts detached and which outlives the run; the ``flower`` fixture stops it
and everything it started (SuperExec, the simulation process, Ray) and
checks that nothing is left. The fast tests cover the ServerApp's check of
the run config Flower sends.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest
from flwr.app import Context, RecordDict

from fedeye.errors import ConfigError
from fedeye.server.app import flower_run_config
from fedeye.server.store import RunStore, resolve_db_url
from fedeye.sites.base import open_site
from tests.conftest import tiny_run_toml

needs_proc = pytest.mark.skipif(
    not Path("/proc/self/stat").is_file(), reason="finds the SuperLink's processes through /proc"
)

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # flwr and flower-superlink of this environment
RUN_TIMEOUT_S = 300


@dataclass(frozen=True)
class Flower:
    """Environment of a private Flower home and local SuperLink."""

    home: Path
    env: dict[str, str]

    def run(self, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "flwr"), *args],
            env=self.env,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
            check=False,
        )

    def superlink_log(self) -> str:
        log = self.home / "local-superlink" / "superlink.log"
        return log.read_text(errors="replace")[-4000:] if log.is_file() else "(no SuperLink log)"


@pytest.fixture
def flower(tmp_path: Path) -> Iterator[Flower]:
    """A fresh FLWR_HOME on free loopback ports; stops the local SuperLink afterwards."""
    home = tmp_path / "flwr-home"
    http_port, control_port = _free_ports(2)
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "FLWR_HOME": str(home),
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(http_port),
        "FLWR_LOCAL_CONTROL_API_PORT": str(control_port),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",  # else each run installs the app's dependencies
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    }
    try:
        yield Flower(home=home, env=env)
    finally:
        _stop_local_superlink(home)


def _context(**overrides: str | float | bool) -> Context:
    """A ServerApp context holding the pyproject defaults fused with ``overrides``, as Flower sends them."""
    defaults = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    run_config = {**defaults, **overrides}
    return Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config)


def test_flower_run_config_takes_absolute_paths(tiny_sites: Path, tmp_path: Path) -> None:
    cfg = flower_run_config(_context(**{"data.root": str(tiny_sites), "output.dir": str(tmp_path)}), num_nodes=3)
    assert cfg.data.root == tiny_sites and cfg.output.dir == tmp_path


def test_flower_run_config_refuses_relative_paths() -> None:
    """The ServerApp runs in the SuperLink's folder, not where `flwr run` was typed."""
    with pytest.raises(ConfigError, match=r"data.root='sites' is a relative path.*\$PWD/sites"):
        flower_run_config(_context(**{"data.root": "sites"}), num_nodes=2)


def test_flower_run_config_wants_one_supernode_per_site(tiny_sites: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"holds 3 site folders but the federation has 2 SuperNodes.*num-supernodes=3"
    ):
        flower_run_config(_context(**{"data.root": str(tiny_sites)}), num_nodes=2)


@pytest.mark.slow
@needs_proc
def test_flwr_run_trains_every_site_and_records_the_run(flower: Flower, tmp_path: Path, tiny_sites: Path) -> None:
    # Prepare: a FedEye run file (absolute paths) and one SuperNode per site
    out = tmp_path / "out"
    run_file = tiny_run_toml(tmp_path / "run.toml", sites=tiny_sites, out=out, rounds=2)
    site_names = {open_site(d).info.name for d in sorted(tiny_sites.iterdir())}

    # Execute
    started = time.monotonic()
    result = flower.run(
        "run",
        str(ROOT),
        "local",
        "--stream",
        "--run-config",
        str(run_file),
        "--federation-config",
        f"num-supernodes={len(site_names)} client-resources-num-cpus=1",
        cwd=tmp_path,
    )
    print(f"flwr run took {time.monotonic() - started:.1f} s")

    # Assert: `flwr run` exits 0 even when the ServerApp fails, so read the store
    assert result.returncode == 0, _explain(result, flower)
    with RunStore(resolve_db_url(str(out / "fedeye.db"), default_dir=out)) as store:
        runs = store.list_runs()
        assert [(r.name, r.status, r.rounds_done, r.num_sites) for r in runs] == [("tiny", "finished", 2, 3)], (
            f"{runs}\n{_explain(result, flower)}"
        )
        detail = store.get_run(runs[0].run_id)
    for server_round in (1, 2):
        evaluated = {m.site for m in detail.site_metrics if m.phase == "evaluate" and m.server_round == server_round}
        assert evaluated == site_names
    tested = [m for m in detail.site_metrics if m.phase == "test"]
    assert sorted(m.site for m in tested) == sorted(site_names)
    assert all(m.status == "ok" and m.num_examples > 0 for m in tested)
    final = detail.final_model()
    assert final is not None and Path(final.path).is_file()
    assert Path(final.path).is_relative_to(out)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:GitWildMatchPattern:DeprecationWarning")  # inside Flower's FAB builder
def test_fab_packs_the_package_only() -> None:
    """`flwr run .` uploads the folder as a FAB: no virtualenv, tests or site data kept beside the code."""
    import zipfile
    from io import BytesIO

    from flwr.cli.build import build_fab_from_files
    from flwr.cli.utils import collect_files

    files: dict[str, bytes | Path] = {
        **collect_files(ROOT),
        "sites/site-1/site.toml": b'name = "x"\n',
        "sites/site-1/labels.json": b"{}",
    }
    fab, _ = build_fab_from_files(files)
    names = zipfile.ZipFile(BytesIO(fab)).namelist()

    assert {"fedeye/server/app.py", "fedeye/client/app.py", "pyproject.toml"} <= set(names)
    assert not [n for n in names if not n.startswith(("fedeye/", ".info/")) and n != "pyproject.toml"]
    assert len(fab) < 1024 * 1024


# --------------------------------------------------------------------------- helpers


def _free_ports(count: int) -> list[int]:
    with ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


def _explain(result: subprocess.CompletedProcess[str], flower: Flower) -> str:
    return (
        f"exit code {result.returncode}\n--- stdout (tail)\n{result.stdout[-4000:]}\n"
        f"--- stderr (tail)\n{result.stderr[-4000:]}\n--- SuperLink log (tail)\n{flower.superlink_log()}"
    )


@dataclass(frozen=True)
class _Proc:
    pid: int
    ppid: int
    sid: int
    zombie: bool


def _processes() -> dict[int, _Proc]:
    procs: dict[int, _Proc] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # exited meanwhile
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        pid = int(entry.name)
        procs[pid] = _Proc(pid=pid, ppid=int(fields[1]), sid=int(fields[3]), zombie=fields[0] == "Z")
    return procs


def _cmdline(pid: int) -> list[str]:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _superlink_pids(home: Path) -> list[int]:
    """The local SuperLink(s) `flwr run` started for this FLWR_HOME (its log file is under it)."""
    log_file = str(home / "local-superlink" / "superlink.log")
    return [
        pid
        for pid in _processes()
        if any(Path(a).name == "flower-superlink" for a in _cmdline(pid)[:2]) and log_file in _cmdline(pid)
    ]


def _sessions(roots: list[int]) -> set[int]:
    """Sessions of ``roots`` and their descendants (the SuperLink, SuperExec and Ray each start new ones)."""
    procs = _processes()
    tree: set[int] = set()
    todo = list(roots)
    while todo:
        pid = todo.pop()
        if pid in procs and pid not in tree:
            tree.add(pid)
            todo.extend(p.pid for p in procs.values() if p.ppid == pid)
    return {procs[pid].sid for pid in tree} - {os.getsid(0)}


def _alive_in(sessions: set[int]) -> list[int]:
    return [p.pid for p in _processes().values() if p.sid in sessions and not p.zombie]


def _stop_local_superlink(home: Path, *, grace_s: float = 20.0) -> None:
    """SIGTERM the SuperLink (it stops SuperExec and the run), then SIGKILL what remains."""
    roots = _superlink_pids(home)
    sessions = _sessions(roots)
    for pid in roots:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while _alive_in(sessions) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in _alive_in(sessions):
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    time.sleep(0.5)
    left = [" ".join(_cmdline(pid))[:200] for pid in _alive_in(sessions)]
    assert not left, f"processes left after stopping the local SuperLink: {left}"
