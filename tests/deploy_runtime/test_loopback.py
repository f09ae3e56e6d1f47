"""A real deployment on loopback: `fedeye coordinator start`, three `fedeye site start`, `fedeye run ...`.

One federation (SuperLink with TLS and SuperNode authentication, keys from
`coordinator init` / `site init`, three registered sites over tiny synthetic
data, one unregistered site; site-2's `site.toml` says
``[approval] mode = "manual"``) lives through one four-round run. Each phase
is one thing a hospital deployment must survive; they share one federation
because starting one costs about a minute:

1. the unregistered site is refused;
2. run approval: site-2 answers round 1 with ``awaiting-approval`` (the
   coordinator's store records it, `fedeye site runs` lists the request as
   pending; the round goes on with the other two); its admin runs
   `fedeye site approve` at once, and site-2 trains from a later round on
   (`fedeye run status` of a waiting site: tests/cli/test_site_state.py);
3. a lost site: site-3 is killed (its whole process group) in round 2: the
   round completes without it after the round timeout and site-3 is recorded
   ``missing``; site-3 is started again at once;
4. a lost coordinator: after round 2's checkpoint the coordinator
   (SuperLink, SuperExec, ServerApp) is killed and started again on the same
   state file; `fedeye run resume` continues the run in the same run record,
   rounds 1-2 unchanged;
5. a lost site worker: site-1's warm worker is SIGKILLed while it trains in
   round 3: the ClientApp of the message in flight answers ``failed`` /
   ``worker-unavailable`` at once, the round completes with the other two,
   `site start` starts a new worker, and round 4 has all three sites.

Every process the test starts, and every process those start in their own
sessions (SuperExec, flwr-serverapp, flwr-clientapp), is killed by PID at
the end. Simulation covers approval in tests/client/test_approval.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

import pytest

from fedeye.client.worker import ping
from fedeye.server.store import RunDetail, RunStore, resolve_db_url
from fedeye.sites.base import open_site
from tests.test_flower_app import _free_ports, _processes, _sessions

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not Path("/proc/self/stat").is_file(), reason="finds Flower's detached processes and worker CPU time in /proc"
    ),
]

FEDEYE = str(Path(sys.executable).parent / "fedeye")
ROUND_TIMEOUT_S = 60.0
STEP_TIMEOUT_S = 240.0


@dataclass
class Federation:
    """The processes of one loopback federation and the files they use."""

    root: Path
    env: dict[str, str]
    address: str
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = (self.root / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [FEDEYE, *args], env=self.env, cwd=self.root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.procs[name] = proc
        return proc

    def fedeye(self, *args: str, timeout: float = STEP_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [FEDEYE, *args], env=self.env, cwd=self.root, capture_output=True, text=True, timeout=timeout, check=False
        )

    def log(self, name: str, *, tail: int | None = 3000) -> str:
        """The process's output: its last ``tail`` characters (a failure message), or all of it (``tail=None``)."""
        path = self.root / f"{name}.log"
        text = path.read_text(errors="replace") if path.is_file() else "(no log)"
        return text if tail is None else text[-tail:]

    def logs(self) -> str:
        return "\n".join(f"--- {name}\n{self.log(name)}" for name in self.procs)

    def kill(self, name: str) -> None:
        """SIGKILL the process, its group and every session its descendants started."""
        proc = self.procs.pop(name)
        _kill_tree(proc.pid)
        proc.wait(timeout=30)

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.kill(name)


def _kill_tree(root: int) -> None:
    sessions = _sessions([root])
    for _ in range(3):  # processes may start children while we kill
        for proc in _processes().values():
            if proc.sid in sessions and not proc.zombie:
                with suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
        time.sleep(0.3)
    left = [p.pid for p in _processes().values() if p.sid in sessions and not p.zombie]
    assert not left, f"processes left after killing {root}: {left}"


@pytest.fixture
def federation(tmp_path: Path, tiny_sites: Path) -> Iterator[Federation]:
    """Coordinator folder, three registered sites and one unregistered, on free loopback ports."""
    (port,) = _free_ports(1)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "FLWR_HOME": str(tmp_path / "flwr-home"),
        "FEDEYE_HOME": str(tmp_path / "fedeye-home"),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "COLUMNS": "200",
    }
    env.pop("FEDEYE_DB", None)
    fed = Federation(root=tmp_path, env=env, address=f"127.0.0.1:{port}")
    try:
        _provision(fed, tiny_sites)
        yield fed
    finally:
        fed.stop_all()


def _provision(fed: Federation, sites: Path) -> None:
    steps = [("coordinator", "init", "coord", "--host", "127.0.0.1")]
    for i, site in enumerate(sorted(sites.iterdir()), start=1):
        steps.append(("site", "init", f"site-{i}", "--name", f"site-{i}", "--data", str(site)))
        steps.append(("coordinator", "register-site", f"site-{i}/node.pub", "--name", f"site-{i}", "--dir", "coord"))
    steps.append(("site", "init", "intruder", "--name", "intruder", "--data", str(min(sites.iterdir()))))
    for step in steps:
        done = fed.fedeye(*step)
        assert done.returncode == 0, f"fedeye {' '.join(step)}\n{done.stdout}\n{done.stderr}"


def _run_file(fed: Federation, *, rounds: int) -> Path:
    """20 local epochs: each training message keeps a site's worker busy for a few seconds (phase 5)."""
    path = fed.root / "run.toml"
    path.write_text(
        'name = "loopback"\n[model]\narch = "vit-tiny-cpu"\nimg_size = 32\n'
        f"[training]\nrounds = {rounds}\nlocal_epochs = 20\nbatch_size = 16\n"
        f"[strategy]\nround_timeout = {ROUND_TIMEOUT_S}\nmin_train_nodes = 1\nmin_evaluate_nodes = 2\nmin_available_nodes = 2\n"
        '[output]\ndir = "out"\n'
    )
    return path


def _start_site(fed: Federation, i: int) -> None:
    fed.start(f"site-{i}", "site", "start", "--dir", f"site-{i}", "--superlink", fed.address, "--ca", "coord/ca.crt")


def _start_coordinator(fed: Federation) -> None:
    fed.start("coordinator", "coordinator", "start", "--dir", "coord", "--address", fed.address)


def _wait(what: str, check: Callable[[], bool], fed: Federation, *, timeout: float = STEP_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{fed.logs()}"
        time.sleep(1.0)


def _store(fed: Federation) -> RunStore:
    out = fed.root / "out"
    return RunStore(resolve_db_url(str(out / "fedeye.db"), default_dir=out))


def _detail(fed: Federation, run_id: str) -> RunDetail:
    with _store(fed) as store:
        return store.get_run(run_id)


def _checkpoints(fed: Federation, run_id: str) -> list[int]:
    return [a.server_round for a in _detail(fed, run_id).artifacts if a.kind == "checkpoint" and a.server_round]


def _online(fed: Federation, count: int) -> bool:
    conn = "fedeye-127-0-0-1-" + fed.address.rsplit(":", 1)[1]
    done = subprocess.run(
        [str(Path(sys.executable).parent / "flwr"), "supernode", "ls", conn, "--format", "json"],
        env=fed.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    try:
        nodes = json.loads(done.stdout[done.stdout.find("{") :]).get("nodes", [])
    except json.JSONDecodeError:
        return False
    return sum(n.get("status") == "online" for n in nodes) >= count


def test_loopback_federation_survives_approval_and_lost_sites_workers_and_coordinator(
    federation: Federation, tiny_sites: Path
) -> None:
    fed = federation
    names = {open_site(d).info.name for d in tiny_sites.iterdir()}
    site1, site2, site3 = (open_site(d).info.name for d in sorted(tiny_sites.iterdir()))
    site_toml = fed.root / "site-2" / "site.toml"
    site_toml.write_text(site_toml.read_text() + '\n[approval]\nmode = "manual"\n')
    started = time.monotonic()

    # Prepare: the coordinator registers the three authorized sites; the sites and an intruder connect
    _start_coordinator(fed)
    for i in (1, 2, 3):
        _start_site(fed, i)
    intruder = fed.start(
        "intruder",
        "site",
        "start",
        "--dir",
        "intruder",
        "--superlink",
        fed.address,
        "--ca",
        "coord/ca.crt",
        "--rejoin-wait",
        "0",
    )
    _wait("three sites online", lambda: _online(fed, 3), fed)
    worker1 = ping(fed.root / "site-1" / "state" / "worker.sock")
    assert worker1 is not None, fed.log("site-1")

    # 1. the unregistered site is refused
    assert intruder.wait(timeout=120) == 1, fed.log("intruder")
    assert "refused this site" in fed.log("intruder")
    fed.procs.pop("intruder")

    # 2. launch; site-2 is asked and waits for its admin, who approves
    launched = fed.fedeye(
        "run", "launch", "--config", str(_run_file(fed, rounds=4)), "--superlink", fed.address, "--ca", "coord/ca.crt"
    )
    assert launched.returncode == 0, launched.stdout + launched.stderr + fed.logs()
    run_id = launched.stdout.split("FedEye run ", 1)[1].split()[0]
    _wait("site-2's pending request", lambda: _site_request(fed, run_id).get("status") == "pending", fed)
    approved = fed.fedeye("site", "approve", run_id, "--dir", "site-2")  # during round 1, before round 2 asks
    assert approved.returncode == 0, approved.stdout + approved.stderr
    _wait("site-2's round-1 answer", lambda: 1 in _train_status(fed, run_id, site2), fed)
    assert _train_status(fed, run_id, site2)[1] == "awaiting-approval"
    _wait(
        "round 1 evaluated by all sites",
        lambda: (
            len({m.site for m in _detail(fed, run_id).site_metrics if m.server_round == 1 and m.phase == "evaluate"})
            == 3
        ),
        fed,
    )
    round1_done = time.monotonic()

    # 3. site-3 disappears in round 2 and comes straight back (refused until Flower sees the old node offline)
    fed.kill("site-3")
    _start_site(fed, 3)
    _wait("round 2 checkpoint", lambda: 2 in _checkpoints(fed, run_id), fed)
    detail = _detail(fed, run_id)
    round2 = {m.site: m.status for m in detail.site_metrics if m.server_round == 2 and m.phase == "train"}
    assert (round2[site1], round2[site3]) == ("ok", "missing"), round2
    assert round2[site2] in {"ok", "awaiting-approval"}, round2  # the approval may land before round 2 or after
    assert [r.num_sites_trained for r in detail.rounds if r.server_round == 2] == [
        sum(s == "ok" for s in round2.values())
    ]

    # 4. the coordinator dies after round 2; started again on the same state, the run resumes
    before = _detail(fed, run_id)
    fed.kill("coordinator")
    _start_coordinator(fed)
    _wait("three sites back online", lambda: _online(fed, 3), fed)  # round 3 needs all three (phase 5)
    resumed = fed.fedeye(
        "run",
        "resume",
        run_id,
        "--db",
        str(fed.root / "out" / "fedeye.db"),
        "--superlink",
        fed.address,
        "--ca",
        "coord/ca.crt",
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr + fed.logs()
    assert "resumes after round 2" in resumed.stdout

    # 5. site-1's worker is killed while it trains in round 3 (the first message after the resume)
    _kill_when_busy(worker1, fed)
    _wait("the resumed run to finish", lambda: _detail(fed, run_id).run.status != "running", fed, timeout=400)

    # Assert: one run record holds every round, rounds 1-2 as they were
    after = _detail(fed, run_id)
    assert (after.run.status, after.run.rounds_done) == ("finished", 4), (after.run, fed.logs())
    assert [r for r in after.rounds if r.server_round <= 2] == [r for r in before.rounds if r.server_round <= 2]
    assert all(m in after.site_metrics for m in before.site_metrics)
    assert [fr.first_round for fr in after.flower_runs] == [1, 3]
    assert after.final_model() is not None and Path(after.final_model().path).is_file()  # type: ignore[union-attr]
    train = {(m.server_round, m.site): (m.status, m.reason) for m in after.site_metrics if m.phase == "train"}
    # round 3 went on without site-1 (its worker died mid-message); site-3 is back; round 4 has all three
    assert train[(3, site1)] == ("failed", "worker-unavailable"), train
    assert (train[(3, site2)][0], train[(3, site3)][0]) == ("ok", "ok"), train
    assert {s for (rnd, s), (st, _) in train.items() if rnd == 4 and st == "ok"} == names, train
    assert sorted(m.site for m in after.site_metrics if m.phase == "test" and m.status == "ok") == sorted(names)
    worker1_again = ping(fed.root / "site-1" / "state" / "worker.sock")
    assert worker1_again is not None and worker1_again != worker1
    assert "site worker restarted" in fed.log("site-1", tail=None), fed.log("site-1")
    # site-2 joined after its approval, answered only awaiting-approval before; its admin sees the rounds
    trained2 = _train_status(fed, run_id, site2)
    first_ok = min(rnd for rnd, st in trained2.items() if st == "ok")
    assert first_ok > 1 and all(trained2[rnd] == "awaiting-approval" for rnd in trained2 if rnd < first_ok), trained2
    request = _site_request(fed, run_id)
    assert request["status"] == "approved" and request["rounds_joined"] == sum(st == "ok" for st in trained2.values())
    audit = [json.loads(line) for line in (fed.root / "site-2" / "audit.jsonl").read_text().splitlines()]
    decisions = [(e["decision"], e["by"]) for e in audit if e.get("event") == "approval" and e["run"] == run_id]
    assert decisions == [("pending", ""), ("approved", "admin")], decisions  # the site's audit log holds both

    # `fedeye run status` shows every site finished, and the missing round in `runs show`
    status = fed.fedeye("run", "status", run_id, "--db", str(fed.root / "out" / "fedeye.db"))
    assert status.returncode == 0 and status.stdout.count("finished") >= 3, status.stdout + status.stderr
    shown = fed.fedeye("runs", "show", run_id, "--db", str(fed.root / "out" / "fedeye.db"))
    assert "missing" in shown.stdout and site3 in shown.stdout
    print(
        f"loopback federation: {time.monotonic() - started:.0f} s in all, round 1 done after {round1_done - started:.0f} s"
    )
    print(_figures(after))


def _train_status(fed: Federation, run_id: str, site: str) -> dict[int, str]:
    """Round -> the status the site's train reply was recorded with."""
    return {
        m.server_round: m.status for m in _detail(fed, run_id).site_metrics if m.site == site and m.phase == "train"
    }


def _site_request(fed: Federation, run_id: str) -> dict[str, object]:
    """The run's approval request as site-2's admin sees it (`fedeye site runs --json`; empty: none yet)."""
    listed = fed.fedeye("site", "runs", "--dir", "site-2", "--json")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    rows = {row["run"]: row for row in json.loads(listed.stdout)}
    assert run_id not in rows or rows[run_id]["name"] == "loopback", rows
    return dict(rows.get(run_id, {}))


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _kill_when_busy(pid: int, fed: Federation, *, timeout: float = STEP_TIMEOUT_S, idle_first: float = 3.0) -> None:
    """SIGKILL ``pid`` once it is using CPU (handling a message), after ``idle_first`` s without (no older job)."""
    deadline = time.monotonic() + timeout
    before, idle_since = _cpu_ticks(pid), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = _cpu_ticks(pid)
        busy = now - before >= 5  # >= 50 ms of CPU in 200 ms
        if busy and time.monotonic() - idle_since >= idle_first:
            os.kill(pid, signal.SIGKILL)
            return
        if busy:
            idle_since = time.monotonic()
        before = now
    raise AssertionError(f"the worker never got busy\n{fed.logs()}")


def _figures(detail: RunDetail) -> str:
    """Wall time from one round's checkpoint to the next (train + evaluate on every site)."""
    saved = [a.created_at for a in detail.artifacts if a.kind == "checkpoint"]
    spans = [f"{(b - a).total_seconds():.0f} s" for a, b in pairwise(saved)]
    return f"checkpoint to checkpoint: {', '.join(spans)}"
