"""Deployment overhead: a loopback federation with and without the site worker.

Provisions and starts a real federation on 127.0.0.1 with the FedEye CLI, as
an operator and three site admins would: ``fedeye coordinator init/start``
(SuperLink with TLS and SuperNode authentication), ``fedeye site init`` and
``coordinator register-site`` per site, ``fedeye site start`` per site (with
its warm site worker, or ``--no-worker``), then ``fedeye run launch`` of a
FedAvg run and a wait until the run store says it finished. Every process
started is killed by PID at the end (with the processes they started in
their own sessions).

Timestamps come from the sites' own logs: the per-message ClientApp
(``fedeye.client.entry``) appends to ``<state-dir>/logs/messages.jsonl``
when its process started (``/proc/self/stat``), when it handed the reply
back to Flower, and how long the ClientApp's handler took in the worker
(``handler-s``). A round's wall time comes from the run store: from the last
evaluation result of the previous round to the last of this one (training,
aggregation, checkpoint, evaluation).

Per configuration it prints, over rounds 2..``--rounds`` (round 1 warms the
worker's model and data caches):

(a) site overhead per message: (reply handed back - FedEye's ClientApp module
    loaded) - compute, median; target with the worker <= 0.5 s. Also printed:
    the same from the start of Flower's ``flwr-clientapp`` process, which
    adds Flower's own per-message start-up (Python, flwr imports, pulling the
    task, unpacking the FAB: about 1.6 s of CPU) that no ClientApp can avoid. *Compute* is the handler's time
    in the warm worker; the ``no-worker`` configuration has no warm handler,
    so its compute is the same site's median warm handler time of the same
    message type from the worker configuration.
(b) round wall time / the slowest site's compute (train + evaluate handler
    seconds of that round), median; target <= 1.3 with the default workload,
    whose train + evaluate compute is >= 10 s per site and round.
(c) the share of the round outside every site's message processing: Flower's
    polling (SuperNode: a fixed 3 s between fetches; SuperExec: 0.2 s, set by
    FedEye; ServerApp: 0.25 s, FedEye's PollingGrid), message transport,
    process launch and the coordinator's aggregation.

The last two lines are ``site-overhead-s X`` and ``ratio Y`` for the worker
configuration. Exits 0 whatever it measured. About 6-8 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import TreeMonitor, print_table, verdict, write_json

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
FEDEYE = str(Path(sys.executable).parent / "fedeye")
FLWR = str(Path(sys.executable).parent / "flwr")
OVERHEAD_TARGET_S = 0.5
RATIO_TARGET = 1.3
STEP_TIMEOUT_S = 300.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", type=int, default=3, help="sites in the federation")
    parser.add_argument("--images-per-site", type=int, default=160, help="synthetic images per site")
    parser.add_argument("--image-size", type=int, default=64, help="image side in px")
    parser.add_argument("--epochs", type=int, default=6, help="local epochs per round (sets the compute per round)")
    parser.add_argument("--rounds", type=int, default=4, help="rounds (figures are medians over rounds 2..N)")
    parser.add_argument("--configs", default="worker,no-worker", help="comma-separated: worker, no-worker")
    parser.add_argument("--run-timeout", type=float, default=1500.0, help="seconds to wait for one configuration's run")
    parser.add_argument("--keep", type=Path, default=None, help="copy the federation's folders (logs, stores) here")
    parser.add_argument("--json", type=Path, default=None, help="write the figures to this file")
    return parser.parse_args(argv)


# --- processes -----------------------------------------------------------------------------------


def _proc_table() -> dict[int, tuple[int, int, bool]]:
    """pid -> (parent pid, session id, zombie) for every process (Linux /proc)."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with suppress(OSError, ValueError, IndexError):
                stat = (entry / "stat").read_text()
                fields = stat[stat.rindex(")") + 2 :].split()
                table[int(entry.name)] = (int(fields[1]), int(fields[3]), fields[0] == "Z")
    return table


def _sessions_of(roots: list[int]) -> set[int]:
    """The sessions of ``roots`` and of all their descendants (Flower's programs start new sessions)."""
    table, tree, todo = _proc_table(), set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid in table and pid not in tree:
            tree.add(pid)
            todo.extend(p for p, (ppid, _, _) in table.items() if ppid == pid)
    return {table[p][1] for p in tree} - {os.getsid(0)}


@dataclass
class Federation:
    """The processes of one loopback federation; each started in its own session."""

    root: Path
    env: dict[str, str]
    address: str
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    sessions: set[int] = field(default_factory=set)

    def start(self, name: str, *args: str) -> None:
        with (self.root / f"{name}.log").open("ab") as log:
            self.procs[name] = subprocess.Popen(
                [FEDEYE, *args],
                env=self.env,
                cwd=self.root,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def fedeye(self, *args: str) -> str:
        done = subprocess.run(
            [FEDEYE, *args],
            env=self.env,
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=STEP_TIMEOUT_S,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"fedeye {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def note_sessions(self) -> None:
        self.sessions |= _sessions_of([p.pid for p in self.procs.values()])

    def stop_all(self) -> None:
        """SIGKILL every process of every session our processes (and theirs) started."""
        self.note_sessions()
        for _ in range(3):
            for pid, (_, sid, zombie) in _proc_table().items():
                if sid in self.sessions and not zombie:
                    with suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)
            time.sleep(0.3)
        for proc in self.procs.values():
            with suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        self.procs.clear()

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.is_file() else "(no log)"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env(root: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH", "")])),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "FLWR_HOME": str(root / "flwr-home"),
        "FEDEYE_HOME": str(root / "fedeye-home"),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        "COLUMNS": "200",
    }
    env.pop("FEDEYE_DB", None)
    return env


# --- one configuration ------------------------------------------------------------------------


def _provision(fed: Federation, site_dirs: list[Path]) -> None:
    fed.fedeye("coordinator", "init", "coord", "--host", "127.0.0.1")
    for i, data in enumerate(site_dirs, start=1):
        fed.fedeye("site", "init", f"site-{i}", "--name", f"site-{i}", "--data", str(data))
        fed.fedeye("coordinator", "register-site", f"site-{i}/node.pub", "--name", f"site-{i}", "--dir", "coord")


def _run_file(fed: Federation, args: argparse.Namespace) -> Path:
    path = fed.root / "run.toml"
    n = args.sites
    path.write_text(
        f'name = "deploy-overhead"\n[model]\narch = "vit-tiny-cpu"\nimg_size = {args.image_size}\n'
        f"[training]\nrounds = {args.rounds}\nlocal_epochs = {args.epochs}\nbatch_size = 32\n"
        f"[strategy]\nround_timeout = 600.0\nmin_train_nodes = {n}\nmin_evaluate_nodes = {n}\nmin_available_nodes = {n}\n"
        '[output]\ndir = "out"\n'
    )
    return path


def _online(fed: Federation, count: int) -> bool:
    conn = "fedeye-127-0-0-1-" + fed.address.rsplit(":", 1)[1]
    done = subprocess.run(
        [FLWR, "supernode", "ls", conn, "--format", "json"],
        env=fed.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    with suppress(json.JSONDecodeError):
        nodes = json.loads(done.stdout[done.stdout.find("{") :]).get("nodes", [])
        return sum(n.get("status") == "online" for n in nodes) >= count
    return False


def _wait(what: str, check: Any, fed: Federation, *, timeout: float = STEP_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        fed.note_sessions()
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"timed out waiting for {what}\n" + "\n".join(f"--- {n}\n{fed.log(n)}" for n in fed.procs)
            )
        time.sleep(1.0)


def run_configuration(
    name: str, *, worker: bool, site_dirs: list[Path], args: argparse.Namespace, root: Path
) -> dict[str, Any]:
    """Start the federation, run it to the end, and return its rounds and the sites' timing lines."""
    from fedeye.server.store import RunStore, resolve_db_url

    folder = root / name
    folder.mkdir()
    fed = Federation(root=folder, env=_env(folder), address=f"127.0.0.1:{_free_port()}")
    try:
        _provision(fed, site_dirs)
        started = time.monotonic()
        fed.start("coordinator", "coordinator", "start", "--dir", "coord", "--address", fed.address)
        for i in range(1, args.sites + 1):
            fed.start(
                f"site-{i}",
                "site",
                "start",
                "--dir",
                f"site-{i}",
                "--superlink",
                fed.address,
                "--ca",
                "coord/ca.crt",
                *([] if worker else ["--no-worker"]),
            )
        _wait(f"{args.sites} sites online", lambda: _online(fed, args.sites), fed)
        online = time.monotonic()
        out = fed.fedeye(
            "run", "launch", "--config", str(_run_file(fed, args)), "--superlink", fed.address, "--ca", "coord/ca.crt"
        )
        run_id = out.split("FedEye run ", 1)[1].split()[0]
        db = resolve_db_url(str(folder / "out" / "fedeye.db"), default_dir=folder / "out")

        def finished() -> bool:
            with RunStore(db) as store:
                return store.get_run(run_id).run.status != "running"

        _wait("the run to finish", finished, fed, timeout=args.run_timeout)
        ended = time.monotonic()
        with RunStore(db) as store:
            detail = store.get_run(run_id)
        if worker:
            _check_worker_code(fed, args.sites)
    finally:
        fed.stop_all()
    flower_ids = {fr.flower_run_id for fr in detail.flower_runs}
    lines = {
        i: _timings(folder / f"site-{i}" / "state" / "logs" / "messages.jsonl", flower_ids)
        for i in range(1, args.sites + 1)
    }
    rounds = {
        r.server_round: (r.started_at.timestamp(), (r.ended_at or r.started_at).timestamp()) for r in detail.rounds
    }
    print(
        f"{name}: run {run_id} {detail.run.status}, {detail.run.rounds_done} rounds; start-up to online {online - started:.0f} s, "
        f"launch to end {ended - online:.0f} s"
    )
    return {"status": detail.run.status, "rounds": rounds, "sites": lines, "folder": folder}


def _check_worker_code(fed: Federation, sites: int) -> None:
    """Say which FedEye the site workers imported (they must run this checkout's code)."""
    for i in range(1, sites + 1):
        log = (fed.root / f"site-{i}" / "state" / "logs" / "worker.log").read_text(errors="replace")
        ready = [line for line in log.splitlines() if "ready on" in line]
        print(f"  site-{i} worker: {ready[-1].split(': ', 1)[-1] if ready else 'no ready line'}")


def _timings(path: Path, flower_ids: set[int]) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["run"] in flower_ids]


# --- figures ------------------------------------------------------------------------------------


def _message(rows: list[dict[str, Any]], kind: str, server_round: int) -> dict[str, Any] | None:
    found = [
        r for r in rows if r["type"] == kind and r["round"] == server_round and r.get("split") in (None, "", "val")
    ]
    return found[0] if found else None


def warm_compute(result: dict[str, Any], rounds: range) -> dict[tuple[int, str], float]:
    """(site, message type) -> median handler seconds over ``rounds`` (worker configuration)."""
    ref: dict[tuple[int, str], float] = {}
    for site, rows in result["sites"].items():
        for kind in ("train", "evaluate"):
            values = [m["handler-s"] for r in rounds if (m := _message(rows, kind, r))]
            if values:
                ref[(site, kind)] = statistics.median(values)
    return ref


def figures(result: dict[str, Any], rounds: range, *, compute: dict[tuple[int, str], float] | None) -> dict[str, Any]:
    """Per-round rows and the medians (a), (b), (c); ``compute`` replaces handler times when given."""
    rows, overheads, from_start = [], [], []
    for r in rounds:
        if r not in result["rounds"] or r - 1 not in result["rounds"]:
            continue
        wall = result["rounds"][r][1] - result["rounds"][r - 1][1]  # last evaluation result of round r-1 -> of round r
        per_site = []
        for site, lines in result["sites"].items():
            msgs = [m for kind in ("train", "evaluate") if (m := _message(lines, kind, r))]
            if len(msgs) < 2:
                continue
            work = [compute[(site, m["type"])] if compute else m["handler-s"] for m in msgs]
            spans = [m["replied"] - m["started"] for m in msgs]
            from_start.extend(s - w for s, w in zip(spans, work))
            overheads.extend(m["replied"] - m["imported"] - w for m, w in zip(msgs, work))
            per_site.append((sum(work), sum(spans)))
        if not per_site:
            continue
        slowest = max(c for c, _ in per_site)
        busiest = max(s for _, s in per_site)
        rows.append(
            {
                "round": r,
                "wall-s": wall,
                "slowest-compute-s": slowest,
                "ratio": wall / slowest,
                "site-span-s": busiest,
                "flower-share": max(0.0, wall - busiest) / wall,
            }
        )
    return {
        "rounds": rows,
        "site-overhead-s": statistics.median(overheads) if overheads else float("nan"),
        "overhead-from-process-start-s": statistics.median(from_start) if from_start else float("nan"),
        "ratio": statistics.median(r["ratio"] for r in rows) if rows else float("nan"),
        "flower-share": statistics.median(r["flower-share"] for r in rows) if rows else float("nan"),
    }


def report(name: str, fig: dict[str, Any]) -> None:
    print_table(
        f"{name}: rounds",
        ["round", "wall s", "slowest site compute s", "wall/compute", "longest site span s", "outside sites"],
        [
            [
                r["round"],
                r["wall-s"],
                r["slowest-compute-s"],
                r["ratio"],
                r["site-span-s"],
                f"{100 * r['flower-share']:.0f}%",
            ]
            for r in fig["rounds"]
        ],
    )
    print(
        f"  (a) site overhead per message, median: {fig['site-overhead-s']:.2f} s from FedEye's ClientApp being loaded to its "
        f"reply, minus compute; {fig['overhead-from-process-start-s']:.2f} s from the start of Flower's flwr-clientapp process "
        "(Python, flwr imports, task pull, FAB unpacking: Flower's per-message cost, the same with or without the worker)"
    )
    print(f"  (b) round wall / slowest site's compute, median: {fig['ratio']:.2f}")
    print(
        f"  (c) share of the round outside the sites' message processing (Flower polling, transport, launch, server): "
        f"{100 * fig['flower-share']:.0f}%"
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from fedeye.sites.synth import synthesize_sites

    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    rounds = range(2, args.rounds + 1)
    root = Path(tempfile.mkdtemp(prefix="fe-deploy-", dir="/tmp"))  # short: Unix socket paths are limited
    results: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
    try:
        with TreeMonitor(interval=2.0, pss_every=0) as monitor:
            t0 = time.perf_counter()
            sites = synthesize_sites(
                root / "data", sites=args.sites, images_per_site=args.images_per_site, size=args.image_size, seed=7
            )
            raw = {
                c: run_configuration(c, worker=c == "worker", site_dirs=sites, args=args, root=root) for c in configs
            }
            foreign = monitor.foreign_load(t0, time.perf_counter())
        ref = warm_compute(raw["worker"], rounds) if "worker" in raw else None
        figs = {c: figures(raw[c], rounds, compute=None if c == "worker" else ref) for c in configs}
        for c in configs:
            report(c, figs[c])
        print(f"\nforeign CPU load while measuring: {foreign:.2f} cores (other programs on this machine)")
        results.update({"figures": figs, "foreign-load": foreign})
        if "worker" in figs:
            w = figs["worker"]
            print(
                f"targets (worker): site overhead {w['site-overhead-s']:.2f} s <= {OVERHEAD_TARGET_S} "
                f"{verdict(w['site-overhead-s'], OVERHEAD_TARGET_S)}; ratio {w['ratio']:.2f} <= {RATIO_TARGET} {verdict(w['ratio'], RATIO_TARGET)}"
            )
        write_json(args.json, results)
        if "worker" in figs:
            print(f"site-overhead-s {figs['worker']['site-overhead-s']:.2f}")
            print(f"ratio {figs['worker']['ratio']:.2f}")
    finally:
        if args.keep is not None:  # also after a failure: the logs say why
            shutil.copytree(root, args.keep, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*.sock"))
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
