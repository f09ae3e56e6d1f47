"""Platform overhead: federated rounds in Flower's Simulation Engine vs the same compute without Flower.

What is compared
----------------
*Federated*: ``fedeye.compose.simulation.simulate`` on freshly synthesized
sites with the ``fedeye demo`` run config (``--sites``, ``--rounds``, ... can
change it), timed by a progress sink that stamps every event with
``time.perf_counter()`` in the same process:

- start-up: ``simulate()`` called -> round 1's training messages configured
  (site validation, run row, ServerApp thread, initial model; Ray's own
  start-up runs in parallel with this and spills into round 1);
- round ``r``: round ``r``'s training configured -> round ``r + 1``'s
  configured (train, FedAvg, evaluate on ``val``, store writes, checkpoint);
  the last round ends when its last evaluation reply has been recorded;
- final test: that moment -> the last ``test`` reply recorded (round-N
  checkpoint plus the final evaluation of the global model on every site);
- teardown: -> ``simulate()`` returned (Ray and the actors shut down).

*Baseline* ("pure local compute"): the same work as plain
``train_local`` / ``evaluate_local`` calls, no Flower, no Ray, no store: for
each round every site trains from the global weights (same config, seeds and
``server_round``), the weights are averaged weighted by examples, every site
evaluates on ``val`` (batch size ``2 * batch_size`` like the ClientApp); then
every site tests the final model. A model is built once per process and
every site's data is decoded once before timing starts (reported as setup).
It runs three ways:

- ``par``: a pool of ``cpus / client_cpus`` spawned processes with
  ``client_cpus`` torch threads each, sites dealt out one at a time: the
  same parallelism as the simulation's actor pool. **This is the fair
  comparison, and the target applies to it.**
- ``seq1``: sequentially in one process with ``client_cpus`` threads (the
  same threads per client, but half the cores on 2 CPUs: the federated
  run can be faster than this).
- ``seq2``: sequentially in one process with every core as torch threads.

Ratios
------
The simulation and ``par`` run ``--repeat`` times, alternated (fed, par,
fed, par, ...), so that a machine whose speed drifts slows both alike;
``seq1`` and ``seq2`` run once, at the end. Rounds are pooled over
repetitions.

*steady* = median federated round wall / median baseline round wall, over
rounds 2..N: what the platform adds per round once Ray, the actors' imports
and the per-actor data caches are warm (the median shrugs off a round slowed
by another program on the machine). **Target: steady vs par <= 1.15.**
*best* = fastest federated round / fastest baseline round over rounds
2..N: on a busy machine the better estimate of the uncontended ratio.
*all* = federated (round 1 start -> last test reply) / baseline (setup +
all rounds + final test): includes the warm-up (actor processes importing
torch and FedEye, first data decode, part of ``ray.init``) on both sides.
Start-up and teardown are reported separately and in no ratio.

Run ``python benchmarks/overhead.py --help`` for the options; it exits 0
whether or not the target is met.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from _common import (
    NOISY_CORES,
    TimingSink,
    TreeMonitor,
    ensure_ray_stopped,
    machine,
    print_table,
    verdict,
    wait_for_quiet,
    write_json,
)
from _local import run_rounds

TARGET = 1.15


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sites", type=int, default=4, help="synthetic sites (demo: 4)")
    parser.add_argument("--images-per-site", type=int, default=200, help="images per site (demo: 200)")
    parser.add_argument("--image-size", type=int, default=64, help="image side in px (demo: 64)")
    parser.add_argument("--rounds", type=int, default=5, help="federated rounds (demo: 5)")
    parser.add_argument("--local-epochs", type=int, default=3, help="local epochs per round (demo: 3)")
    parser.add_argument(
        "--client-cpus", type=float, default=1.0, help="simulation.client_cpus = torch threads per site"
    )
    parser.add_argument("--baselines", default="par,seq1,seq2", help="comma list of par, seq1, seq2 (default: all)")
    parser.add_argument(
        "--repeat",
        type=int,
        default=2,
        help="simulation + par baseline pairs, alternated (default 2; seq1/seq2 run once)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="folder for sites and store (default: a fresh temp folder, removed after)",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="first wait up to this long until other programs leave the CPUs idle (default: do not wait)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    return parser.parse_args(argv)


def prepare(args: argparse.Namespace, workdir: Path) -> tuple[Any, list[str]]:
    """Synthesize the sites and build the demo run config for them."""
    from fedeye.cli.demo import demo_config
    from fedeye.sites.synth import synthesize_sites

    root = workdir / "sites"
    synthesize_sites(
        root,
        sites=args.sites,
        images_per_site=args.images_per_site,
        modality="fundus",
        seed=0,
        size=args.image_size,
        overwrite=True,
    )
    cfg = demo_config(workdir, site_root=root, rounds=args.rounds)
    cfg = cfg.model_copy(
        update={
            "model": cfg.model.model_copy(update={"img_size": args.image_size}),
            "training": cfg.training.model_copy(update={"local_epochs": args.local_epochs}),
            "simulation": cfg.simulation.model_copy(update={"client_cpus": args.client_cpus}),
        }
    )
    from fedeye.server.preflight import simulation_sites

    return cfg, [str(d) for d in simulation_sites(cfg)]


@dataclass
class Measured:
    """One timed replay of the run: the simulation or one baseline, by phase (wall seconds)."""

    label: str  # column name, e.g. "fed#1", "par#1", "seq1"
    kind: str  # "fed", "par", "seq1" or "seq2"
    setup: float  # fed: simulate() -> round 1 configured; baselines: processes, model, data
    rounds: list[float]
    final_test: float
    train_seconds: float  # train_local's own seconds, all sites and rounds
    window: tuple[float, float]  # perf_counter span, for the foreign CPU load
    teardown: float | None = None
    foreign: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def later(self) -> list[float]:
        """Rounds 2..N (round 1 when there is only one)."""
        return self.rounds[1:] if len(self.rounds) > 1 else self.rounds

    @property
    def all_rounds(self) -> float:
        """Round 1 to the last test reply; baselines add their setup (process start, data decode)."""
        return sum(self.rounds) + self.final_test + (0.0 if self.kind == "fed" else self.setup)


def run_federated(cfg: Any, label: str) -> Measured:
    """One simulation, timed by a :class:`TimingSink`."""
    from fedeye.compose.simulation import simulate
    from fedeye.server.federation import open_store

    print(f"{label}: simulate() ...", flush=True)
    sink = TimingSink()
    called = time.perf_counter()
    result = simulate(cfg, progress=sink)
    returned = time.perf_counter()
    n = cfg.training.rounds
    last_eval, last_test = sink.last_report("evaluate", n), sink.last_report("test")
    with open_store(cfg) as store:
        train_rows = store.site_metrics(result.run_id, phase="train")
        test_auc = {m.site: m.metrics.get("auc") for m in store.site_metrics(result.run_id, phase="test")}
    return Measured(
        label=label,
        kind="fed",
        setup=sink.round_start(1) - called,
        rounds=sink.round_walls(n),
        final_test=last_test - last_eval,
        teardown=returned - last_test,
        window=(sink.round_start(1), last_test),
        train_seconds=sum(float(m.metrics.get("train-seconds") or 0) for m in train_rows),
        extra={"simulate_seconds": returned - called, "test_auc": test_auc},
    )


def run_baseline(cfg: Any, site_dirs: list[str], kind: str, label: str) -> Measured:
    """Replay the run's compute as ``kind`` (par, seq1 or seq2)."""
    import torch

    from fedeye.models import build_model, model_state

    torch.manual_seed(cfg.training.seed)  # the same initial weights as the federated run
    initial = {k: v.numpy() for k, v in model_state(build_model(cfg.model, load_backbone=False)).items()}
    threads, cpus = max(1, int(cfg.simulation.client_cpus)), os.cpu_count() or 1
    plan = {"par": (max(1, int(cpus // cfg.simulation.client_cpus)), threads), "seq1": (0, threads), "seq2": (0, cpus)}[
        kind
    ]
    print(f"{label}: {plan[0] or 'no'} worker processes x {plan[1]} torch threads ...", flush=True)
    start = time.perf_counter()
    times = run_rounds(cfg.to_json(), site_dirs, initial, rounds=cfg.training.rounds, workers=plan[0], threads=plan[1])
    window = (start, time.perf_counter())
    torch.set_num_threads(cpus)
    return Measured(
        label=label,
        kind=kind,
        setup=times.setup,
        rounds=times.rounds,
        final_test=times.final_test,
        train_seconds=sum(times.train_seconds),
        window=window,
    )


def measure(
    cfg: Any, site_dirs: list[str], names: list[str], repeat: int, monitor: TreeMonitor
) -> tuple[list[Measured], list[str]]:
    """``repeat`` x (simulation, then par), then seq1 and seq2 once; every Ray process checked after each simulation."""
    runs: list[Measured] = []
    left: list[str] = []
    for rep in range(1, repeat + 1):
        runs.append(run_federated(cfg, f"fed#{rep}"))
        left += ensure_ray_stopped(monitor)
        if "par" in names:
            runs.append(run_baseline(cfg, site_dirs, "par", f"par#{rep}"))
    runs += [run_baseline(cfg, site_dirs, kind, kind) for kind in ("seq1", "seq2") if kind in names]
    return runs, left


def ratios(runs: list[Measured]) -> dict[str, dict[str, float]]:
    """Federated / each baseline kind; rounds pooled over repetitions."""

    def pooled(kind: str) -> list[float]:
        return [w for m in runs if m.kind == kind for w in m.later]

    def mean_all(kind: str) -> float:
        return statistics.mean(m.all_rounds for m in runs if m.kind == kind)

    fed = pooled("fed")
    return {
        kind: {
            "steady": statistics.median(fed) / statistics.median(pooled(kind)),
            "best": min(fed) / min(pooled(kind)),
            "all": mean_all("fed") / mean_all(kind),
        }
        for kind in dict.fromkeys(m.kind for m in runs if m.kind != "fed")
    }


def report(runs: list[Measured], cfg: Any) -> dict[str, Any]:
    """Print the breakdown and the ratios; return them for ``--json``."""
    rows: list[list[object]] = [["start-up / setup", *(m.setup for m in runs)]]
    rows += [[f"round {r}", *(m.rounds[r - 1] for m in runs)] for r in range(1, cfg.training.rounds + 1)]
    rows += [
        ["final test", *(m.final_test for m in runs)],
        ["teardown", *("-" if m.teardown is None else m.teardown for m in runs)],
    ]
    rows += [
        ["train_local s, all sites", *(m.train_seconds for m in runs)],
        ["foreign CPU load (cores)", *(m.foreign for m in runs)],
    ]
    print_table(
        "wall seconds (train_local s = time inside the training loop, summed over sites and rounds)",
        ["phase", *(m.label for m in runs)],
        rows,
    )
    if max(m.foreign for m in runs) > NOISY_CORES:
        print(
            f"WARNING: other programs used up to {max(m.foreign for m in runs):.2f} CPU cores during the measurements; the ratios are unreliable"
        )
    found = ratios(runs)
    print_table(
        "federated / baseline (rounds pooled over repetitions)",
        ["baseline", "steady (median round 2..N)", "best (fastest round 2..N)", "all (round 1 .. test, with setup)"],
        [[kind, r["steady"], r["best"], r["all"]] for kind, r in found.items()],
    )
    feds = [m for m in runs if m.kind == "fed"]
    print(
        "\nRay/Flower start-up "
        + ", ".join(f"{m.setup:.2f}" for m in feds)
        + " s; teardown "
        + ", ".join(f"{m.teardown or 0:.2f}" for m in feds)
        + " s; simulate() total "
        + ", ".join(f"{m.extra['simulate_seconds']:.2f}" for m in feds)
        + " s"
    )
    if "par" in found:
        value = found["par"]["steady"]
        print(f"overhead (steady, vs same parallelism): {value:.3f}   target <= {TARGET}   {verdict(value, TARGET)}")
    return {"ratios": found, "target": TARGET, "pass": found.get("par", {}).get("steady", float("inf")) <= TARGET}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = [n.strip() for n in args.baselines.split(",") if n.strip()]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="fedeye-bench-overhead-"))
    try:
        cfg, site_dirs = prepare(args, workdir)
        print(
            f"{len(site_dirs)} sites x {args.images_per_site} images at {args.image_size} px, {cfg.training.rounds} rounds x "
            f"{cfg.training.local_epochs} epochs, client_cpus={cfg.simulation.client_cpus}, {os.cpu_count()} CPUs",
            flush=True,
        )
        wait_for_quiet(args.wait_quiet)
        with TreeMonitor(interval=1.0, pss_every=0) as monitor:
            runs, left = measure(cfg, site_dirs, names, args.repeat, monitor)
        for m in runs:
            m.foreign = monitor.foreign_load(*m.window)
        summary = report(runs, cfg)
        print(f"Ray processes left after the simulations: {left or 'none'}")
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    write_json(
        args.json,
        {
            "benchmark": "overhead",
            "args": {k: str(v) for k, v in vars(args).items()},
            "machine": machine(),
            "runs": [asdict(m) for m in runs],
            **summary,
            "ray_left": left,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
